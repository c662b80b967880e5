"""A checked stage's output: read back against FORMATS.md, then compared with the clip's truth.

The FORMATS.md readers of :mod:`trackset.formats.intermediates` are the format check: they
validate keys, shapes, dtypes, frame counts and finiteness exactly as the next stage will
when it reads the file. A few conventions of FORMATS.md that no reader needs to enforce,
because the pipeline trusts its own writers, are checked here as well (:func:`contract_checks`):
rigid world->camera poses, a pinhole camera centred in the image, windows as configured,
points in front of the camera.

The truth is the output of the same stage run with its synthetic backend, which evaluates
the clip's scene analytically (:mod:`trackset.synthetic`): true depth and cameras, true
tracks of the same query points, true masks of the boxes and hands, the scene rendered
without its hands. :func:`agreement` says in one phrase how far the model is from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from trackset.config.settings import Settings
from trackset.formats.intermediates import (
    HAND_SIDES,
    DepthCamera,
    HandPoses,
    Tracks2d,
    Tracks3d,
    VideoMasks,
    read_clean_frames,
    read_depth_camera,
    read_frames,
    read_hand_poses,
    read_masks,
    read_tracks_2d,
    read_tracks_3d,
)
from trackset.formats.layout import WorkLayout
from trackset.geometry.camera import window_starts
from trackset.geometry.query_points import dilate

RIGID_ATOL = 1e-3
"""How far from orthonormal (and from a ``0 0 0 1`` last row) a float32 pose may be."""

Shape = tuple[int, int, int]
"""``(frames, height, width)`` of the clip."""


@dataclass(frozen=True)
class Finding:
    """One check of a model's output: what was checked, whether it held, and if not, why."""

    name: str
    passed: bool
    detail: str = ""


READERS: dict[str, Callable[[WorkLayout, str, Shape], Any]] = {
    "depth_camera": lambda work, vid, shape: read_depth_camera(work.vipe(vid), vid, shape[0]),
    "tracks_3d": lambda work, vid, shape: read_tracks_3d(work.tracks_3d(vid), vid, shape[0]),
    "hands": lambda work, vid, shape: read_hand_poses(work.hand_poses(vid), vid, shape[0]),
    "object_masks": lambda work, vid, shape: read_masks(work.object_masks(vid), vid, "object_masks", *shape),
    "human_masks": lambda work, vid, shape: read_masks(work.human_masks(vid), vid, "human_masks", *shape),
    "clean_frames": lambda work, vid, shape: read_clean_frames(work, vid, (*shape, 3)),
    "tracks_2d": lambda work, vid, shape: read_tracks_2d(work.tracks_2d(vid), vid, shape[0]),
}
"""The FORMATS.md reader of each GPU stage's output, as the stages downstream call it."""


def read_output(stage: str, work: WorkLayout, video_id: str, shape: Shape) -> Any:
    """``stage``'s output of ``video_id`` in ``work``, read and validated by its FORMATS.md reader.

    Raises:
        BadInputError: the file breaks the format (naming the file and the reason).
    """
    return READERS[stage](work, video_id, shape)


def rigid_problem(poses: np.ndarray, atol: float = RIGID_ATOL) -> str | None:
    """Why ``(T, 4, 4)`` poses are not rigid transforms (first offending frame), else None.

    Examples:
        >>> poses = np.stack([np.eye(4), np.diag([2.0, 1.0, 1.0, 1.0])])
        >>> rigid_problem(poses)
        'frame 1: rotation is not orthonormal'
        >>> rigid_problem(np.eye(4)[None]) is None
        True
    """
    for index, pose in enumerate(np.asarray(poses, dtype=np.float64)):
        rotation = pose[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=atol) or np.linalg.det(rotation) <= 0:
            return f"frame {index}: rotation is not orthonormal"
        if not np.allclose(pose[3], (0.0, 0.0, 0.0, 1.0), atol=atol):
            return f"frame {index}: last row is {pose[3].tolist()}, not [0, 0, 0, 1]"
    return None


def _finding(name: str, problem: str | None) -> Finding:
    return Finding(name, problem is None, problem or "")


