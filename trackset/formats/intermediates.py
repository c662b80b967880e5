"""Reading and writing the intermediate files of FORMATS.md, validated and loaded safely.

Every reader checks keys, shapes, dtypes and frame counts and raises
:class:`~trackset.errors.BadInputError` naming the video, the stage, the file and the
reason, so a bad file fails only its own video. ``.pt`` files are loaded with
``weights_only=True``; the numpy arrays inside the script pipeline's files are admitted
through an explicit allow-list, never with ``weights_only=False``.

The ``.pt`` readers also say which pipeline wrote a file (:data:`Conventions`), because
the script pipeline's files hold the same keys with other meanings: its 3D points are in
the world frame of the poses it gave TAPIP3D, and its left-hand rotations are WiLoR's
mirrored ones. FORMATS.md tells the two apart: trackset writes torch tensors, the scripts
numpy arrays, so a file whose ``intrinsics`` is a numpy array is the scripts'.
:mod:`trackset.dataset.importer` converts such inputs to trackset's conventions.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trackset.errors import BadInputError
from trackset.formats.h5_schema import HAND_SIDES
from trackset.formats.layout import WorkLayout, atomic_path, write_text_atomic
from trackset.formats.npy import open_npy, read_npz

#: Who wrote a ``.pt`` intermediate, and so what its arrays mean (module docstring).
Conventions = Literal["trackset", "script"]


@dataclass(frozen=True)
class FramesMeta:
    """What preprocessing decoded: kept frames, their source times and sizes."""

    video_id: str
    num_frames: int
    fps: float
    width: int
    height: int
    source: str = ""
    source_width: int = 0
    source_height: int = 0
    timestamps_s: list[float] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FramesMeta:
        return cls(**json.loads(text))


@dataclass
class DepthCamera:
    """Depth and camera of a video: ``depths (T,H,W)`` metres, ``intrinsics (T,3,3)``,
    ``extrinsics (T,4,4)`` world->camera."""

    depths: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.depths.shape[0])


@dataclass
class Tracks3d:
    """Sliding-window 3D tracks: ``tracks[w]`` is ``(T_win, N_w, 3)`` in window camera 0.

    With ``conventions == "script"`` the points are instead in the world frame of
    ``tracker_extrinsics[w]`` (``(T_win, 4, 4)``, the world->camera poses the script
    pipeline gave TAPIP3D, its ``window_poses``); :mod:`trackset.dataset.importer` converts them.
    """

    windows: list[tuple[int, int]]
    tracks: list[np.ndarray]
    intrinsics: np.ndarray
    num_frames: int
    window_length: int
    stride: int
    grid_size: int = 0
    resolution: tuple[int, int] = (0, 0)
    conventions: Conventions = "trackset"
    tracker_extrinsics: list[np.ndarray] = field(default_factory=list)


@dataclass
class Hand:
    """One hand over a video, in the camera of each frame; NaN where invalid."""

    valid: np.ndarray  # (T,) bool
    wrist_pose: np.ndarray  # (T,4,4)
    hand_pose: np.ndarray  # (T,15,3,3)
    joints_3d: np.ndarray  # (T,21,3)
    betas: np.ndarray  # (10,)


@dataclass
class HandPoses:
    """Both hands of a video; with ``conventions == "script"`` the left hand's rotations are
    WiLoR's mirrored ones (:func:`trackset.geometry.camera.mirror_x` undoes them)."""

    left: Hand
    right: Hand
    intrinsics: np.ndarray
    num_frames: int
    conventions: Conventions = "trackset"

    def side(self, name: str) -> Hand:
        return self.left if name == "left" else self.right


def _numpy_safe_globals() -> list[Any]:
    """The numpy reconstructors a ``.pt`` holding numpy arrays needs, and nothing else.

    numpy 2 pickles name ``numpy._core``; files written under numpy 1.x name ``numpy.core``.
    Both spellings are admitted for the same two functions.
    """
    from numpy._core.multiarray import _reconstruct, scalar

    dtypes = [type(np.dtype(t)) for t in ("b1", "u1", "i4", "i8", "f2", "f4", "f8")]
    return [
        _reconstruct,
        scalar,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        np.dtype,
        *dtypes,
    ]


