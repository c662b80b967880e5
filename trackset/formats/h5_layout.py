"""Turn one video's intermediates into the per-video HDF5 layout of FORMATS.md.

Everything is vectorised over windows, steps and points; the only Python loop is over the
``frame_{t:04d}`` groups when writing, because HDF5 groups are created one at a time.
The statistics' per-video moments are computed from the very float32 values written, so
the merged statistics describe the dataset exactly.

Files are byte-reproducible: no timestamps (``track_times=False``), a fixed creation
order, and no run metadata inside (DECISIONS.md "Determinism"). What made a file (trackset's
version, the stages' models and settings) goes into attributes of its root
(:func:`write_attributes`), which the training code never reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np

from trackset.config.settings import H5Settings
from trackset.errors import BadInputError
from trackset.formats import h5_schema as schema
from trackset.formats.intermediates import DepthCamera, HandPoses, Tracks3d
from trackset.formats.layout import atomic_path
from trackset.formats.statistics import Moments, per_video_moments
from trackset.geometry import camera as geometry


@dataclass
class HandWindows:
    """One hand's arrays for the windows that keep it (``valid``), one row per kept window.

    A window keeps a hand that is valid at every step and, under ``h5.hands_in_image``, whose
    wrist is in the image at every step; ``out_of_image`` counts the windows where only the
    second condition failed.
    """

    valid: np.ndarray  # (W,) bool
    query_uvd: np.ndarray  # (V,3), V = valid.sum()
    uvd_displacements: np.ndarray  # (V,L,3)
    query_rot_6d: np.ndarray  # (V,6)
    rot_displacements: np.ndarray  # (V,L,6)
    out_of_image: int = 0

    def datasets(self) -> dict[str, np.ndarray]:
        """The per-window arrays by their :data:`~trackset.formats.h5_schema.HAND_SHAPES` suffix, in
        the order they are written."""
        return {
            schema.HAND_QUERY_UVD: self.query_uvd,
            schema.HAND_UVD_DISPLACEMENTS: self.uvd_displacements,
            schema.HAND_QUERY_ROT_6D: self.query_rot_6d,
            schema.HAND_ROT_DISPLACEMENTS: self.rot_displacements,
        }


@dataclass
class VideoArrays:
    """All arrays of one video's H5 file, in float32/uint8 as written."""

    video: np.ndarray  # (T,3,S,S) uint8
    depth: np.ndarray  # (T,S,S) float32
    depth_moments: Moments  # of the valid pixels of ``depth``, computed with it (resize_depth)
    intrinsics: np.ndarray  # (3,3) float32
    starts: np.ndarray  # (W,) window starts with a full window
    query_coords: list[np.ndarray]  # per window (N_w,3)
    displacements: list[np.ndarray]  # per window (L,N_w,3)
    poses: np.ndarray  # (W,L,9)
    hands: dict[str, HandWindows] = field(default_factory=dict)
    num_track_ts: int = 10

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def hand_windows_out_of_image(self) -> int:
        """Windows (of both hands) dropped because a valid wrist left the image."""
        return sum(hand.out_of_image for hand in self.hands.values())


def resize_rgb(frames: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Centre square crop and Lanczos resize of ``(T,H,W,3)`` frames to ``(T,3,S,S)``.

    cv2's INTER_LANCZOS4 is what the script pipeline used, so pixels stay comparable. Each
    frame is transposed into its slot of the output as it is resized: a transposed copy of
    the whole video afterwards would cost another pass over tens of MB.
    """
    t, h, w, _ = frames.shape
    x0, y0, crop = geometry.center_crop_box(h, w)
    out = np.empty((t, 3, size, size), dtype=np.uint8)
    for i in range(t):  # one C call per frame; cv2 resizes at most 4 channels per call
        resized = cv2.resize(
            np.ascontiguousarray(frames[i, y0 : y0 + crop, x0 : x0 + crop]),
            (size, size),
            interpolation=cv2.INTER_LANCZOS4,
        )
        out[i] = resized.transpose(2, 0, 1)
    return out, (x0, y0, crop)


def _clip_valid(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float32 depth clipped to ``[lo, hi]``; non-finite or non-positive becomes 0 (invalid)."""
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, np.clip(depth, lo, hi), np.float32(0)).astype(np.float32)


