"""One video's 2D tracks as the script pipeline's 2D HDF5 layout (``track_type: 2d``).

What ``create_h5_dataset.py`` writes for 2D, and y2r's ``TrackDataset`` reads with
``track_type="2d"``: ``root/video`` (the 3D layout's), per window start ``t``
``root/tracks/frame_{t:04d}/query_coords (N, 2)`` and ``displacements (L, N, 2)`` float32 in
the crop's ``[0, 1]`` coordinates, ``root/num_frames``, ``root/num_track_ts``,
``root/track_type = "2d"`` and the optional ``root/text``. No depth, intrinsics, poses or
hands: the reader loads those for 3D only.

A pixel ``(x, y)`` of the preprocessed frames maps into the centre crop as the script's
``transform_track_coordinates_2d`` does: ``u = (x - x0) / crop``, ``v = (y - y0) / crop``.
Where the script filters each step on its own and then truncates every step to the shortest
(which pairs the positions of different points once a point leaves the crop), a point is
kept here only when it is inside the crop (``0 <= u, v <= 1``) at every step, the in-image
rule of 3D tracks, so each column stays one point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from trackset.config.settings import H5Settings
from trackset.formats import h5_schema as schema
from trackset.formats.h5_layout import _SmallDatasetWriter, resize_rgb, write_attributes, write_text
from trackset.formats.intermediates import Tracks2d
from trackset.formats.layout import atomic_path
from trackset.formats.statistics import Moments, per_video_moments_2d


@dataclass
class VideoArrays2d:
    """All arrays of one video's 2D H5 file, as written."""

    video: np.ndarray  # (T,3,S,S) uint8
    starts: np.ndarray  # (W,) window starts with a full window
    query_coords: list[np.ndarray]  # per window (N_w,2)
    displacements: list[np.ndarray]  # per window (L,N_w,2)
    num_track_ts: int = 10

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])


def crop_uv(pixels: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """Pixels ``(..., 2)`` of the frame to ``(u, v)`` of its centre crop ``box = (x0, y0, crop)``.

    Examples:
        >>> crop_uv(np.array([[64.0, 0.0], [448.0, 192.0]]), (64, 0, 384)).tolist()
        [[0.0, 0.0], [1.0, 0.5]]
    """
    x0, y0, crop = box
    return (np.asarray(pixels, dtype=np.float64) - np.array([x0, y0], dtype=np.float64)) / crop


def build_arrays_2d(frames: np.ndarray, tracks: Tracks2d, settings: H5Settings, window_length: int) -> VideoArrays2d:
    """Every array of a video's 2D H5 file from its frames and 2D tracks (module docstring)."""
    num_frames = frames.shape[0]
    video, box = resize_rgb(frames, settings.target_size)
    chosen: dict[int, np.ndarray] = {}
    for (start, end), points in zip(tracks.windows, tracks.tracks, strict=True):
        if end - start >= window_length and start + window_length <= num_frames:
            chosen.setdefault(start, points[:window_length])
    starts = np.array(sorted(chosen), dtype=np.int64)
    query_coords, displacements = [], []
    for start in starts:
        uv = crop_uv(chosen[int(start)], box)  # (L,N,2)
        inside = ((uv >= 0) & (uv <= 1)).all(axis=(0, 2))  # in the crop at every step
        uv32 = uv[:, inside].astype(np.float32)
        query_coords.append(uv32[0])
        displacements.append(uv32 - uv32[:1])
    return VideoArrays2d(video, starts, query_coords, displacements, window_length)


def video_moments_2d(arrays: VideoArrays2d) -> dict[str, Moments]:
    """Per-video moments of the values written (:func:`~trackset.formats.statistics.per_video_moments_2d`)."""
    return per_video_moments_2d(arrays.displacements)


def write_h5_2d(
    path: Path,
    arrays: VideoArrays2d,
    compression: str = "none",
    text: str | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> None:
    """Write the 2D layout atomically and byte-reproducibly, in the script's dataset order
    (the root's ``attributes`` as the 3D layout writes them)."""
    big = {} if compression == "none" else {"compression": compression}
    plain = {"track_times": False}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        size = arrays.video.shape[-1]
        video_chunks = {"chunks": (1, 3, size, size)} if big else {}
        f.create_dataset(schema.root_path(schema.VIDEO), data=arrays.video, **plain, **big, **video_chunks)
        group = f.create_group(schema.root_path(schema.TRACKS))
        small = _SmallDatasetWriter()
        for w, start in enumerate(arrays.starts):
            frame = group.create_group(schema.window_group(start))
            small.write(frame, schema.QUERY_COORDS, arrays.query_coords[w])
            small.write(frame, schema.DISPLACEMENTS, arrays.displacements[w])
        f.create_dataset(schema.root_path(schema.NUM_FRAMES), data=arrays.num_frames, **plain)
        f.create_dataset(schema.root_path(schema.NUM_TRACK_TS), data=arrays.num_track_ts, **plain)
        f.create_dataset(schema.root_path(schema.TRACK_TYPE), data=schema.TRACK_TYPE_2D, **plain)
        write_text(f, text)
        write_attributes(f, attributes or {})