def _pinhole_problem(intrinsics: np.ndarray, height: int, width: int) -> str | None:
    """Why ``(T, 3, 3)`` intrinsics are not a pinhole with its centre inside the image."""
    for index, k in enumerate(np.asarray(intrinsics, dtype=np.float64)):
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            return f"frame {index}: focal lengths {k[0, 0]:.4g}, {k[1, 1]:.4g} are not positive"
        if not (0 <= k[0, 2] <= width and 0 <= k[1, 2] <= height):
            return f"frame {index}: principal point ({k[0, 2]:.4g}, {k[1, 2]:.4g}) outside the {width}x{height} image"
        if not np.allclose(k[2], (0.0, 0.0, 1.0)) or k[1, 0] != 0:
            return f"frame {index}: not a pinhole matrix: {k.tolist()}"
    return None


def _windows_problem(windows: list[tuple[int, int]], num_frames: int, length: int, stride: int) -> str | None:
    """Why ``windows`` are not the sliding windows the settings ask for."""
    expected = [(int(start), int(start) + length) for start in window_starts(num_frames, length, stride)]
    if list(windows) != expected:
        return f"windows {list(windows)[:3]}... are not the {len(expected)} of length {length}, stride {stride}"
    return None


def contract_checks(stage: str, output: Any, settings: Settings, shape: Shape) -> list[Finding]:
    """The FORMATS.md conventions of ``stage``'s output that its reader does not enforce."""
    num_frames, height, width = shape
    if stage == "depth_camera":
        return [
            _finding("rigid extrinsics", rigid_problem(output.extrinsics)),
            _finding("pinhole intrinsics", _pinhole_problem(output.intrinsics, height, width)),
        ]
    if stage in ("tracks_3d", "tracks_2d"):
        section = settings.tracks_3d if stage == "tracks_3d" else settings.tracks_2d
        findings = [
            _finding(
                "windows as configured",
                _windows_problem(output.windows, num_frames, section.window_length, section.stride),
            )
        ]
        if stage == "tracks_3d":
            behind = sum(int((points[0, :, 2] <= 0).sum()) for points in output.tracks)
            findings.append(_finding("in front at step 0", f"{behind} points with d <= 0" if behind else None))
        return findings
    if stage == "hands":
        return [
            _finding(f"rigid {side} wrist", rigid_problem(output.side(side).wrist_pose[output.side(side).valid]))
            for side in HAND_SIDES
        ]
    if stage in ("object_masks", "human_masks"):
        return [_finding("prompted", None if output.prompted else "no masks: the clip's prompt was not used")]
    return []


def agreement(stage: str, real: Any, truth: Any, truth_work: WorkLayout, video_id: str, settings: Settings) -> str:
    """How far ``real`` (the model's output) is from ``truth`` (the scene's), in one phrase."""
    if stage == "depth_camera":
        return depth_agreement(real, truth)
    if stage == "tracks_3d":
        return tracks_agreement(real, truth, scale=100.0, unit="cm")
    if stage == "tracks_2d":
        return tracks_agreement(real, truth, scale=1.0, unit="px")
    if stage == "hands":
        return hands_agreement(real, truth)
    if stage in ("object_masks", "human_masks"):
        return masks_agreement(real, truth)
    frames, _ = read_frames(truth_work, video_id)
    people = read_masks(truth_work.human_masks(video_id), video_id, "human_masks", *frames.shape[:3]).masks
    return clean_frames_agreement(real, truth, people, settings.clean_frames.mask_dilation_iter)