def resize_depth(
    depths: np.ndarray, box: tuple[int, int, int], size: int, lo: float, hi: float
) -> tuple[np.ndarray, Moments]:
    """Crop, nearest-resize and clip depth, and the moments of its valid (non-zero) pixels.

    Nearest sampling takes source index ``floor(i * crop / S)`` like cv2's INTER_NEAREST.
    float16 depth (what the depth stage stores) goes through a 65,536-entry table indexed by
    bit pattern: one lookup replaces the cast, the clip and the validity test, and a
    histogram of the patterns gives the moments exactly without a float64 copy of the
    pixels. Other dtypes take the direct route, with the same values.

    Examples:
        >>> d = np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 4
        >>> image, moments = resize_depth(d, (0, 0, 4), 2, 0.1, 2.5)
        >>> image[0].tolist(), moments.count, moments.mean.tolist()
        ([[0.0, 0.5], [2.0, 2.5]], 3, [1.6666666666666667])
        >>> image16, moments16 = resize_depth(d.astype(np.float16), (0, 0, 4), 2, 0.1, 2.5)
        >>> bool((image16 == image).all()), moments16 == moments
        (True, True)
    """
    x0, y0, crop = box
    idx = (np.arange(size) * crop) // size
    # Rows, then columns, in the stored dtype: the result is C-contiguous, which h5py writes
    # several times faster than the transposed strides of a 2-D fancy index.
    sampled = np.take(np.take(depths, y0 + idx, axis=1), x0 + idx, axis=2)
    if sampled.dtype == np.float16:
        bits = sampled.view(np.uint16)
        table = _clip_valid(np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32), lo, hi)
        counts = np.zeros(2**16, dtype=np.int64)
        np.add.at(counts, bits.ravel(), 1)  # bincount would first cast every pixel to int64
        counts[table == 0] = 0  # invalid pixels are not samples
        return table[bits], Moments.of_counts(table, counts)
    image = _clip_valid(sampled.astype(np.float32), lo, hi)
    moments = Moments.empty(1)
    for start in range(0, image.shape[0], schema.DEPTH_CHUNK_FRAMES):
        chunk = image[start : start + schema.DEPTH_CHUNK_FRAMES]
        moments = Moments.merge(moments, Moments.of(chunk[chunk > 0]))
    return image, moments