@functools.cache
def _allow_numpy_in_pt() -> None:
    """Admit :func:`_numpy_safe_globals` to torch's weights-only loads, once per process.

    Not ``torch.serialization.safe_globals(...)`` around each load: that context manager
    swaps torch's process-wide allow-list on entry and exit, so under the thread runner one
    thread's exit removed the numpy globals while another was loading ("Unsupported global:
    numpy._core.multiarray._reconstruct" on a good file).
    """
    torch.serialization.add_safe_globals(_numpy_safe_globals())


def load_pt(path: Path, video_id: str, stage: str) -> dict[str, Any]:
    """Load a ``.pt`` dict safely; numpy arrays only through the allow-list."""
    if not path.is_file():
        raise BadInputError(video_id, stage, path, "file is missing")
    _allow_numpy_in_pt()
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BadInputError(video_id, stage, path, f"refused to unpickle: {_unpickler_reason(exc)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise BadInputError(video_id, stage, path, f"unreadable: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise BadInputError(video_id, stage, path, f"expected a dict, found {type(data).__name__}")
    return data


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's weights-only error that names the refused global."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed")[0].strip()
    return type(exc).__name__


def conventions_of(data: dict[str, Any]) -> Conventions:
    """Which pipeline wrote a loaded ``.pt`` dict: the scripts store numpy, trackset tensors.

    Both write an ``intrinsics`` entry in both ``.pt`` files, so that entry decides.

    Examples:
        >>> conventions_of({"intrinsics": np.eye(3)}), conventions_of({"intrinsics": torch.eye(3)})
        ('script', 'trackset')
    """
    return "script" if isinstance(data.get("intrinsics"), np.ndarray) else "trackset"


def as_array(value: Any) -> np.ndarray:
    """Tensor or array-like to a numpy array (no copy for numpy input)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class _Checker:
    """Shape/dtype checks that raise BadInputError naming the file and key."""

    def __init__(self, video_id: str, stage: str, path: Path, data: Any) -> None:
        self.video_id, self.stage, self.path, self.data = video_id, stage, path, data

    def fail(self, reason: str) -> BadInputError:
        return BadInputError(self.video_id, self.stage, self.path, reason)

    def get(self, key: str) -> Any:
        try:
            return self.data[key]
        except KeyError:
            raise self.fail(f"missing key '{key}'") from None

    def array(self, key: str, shape: tuple[int | None, ...], kinds: str, value: Any = None) -> np.ndarray:
        arr = as_array(self.get(key) if value is None else value)
        mismatch = arr.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(arr.shape, shape, strict=True)
        )
        if mismatch:
            want = "(" + ",".join("?" if s is None else str(s) for s in shape) + ")"
            raise self.fail(f"'{key}' has shape {tuple(arr.shape)}, expected {want}")
        if arr.dtype.kind not in kinds:
            raise self.fail(f"'{key}' has dtype {arr.dtype}, expected kind {kinds!r}")
        return arr


def write_frames(work: WorkLayout, meta: FramesMeta, frames: np.ndarray) -> None:
    """Write ``frames.npy`` (T,H,W,3 uint8) then ``meta.json`` (meta last: it marks completeness)."""
    with atomic_path(work.frames_npy(meta.video_id)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(frames, dtype=np.uint8))
    write_text_atomic(work.frames_meta(meta.video_id), meta.to_json())


def read_frames(work: WorkLayout, video_id: str) -> tuple[np.ndarray, FramesMeta]:
    """Frames of a video as ``(T,H,W,3)`` uint8, from ``frames.npy`` or the PNG files."""
    folder = work.frames_dir(video_id)
    npy = work.frames_npy(video_id)
    if npy.is_file():
        try:
            frames = open_npy(npy)
        except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty file
            raise BadInputError(video_id, "preprocess", npy, f"unreadable: {exc or type(exc).__name__}") from None
        meta_path = work.frames_meta(video_id)
        if meta_path.is_file():
            meta = FramesMeta.from_json(meta_path.read_text())
        else:
            meta = FramesMeta(video_id, frames.shape[0], 0.0, frames.shape[2], frames.shape[1])
    else:
        frames = _read_png_frames(folder, video_id)
        meta = FramesMeta(video_id, frames.shape[0], 0.0, frames.shape[2], frames.shape[1])
    check = _Checker(video_id, "preprocess", npy if npy.is_file() else folder, {"frames": frames})
    check.array("frames", (None, None, None, 3), "u")
    if frames.shape[0] != meta.num_frames:
        raise check.fail(f"{frames.shape[0]} frames but meta.json says {meta.num_frames}")
    return frames, meta


PNG_DECODE_THREADS_MAX = 8
"""Most threads decoding one video's PNG frames: past the cores they only add switches."""


def png_decode_threads() -> int:
    """Threads that decode a video's PNGs: the cores this process may run on, at most
    :data:`PNG_DECODE_THREADS_MAX`."""
    return max(1, min(PNG_DECODE_THREADS_MAX, len(os.sched_getaffinity(0))))


def _read_png_frames(folder: Path, video_id: str) -> np.ndarray:
    """The script pipeline's ``frames/<vid>/<n:05d>.png`` as one RGB array, each file decoded once.

    PNG decoding is most of an import's time per video (~4 ms per 512x384 frame, as long as
    the resize). ``cv2.imread`` and ``cv2.cvtColor`` release the GIL, so the frames are
    decoded in a thread pool, each converted straight into its slot of the output: no list
    of frames and no stacked copy. The first frame fixes the shape every other must have.
    """
    import cv2

    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        raise BadInputError(video_id, "preprocess", folder, "no frames (neither frames.npy nor PNG files)")

    def decode(file: Path) -> np.ndarray:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise BadInputError(video_id, "preprocess", file, "unreadable PNG")
        return image

    first = decode(files[0])
    frames = np.empty((len(files), *first.shape), dtype=np.uint8)

    def convert(index: int, image: np.ndarray) -> None:
        if image.shape != first.shape:
            reason = f"frames differ in size: {files[index].name} is {image.shape}, {files[0].name} {first.shape}"
            raise BadInputError(video_id, "preprocess", folder, reason)
        cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=frames[index])

    def decode_into(index: int) -> None:
        convert(index, decode(files[index]))

    convert(0, first)
    with ThreadPoolExecutor(png_decode_threads(), thread_name_prefix=f"png-{video_id}") as pool:
        for _ in pool.map(decode_into, range(1, len(files))):
            pass  # re-raises the first frame's error, in frame order
    return frames