def rotation_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of ``a[i] · b[i]ᵀ`` for ``(N, 3, 3)`` rotations.

    Examples:
        >>> quarter = np.array([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> rotation_angles_deg(quarter, np.eye(3)[None]).round(6).tolist()
        [90.0]
    """
    relative = np.einsum("nij,nkj->nik", a, b)
    cosine = (np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0
    return np.asarray(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def depth_agreement(real: DepthCamera, truth: DepthCamera) -> str:
    """Median relative depth error over pixels both call valid, and the median error of the
    camera's rotation relative to frame 0 (the world frames of the two need not agree)."""
    valid = np.isfinite(real.depths) & (real.depths > 0) & np.isfinite(truth.depths) & (truth.depths > 0)
    if not valid.any():
        return "no pixel with valid depth in both"
    relative = np.abs(real.depths[valid] - truth.depths[valid]) / truth.depths[valid]
    phrase = f"depth {np.median(relative):.1%} off"
    if real.num_frames > 1:

        def motion(extrinsics: np.ndarray) -> np.ndarray:
            rotations = np.asarray(extrinsics, dtype=np.float64)[:, :3, :3]
            return np.einsum("tij,kj->tik", rotations[1:], rotations[0])  # R_t R_0ᵀ

        angles = rotation_angles_deg(motion(real.extrinsics), motion(truth.extrinsics))
        phrase += f", camera rotation {np.median(angles):.2f}° off"
    return phrase + " (medians)"


def tracks_agreement(real: Tracks3d | Tracks2d, truth: Tracks3d | Tracks2d, scale: float, unit: str) -> str:
    """Median distance between each kept track and the true track of the same query.

    Both were given the same query points per window; a model keeps only those it saw
    throughout, without saying which, so each of its tracks is paired with the true track
    that starts nearest to it.
    """
    if list(real.windows) != list(truth.windows):
        return "windows differ from the truth's"
    errors, kept, total = [], 0, 0
    for points, true_points in zip(real.tracks, truth.tracks, strict=True):
        kept, total = kept + points.shape[1], total + true_points.shape[1]
        if points.shape[1] and true_points.shape[1]:
            _, nearest = cKDTree(true_points[0]).query(points[0])
            errors.append(np.linalg.norm(points - true_points[:, nearest], axis=-1).mean(axis=0))
    if not errors:
        return f"no tracks kept (of {total})"
    error = float(np.median(np.concatenate(errors))) * scale
    return f"tracks {error:.2f} {unit} off (median), {kept} of {total} kept"


def hands_agreement(real: HandPoses, truth: HandPoses) -> str:
    """Median wrist position error on frames where both see a hand, and how many true
    hand-frames the model found (and how many it found where the truth has none)."""
    errors, found, present, extra = [], 0, 0, 0
    for side in HAND_SIDES:
        mine, true = real.side(side), truth.side(side)
        both = mine.valid & true.valid
        found += int(both.sum())
        present += int(true.valid.sum())
        extra += int((mine.valid & ~true.valid).sum())
        errors.append(np.linalg.norm(mine.wrist_pose[both, :3, 3] - true.wrist_pose[both, :3, 3], axis=-1))
    distances = np.concatenate(errors)
    phrase = f"found {found} of {present} hand-frames, {extra} extra"
    if distances.size:
        phrase = f"wrist {100.0 * float(np.median(distances)):.1f} cm off (median); " + phrase
    return phrase


def masks_agreement(real: VideoMasks, truth: VideoMasks) -> str:
    """Mean intersection over union with the true masks, over frames where either has one."""
    if real.masks is None or truth.masks is None:
        return "not prompted"
    inter = (real.masks & truth.masks).sum(axis=(1, 2))
    union = (real.masks | truth.masks).sum(axis=(1, 2))
    shown = union > 0
    if not shown.any():
        return "nothing in either"
    return f"IoU {float((inter[shown] / union[shown]).mean()):.2f} (mean over {int(shown.sum())} frames)"


def clean_frames_agreement(real: np.ndarray, truth: np.ndarray, people: np.ndarray | None, dilation: int) -> str:
    """Mean absolute difference (0-255) from the scene rendered without its hands, inside the
    person masks and away from them (beyond the inpainting's dilation): a model that
    re-encodes the whole frame shows it in the second number."""
    difference = np.abs(real.astype(np.int16) - truth.astype(np.int16)).mean(axis=-1)
    if people is None:
        return f"{difference.mean():.1f} off (mean abs, 0-255)"
    near = np.stack([dilate(mask, dilation + 1) for mask in people])
    inside = f"{difference[people].mean():.1f}" if people.any() else "-"
    outside = f"{difference[~near].mean():.1f}" if (~near).any() else "-"
    return f"person region {inside} off, elsewhere {outside} off (mean abs, 0-255)"