def _project(points: np.ndarray, k: np.ndarray, size: int) -> np.ndarray:
    """Project ``(W,L,N,3)`` camera-0 points with per-window ``(W,3,3)`` K to ``(u,v,d)``."""
    z = points[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x_px = (k[:, None, None, 0, 0] * points[..., 0] + k[:, None, None, 0, 1] * points[..., 1]) / z + k[
            :, None, None, 0, 2
        ]
        y_px = k[:, None, None, 1, 1] * points[..., 1] / z + k[:, None, None, 1, 2]
    return np.stack([x_px / size, y_px / size, z], axis=-1)


def _full_windows(tracks: Tracks3d, num_frames: int, length: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Windows that start a full window of ``length`` steps, sorted by start."""
    chosen: dict[int, np.ndarray] = {}
    for (start, end), points in zip(tracks.windows, tracks.tracks, strict=True):
        if end - start >= length and start + length <= num_frames:
            chosen.setdefault(start, points[:length])
    starts = np.array(sorted(chosen), dtype=np.int64)
    return starts, [chosen[int(s)] for s in starts]


def _stack_padded(windows: list[np.ndarray], length: int) -> np.ndarray:
    """``(W,L,Nmax,3)`` float64 with NaN padding where windows have fewer points."""
    n_max = max((w.shape[1] for w in windows), default=0)
    out = np.full((len(windows), length, n_max, 3), np.nan)
    for i, points in enumerate(windows):  # per-window copy into the padded block
        out[i, :, : points.shape[1]] = points
    return out


def _hand_windows(
    hand_valid: np.ndarray,
    wrist: np.ndarray,
    rel_poses: np.ndarray,
    frames: np.ndarray,
    k: np.ndarray,
    size: int,
    in_image_only: bool,
) -> HandWindows:
    """Wrist of one hand in each window's camera 0 (W0 = E_s E_{s+k}^-1 W_{s+k}), as uvd and 6D.

    Validity comes from the hands stage, on the full frame; the H5 shows a centre crop, so
    with ``in_image_only`` a window also needs the wrist in the crop at every step (the
    in-image rule of point tracks).
    """
    detected = hand_valid[frames].all(axis=1) if frames.size else np.zeros(0, dtype=bool)
    w0 = geometry.matmul(rel_poses[detected], wrist[frames[detected]])
    uvd = _project(w0[:, :, None, :3, 3], k[detected], size)[:, :, 0]
    inside = geometry.in_image(uvd).all(axis=1) if in_image_only else np.ones(len(uvd), dtype=bool)
    valid = detected.copy()
    valid[detected] = inside
    uvd, rot = uvd[inside], w0[inside, :, :3, :3]
    rel = geometry.matmul(rot, np.swapaxes(rot[:, :1], -1, -2))
    return HandWindows(
        valid=valid,
        query_uvd=uvd[:, 0].astype(np.float32),
        uvd_displacements=(uvd - uvd[:, :1]).astype(np.float32),
        query_rot_6d=geometry.rotation_to_6d(rot[:, 0]).astype(np.float32),
        rot_displacements=geometry.rotation_to_6d(rel).astype(np.float32),
        out_of_image=int((~inside).sum()),
    )


def build_arrays(
    video_id: str,
    frames: np.ndarray,
    depth: DepthCamera,
    tracks: Tracks3d,
    hands: HandPoses | None,
    settings: H5Settings,
    window_length: int,
) -> VideoArrays:
    """Compute every array of a video's H5 file from its intermediates (FORMATS.md)."""
    num_frames = frames.shape[0]
    if depth.num_frames != num_frames or depth.depths.shape[1:] != frames.shape[1:3]:
        raise BadInputError(
            video_id,
            "h5_build",
            None,
            f"depth is {depth.depths.shape} but frames are {frames.shape[:3]} (T,H,W): intermediates disagree",
        )
    size = settings.target_size
    video, box = resize_rgb(frames, size)
    depth_img, depth_moments = resize_depth(depth.depths, box, size, settings.depth_min_m, settings.depth_max_m)
    root_k = geometry.crop_resize_intrinsics(depth.intrinsics[0], *box, size)

    starts, window_points = _full_windows(tracks, num_frames, window_length)
    k = geometry.crop_resize_intrinsics(depth.intrinsics[starts], *box, size)  # window camera-0 K
    rel_poses = geometry.window_relative_poses(depth.extrinsics, starts, window_length)
    frames_idx = geometry.window_frame_indices(starts, window_length)

    points = _stack_padded(window_points, window_length)
    uvd = _project(points, k, size)
    keep = np.asarray(geometry.in_image(uvd).all(axis=1))  # (W,N): in image at every step (NaN padding fails)
    uvd32 = uvd.astype(np.float32)
    query = uvd32[:, 0].copy()
    query[..., 2] = np.clip(query[..., 2], settings.depth_min_m, settings.depth_max_m)
    disp = uvd32 - uvd32[:, :1]
    query_coords = [query[w][keep[w]] for w in range(len(starts))]
    displacements = [disp[w][:, keep[w]] for w in range(len(starts))]

    hand_windows: dict[str, HandWindows] = {}
    if hands is not None:
        for side in schema.HAND_SIDES:
            hand = hands.side(side)
            hand_windows[side] = _hand_windows(
                hand.valid, hand.wrist_pose, rel_poses, frames_idx, k, size, settings.hands_in_image
            )

    return VideoArrays(
        video=video,
        depth=depth_img,
        depth_moments=depth_moments,
        intrinsics=root_k.astype(np.float32),
        starts=starts,
        query_coords=query_coords,
        displacements=displacements,
        poses=geometry.pose_to_9d(rel_poses).astype(np.float32),
        hands=hand_windows,
        num_track_ts=window_length,
    )


def video_moments(arrays: VideoArrays) -> dict[str, Moments]:
    """Per-video moments of every statistic, from the values as written.

    The rule is :func:`trackset.formats.statistics.per_video_moments`, which ``validate --deep``
    applies to the values it reads back; both pass the hands in ``HAND_SIDES`` order (the
    order :func:`build_arrays` makes them in), so both sum the same rows in the same order.
    """
    return per_video_moments(
        arrays.depth_moments,
        arrays.query_coords,
        arrays.displacements,
        arrays.poses,
        [hand.uvd_displacements for hand in arrays.hands.values()],
        [hand.rot_displacements for hand in arrays.hands.values()],
    )


class _SmallDatasetWriter:
    """Creates the ~1,000 small float32 datasets of a video's window groups.

    ``Group.create_dataset`` rebuilds property lists and re-checks its arguments on every
    call, which is half of the time spent on the windows. These datasets all share one
    dtype and the same creation properties, so they are made once and reused with h5py's
    low-level API. Each is what ``create_dataset(..., track_times=False)`` makes: contiguous,
    little-endian float32, no timestamps.
    """

    def __init__(self) -> None:
        self._type = h5py.h5t.py_create(np.dtype("<f4"))
        self._dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        self._dcpl.set_obj_track_times(False)
        self._lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
        self._lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)  # as h5py names links

    def write(self, group: h5py.Group, name: str, data: np.ndarray) -> None:
        array = np.ascontiguousarray(data, dtype="<f4")
        space = h5py.h5s.create_simple(array.shape)
        dataset = h5py.h5d.create(group.id, name.encode(), self._type, space, dcpl=self._dcpl, lcpl=self._lcpl)
        dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, array)
        dataset.close()