def write_depth_camera(path: Path, result: DepthCamera) -> None:
    """``vipe/<vid>.npz``: depths float16, intrinsics and extrinsics float32 (FORMATS.md)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            depths=result.depths.astype(np.float16),
            intrinsics=result.intrinsics.astype(np.float32),
            extrinsics=result.extrinsics.astype(np.float32),
        )


def read_depth_camera(
    path: Path, video_id: str, num_frames: int | None = None, depth_dtype: type[np.floating] | None = np.float32
) -> DepthCamera:
    """Read and validate ``vipe/<vid>.npz``; depth in metres as ``depth_dtype``.

    ``depth_dtype=None`` keeps the stored float16: the H5 stage samples a third of the
    pixels first and converts only those, instead of the whole video.
    """
    stage = "depth_camera"
    if not path.is_file():
        raise BadInputError(video_id, stage, path, "file is missing")
    try:
        arrays = read_npz(path)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(video_id, stage, path, f"unreadable: {exc}".splitlines()[0]) from None
    check = _Checker(video_id, stage, path, arrays)
    depths = check.array("depths", (num_frames, None, None), "f")
    t = depths.shape[0]
    intrinsics = check.array("intrinsics", (t, 3, 3), "f")
    extrinsics = check.array("extrinsics", (t, 4, 4), "f")
    for key, arr in (("intrinsics", intrinsics), ("extrinsics", extrinsics)):
        if not np.isfinite(arr).all():
            raise check.fail(f"'{key}' has non-finite values")
    depths = depths if depth_dtype is None else depths.astype(depth_dtype)
    return DepthCamera(depths, intrinsics.astype(np.float64), extrinsics.astype(np.float64))


def _track_payload(video_name: str, tracks: Tracks3d | Tracks2d) -> dict[str, Any]:
    """What the 3D and 2D track files share (the script's keys, ``tracks`` as ``(1, T, N, D)``
    torch tensors, one per window)."""
    return {
        "tracks": [torch.from_numpy(np.asarray(t, dtype=np.float32)[None]) for t in tracks.tracks],
        "windows": [(int(s), int(e)) for s, e in tracks.windows],
        "video_name": video_name,
        "window_length": int(tracks.window_length),
        "stride": int(tracks.stride),
        "grid_size": int(tracks.grid_size),
        "num_frames": int(tracks.num_frames),
        "resolution": tuple(int(x) for x in tracks.resolution),
    }


def write_tracks_3d(path: Path, video_name: str, tracks: Tracks3d, window_poses: list[np.ndarray]) -> None:
    """``tracks_3d/<vid>.pt`` with torch tensors and plain containers (FORMATS.md)."""
    payload = {
        **_track_payload(video_name, tracks),
        "window_poses": [torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in window_poses],
        "intrinsics": torch.from_numpy(np.asarray(tracks.intrinsics, dtype=np.float32)),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class _TrackWindows:
    """What :func:`_read_track_windows` checked of a 3D or 2D track file."""

    windows: list[tuple[int, int]]
    tracks: list[np.ndarray]  # per window (T_win, N, dim), as stored
    window_length: int
    stride: int
    grid_size: int
    resolution: tuple[int, int]


def _read_track_windows(check: _Checker, video_id: str, num_frames: int, dim: int) -> _TrackWindows:
    """The windows of a loaded 3D (``dim`` 3) or 2D (``dim`` 2) track file, checked alike.

    The file must be this video's (``video_name``, ``num_frames``), each window inside the
    video and its tracks ``(1, T_win, N, dim)`` floats, all finite: a NaN would pass the
    in-image test of neither layout and silently drop its point, so it fails the file instead.
    """
    data = check.data
    raw_tracks, raw_windows = check.get("tracks"), check.get("windows")
    if not isinstance(raw_tracks, (list, tuple)) or not isinstance(raw_windows, (list, tuple)):
        raise check.fail("'tracks' and 'windows' must be lists")
    if len(raw_tracks) != len(raw_windows):
        raise check.fail(f"{len(raw_tracks)} track windows but {len(raw_windows)} window ranges")
    stored_frames = int(data.get("num_frames", num_frames))
    if stored_frames != num_frames:
        raise check.fail(f"num_frames is {stored_frames} but the video has {num_frames} frames (from another video?)")
    # Both trackset and the script pipeline name the file's video by its id (the script's
    # ``npz_path.stem``): a file of another video of the same length is caught here.
    name = data.get("video_name", video_id)
    if not isinstance(name, str) or name != video_id:
        raise check.fail(f"video_name is {name!r}, not {video_id!r} (a file from another video?)")
    windows: list[tuple[int, int]] = []
    tracks: list[np.ndarray] = []
    for index, (window, raw) in enumerate(zip(raw_windows, raw_tracks, strict=True)):
        start, end = (int(x) for x in window)
        if not 0 <= start < end <= num_frames:
            raise check.fail(f"window {index} = ({start}, {end}) outside the video's {num_frames} frames")
        arr = check.array(f"tracks[{index}]", (1, end - start, None, dim), "f", value=raw)
        if not np.isfinite(arr).all():
            raise check.fail(f"'tracks[{index}]' has non-finite values")
        windows.append((start, end))
        tracks.append(arr[0])
    resolution = [int(x) for x in data.get("resolution", (0, 0))]
    if len(resolution) != 2:
        raise check.fail(f"'resolution' is {resolution}, expected (height, width)")
    return _TrackWindows(
        windows=windows,
        tracks=tracks,
        window_length=int(data.get("window_length", windows[0][1] - windows[0][0] if windows else 0)),
        stride=int(data.get("stride", 1)),
        grid_size=int(data.get("grid_size", 0)),
        resolution=(resolution[0], resolution[1]),
    )


def read_tracks_3d(path: Path, video_id: str, num_frames: int) -> Tracks3d:
    """Read and validate ``tracks_3d/<vid>.pt`` written by trackset or the script pipeline.

    Stored ``window_poses`` are deliberately not returned: camera motion is always recomputed
    from the depth stage's extrinsics with the FORMATS.md convention.
    """
    stage = "tracks_3d"
    data = load_pt(path, video_id, stage)
    check = _Checker(video_id, stage, path, data)
    read = _read_track_windows(check, video_id, num_frames, 3)
    intrinsics = check.array("intrinsics", (3, 3), "f")
    conventions = conventions_of(data)
    return Tracks3d(
        windows=read.windows,
        tracks=read.tracks,
        intrinsics=intrinsics.astype(np.float64),
        num_frames=num_frames,
        window_length=read.window_length,
        stride=read.stride,
        grid_size=read.grid_size,
        resolution=read.resolution,
        conventions=conventions,
        tracker_extrinsics=_tracker_extrinsics(check, read.windows) if conventions == "script" else [],
    )


def _tracker_extrinsics(check: _Checker, windows: list[tuple[int, int]]) -> list[np.ndarray]:
    """The script pipeline's ``window_poses``: what it gave TAPIP3D as extrinsics, per window.

    They define the frame its points are in, so they must be there, one finite
    ``(T_win, 4, 4)`` per window.
    """
    raw = check.get("window_poses")
    if not isinstance(raw, (list, tuple)) or len(raw) != len(windows):
        count = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
        raise check.fail(f"'window_poses' must be a list of {len(windows)} windows, found {count}")
    poses = []
    for index, ((start, end), value) in enumerate(zip(windows, raw, strict=True)):
        pose = check.array(f"window_poses[{index}]", (end - start, 4, 4), "f", value=value).astype(np.float64)
        if not np.isfinite(pose).all():
            raise check.fail(f"'window_poses[{index}]' has non-finite values")
        poses.append(pose)
    return poses


def write_hand_poses(path: Path, hands: HandPoses) -> None:
    """``hand_poses/<vid>.pt``: per-hand arrays as torch tensors, NaN where invalid."""
    payload: dict[str, Any] = {
        "intrinsics": torch.from_numpy(np.asarray(hands.intrinsics, dtype=np.float32)),
        "num_frames": int(hands.num_frames),
    }
    for side in HAND_SIDES:
        hand = hands.side(side)
        payload[f"{side}_valid"] = torch.from_numpy(np.asarray(hand.valid, dtype=bool))
        payload[f"{side}_wrist_pose"] = torch.from_numpy(np.asarray(hand.wrist_pose, dtype=np.float32))
        payload[f"{side}_hand_pose"] = torch.from_numpy(np.asarray(hand.hand_pose, dtype=np.float32))
        payload[f"{side}_joints_3d"] = torch.from_numpy(np.asarray(hand.joints_3d, dtype=np.float32))
        payload[f"{side}_betas"] = torch.from_numpy(np.asarray(hand.betas, dtype=np.float32))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_hand_poses(path: Path, video_id: str, num_frames: int) -> HandPoses:
    """Read and validate ``hand_poses/<vid>.pt`` (trackset tensors or script-pipeline numpy)."""
    stage = "hands"
    data = load_pt(path, video_id, stage)
    check = _Checker(video_id, stage, path, data)
    stored_frames = int(data.get("num_frames", num_frames))
    if stored_frames != num_frames:
        raise check.fail(f"num_frames is {stored_frames} but the video has {num_frames} frames (from another video?)")
    # The script pipeline names the file's video (its frames folder, i.e. the id); trackset does not.
    name = data.get("video_name", video_id)
    if not isinstance(name, str) or name != video_id:
        raise check.fail(f"video_name is {name!r}, not {video_id!r} (a file from another video?)")
    sides = {}
    for side in HAND_SIDES:
        valid = check.array(f"{side}_valid", (num_frames,), "b")
        wrist = check.array(f"{side}_wrist_pose", (num_frames, 4, 4), "f")
        if not np.isfinite(wrist[valid]).all():
            raise check.fail(f"'{side}_wrist_pose' is non-finite on frames marked valid")
        sides[side] = Hand(
            valid=valid.astype(bool),
            wrist_pose=wrist.astype(np.float64),
            hand_pose=check.array(f"{side}_hand_pose", (num_frames, 15, 3, 3), "f"),
            joints_3d=check.array(f"{side}_joints_3d", (num_frames, 21, 3), "f"),
            betas=check.array(f"{side}_betas", (10,), "f"),
        )
    intrinsics = check.array("intrinsics", (3, 3), "f")
    return HandPoses(sides["left"], sides["right"], intrinsics.astype(np.float64), num_frames, conventions_of(data))


@dataclass
class VideoMasks:
    """Per-frame masks of what a prompt names: ``masks (T,H,W)`` bool, the union over objects.

    ``masks`` is ``None`` when the clip had no prompt (no noun in ``metadata.csv`` and no
    ``object_masks.text_prompt``): like the script pipeline, whose TAPIP3D then samples its
    queries from the whole frame, such a clip is tracked without masks.
    """

    masks: np.ndarray | None
    prompt: str
    key_frame: int = 0

    @property
    def prompted(self) -> bool:
        return self.masks is not None


def write_masks(path: Path, result: VideoMasks, height: int, width: int) -> None:
    """``object_masks/<vid>.npz`` or ``human_masks/<vid>.npz``: ``masks`` (T,H,W) bool
    (compressed: a mask is mostly one value), ``prompt``, ``key_frame``."""
    masks = np.zeros((0, height, width), bool) if result.masks is None else np.asarray(result.masks, dtype=bool)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, masks=masks, prompt=np.array(result.prompt), key_frame=np.int64(result.key_frame))


def read_masks(path: Path, video_id: str, stage: str, num_frames: int, height: int, width: int) -> VideoMasks:
    """Read and validate a masks file of ``stage`` written for a ``(num_frames, height, width)`` video."""
    if not path.is_file():
        raise BadInputError(video_id, stage, path, "file is missing")
    try:
        arrays = read_npz(path)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInputError(video_id, stage, path, f"unreadable: {exc}".splitlines()[0]) from None
    check = _Checker(video_id, stage, path, arrays)
    prompt = str(check.array("prompt", (), "U"))
    masks = check.array("masks", (None, height, width), "b")
    if prompt and masks.shape[0] != num_frames:
        raise check.fail(f"'masks' has {masks.shape[0]} frames but the video has {num_frames}")
    key_frame = int(check.array("key_frame", (), "i"))
    return VideoMasks(masks if prompt else None, prompt, key_frame)


def write_clean_frames(work: WorkLayout, video_id: str, frames: np.ndarray) -> None:
    """``clean_frames/<vid>/frames.npy`` (T,H,W,3 uint8), the preprocessed frames' layout."""
    with atomic_path(work.clean_frames_npy(video_id)) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(frames, dtype=np.uint8))