def write_text(f: h5py.File, text: str | None) -> None:
    """``root/text``, the clip's description, as a scalar variable-length UTF-8 string (the
    script's ``h5py.special_dtype(vlen=str)``); nothing when there is none."""
    if text:
        f.create_dataset(schema.root_path(schema.TEXT), data=text, dtype=h5py.string_dtype(), track_times=False)


def write_attributes(f: h5py.File, attributes: Mapping[str, str | int]) -> None:
    """Attributes of the file's root (``/``), in sorted order so the bytes are reproducible:
    the provenance of :func:`trackset.stages.provenance.file_attributes`. Strings are stored
    as variable-length UTF-8, as h5py stores ``str``."""
    for key in sorted(attributes):
        f.attrs[key] = attributes[key]


def write_h5(
    path: Path,
    arrays: VideoArrays,
    compression: str = "none",
    text: str | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> None:
    """Write the FORMATS.md layout atomically and byte-reproducibly (``root/text`` and the
    root's ``attributes`` when given)."""
    big = {} if compression == "none" else {"compression": compression}
    plain = {"track_times": False}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        size = arrays.video.shape[-1]
        video_chunks = {"chunks": (1, 3, size, size)} if big else {}
        depth_chunks = {"chunks": (1, size, size)} if big else {}
        f.create_dataset(schema.root_path(schema.VIDEO), data=arrays.video, **plain, **big, **video_chunks)
        f.create_dataset(schema.root_path(schema.DEPTH), data=arrays.depth, **plain, **big, **depth_chunks)
        f.create_dataset(schema.root_path(schema.INTRINSICS), data=arrays.intrinsics, **plain)
        group = f.create_group(schema.root_path(schema.TRACKS))
        small = _SmallDatasetWriter()
        # Row of each window in a hand's arrays, which hold only the windows where it is valid.
        hand_rows = {side: np.cumsum(hand.valid) - 1 for side, hand in arrays.hands.items()}
        for w, start in enumerate(arrays.starts):
            frame = group.create_group(schema.window_group(start))
            small.write(frame, schema.QUERY_COORDS, arrays.query_coords[w])
            small.write(frame, schema.DISPLACEMENTS, arrays.displacements[w])
            small.write(frame, schema.POSES, arrays.poses[w])
            for side, hand in arrays.hands.items():
                if hand.valid[w]:
                    index = int(hand_rows[side][w])
                    for suffix, values in hand.datasets().items():
                        small.write(frame, schema.hand_key(side, suffix), values[index])
        f.create_dataset(schema.root_path(schema.NUM_FRAMES), data=arrays.num_frames, **plain)
        f.create_dataset(schema.root_path(schema.NUM_TRACK_TS), data=arrays.num_track_ts, **plain)
        f.create_dataset(schema.root_path(schema.TRACK_TYPE), data=schema.TRACK_TYPE_3D, **plain)
        write_text(f, text)
        write_attributes(f, attributes or {})