def read_clean_frames(work: WorkLayout, video_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """The inpainted frames of a video whose preprocessed frames have ``shape``."""
    path = work.clean_frames_npy(video_id)
    if not path.is_file():
        raise BadInputError(video_id, "clean_frames", path, "file is missing")
    try:
        frames = open_npy(path)
    except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty file
        raise BadInputError(video_id, "clean_frames", path, f"unreadable: {exc or type(exc).__name__}") from None
    check = _Checker(video_id, "clean_frames", path, {"frames": frames})
    check.array("frames", tuple(shape), "u")
    return np.asarray(frames)


def read_stage_frames(work: WorkLayout, video_id: str, clean: bool) -> tuple[np.ndarray, FramesMeta]:
    """The frames a stage sees: the inpainted ones when ``clean`` (human removal), else the
    preprocessed ones; the preprocessed frames' meta either way."""
    frames, meta = read_frames(work, video_id)
    return (read_clean_frames(work, video_id, frames.shape), meta) if clean else (frames, meta)


@dataclass
class Tracks2d:
    """Sliding-window 2D tracks: ``tracks[w]`` is ``(T_win, N_w, 2)`` pixel ``(x, y)`` of the
    preprocessed frames at every step of window ``w`` (CoTracker's output, the script's
    ``tracks/<vid>.pt``)."""

    windows: list[tuple[int, int]]
    tracks: list[np.ndarray]
    num_frames: int
    window_length: int
    stride: int
    grid_size: int = 0
    resolution: tuple[int, int] = (0, 0)


def write_tracks_2d(path: Path, video_name: str, tracks: Tracks2d) -> None:
    """``tracks_2d/<vid>.pt`` with the script's keys (``tracks`` as ``(1, T, N, 2)``), torch tensors."""
    with atomic_path(path) as tmp:
        torch.save(_track_payload(video_name, tracks), tmp)


def read_tracks_2d(path: Path, video_id: str, num_frames: int) -> Tracks2d:
    """Read and validate ``tracks_2d/<vid>.pt``."""
    stage = "tracks_2d"
    check = _Checker(video_id, stage, path, load_pt(path, video_id, stage))
    read = _read_track_windows(check, video_id, num_frames, 2)
    return Tracks2d(
        windows=read.windows,
        tracks=[points.astype(np.float64) for points in read.tracks],
        num_frames=num_frames,
        window_length=read.window_length,
        stride=read.stride,
        grid_size=read.grid_size,
        resolution=read.resolution,
    )
