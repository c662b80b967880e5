"""The script pipeline's conventions, converted to trackset's (FORMATS.md).

What the scripts' files mean differs from trackset's in three places; the H5 build
converts inputs the readers mark as the scripts' (:data:`~trackset.formats.intermediates.Conventions`)
with :func:`to_trackset_conventions`, so an import (:mod:`trackset.dataset.importer`) and a
build from videos give the same H5 files:

- **camera motion** is recomputed from the ``vipe`` extrinsics as E_s E_{s+k}^-1; the
  scripts' ``window_poses`` (E_s^-1 E_{s+k}, a known defect) are never used as poses;
- **3D points** are moved from the world frame TAPIP3D was given into camera 0
  (:func:`script_tracks_in_camera0`);
- **left-hand rotations** are unmirrored (:func:`script_hands_unmirrored`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from trackset.errors import BadInputError
from trackset.formats.intermediates import HandPoses, Tracks3d
from trackset.geometry.camera import invert_rigid, mirror_x

WINDOW_POSES_ATOL = 1e-3
"""Largest difference allowed between the scripts' stored ``window_poses`` and E_s^-1 E_{s+k}
recomputed from the depth file: float32 rounding of metre-scale poses is ~1e-6, poses of
another ViPE run differ by far more."""


def script_tracks_in_camera0(tracks: Tracks3d, extrinsics: np.ndarray, video_id: str, path: Path) -> Tracks3d:
    """The script pipeline's 3D points moved into each window's camera 0.

    ``process_tapip3d.py`` gives TAPIP3D ``X_k = E_s^-1 E_{s+k}`` (its ``relativize_poses``,
    stored as ``window_poses``) as the world->camera extrinsics of step k, and TAPIP3D
    reports points in the world frame its extrinsics define: a stored point is
    ``q_k = X_k^-1 c_k``, with ``c_k`` the point in camera s+k. In camera 0 it is
    ``E_s E_{s+k}^-1 c_k = E_s E_{s+k}^-1 X_k q_k``; a static point then stays put. Step 0 is
    unchanged (``X_0`` is the identity).

    Args:
        tracks: read from a script file (``conventions == "script"``).
        extrinsics: ``(T, 4, 4)`` world->camera of the depth stage.
        video_id, path: name the video and the tracks file in errors.

    Raises:
        BadInputError: when a window's ``window_poses`` are not E_s^-1 E_{s+k} of these
            extrinsics (tracks computed with another depth run), naming the video and file.

    Examples:
        >>> E = np.stack([np.eye(4)] * 2); E[1, :3, 3] = [-0.5, 0.0, 0.0]  # camera 1 moved +0.5 m in x
        >>> X = np.linalg.inv(E[0]) @ E  # what the scripts gave TAPIP3D
        >>> c = np.array([[0.0, 0.0, 2.0], [-0.5, 0.0, 2.0]])  # a static point in cameras 0 and 1
        >>> q = np.stack([(np.linalg.inv(x) @ np.r_[p, 1.0])[:3] for x, p in zip(X, c)])[:, None]
        >>> script = Tracks3d([(0, 2)], [q], np.eye(3), 2, 2, 1, conventions="script", tracker_extrinsics=[X])
        >>> script_tracks_in_camera0(script, E, "00000", Path("tracks_3d/00000.pt")).tracks[0][:, 0].tolist()
        [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]
    """
    moved = []
    for index, ((start, end), points, given) in enumerate(
        zip(tracks.windows, tracks.tracks, tracks.tracker_extrinsics, strict=True)
    ):
        cameras = np.asarray(extrinsics[start:end], dtype=np.float64)
        off = float(np.abs(given - invert_rigid(cameras[0]) @ cameras).max(initial=0.0))
        if not off <= WINDOW_POSES_ATOL:
            reason = (
                f"window_poses[{index}] (window {start}-{end}) differs from E_s^-1 E_(s+k) of the depth "
                f"file's extrinsics by {off:.3g}: tracks computed with another depth run?"
            )
            raise BadInputError(video_id, "tracks_3d", path, reason)
        to_camera0 = cameras[0] @ invert_rigid(cameras) @ given  # (L, 4, 4)
        moved.append(np.einsum("kij,knj->kni", to_camera0[:, :3, :3], points) + to_camera0[:, None, :3, 3])
    return replace(tracks, tracks=moved, conventions="trackset", tracker_extrinsics=[])


def script_hands_unmirrored(hands: HandPoses) -> HandPoses:
    """The script pipeline's hands with left-hand rotations in the image's orientation.

    WiLoR predicts a left hand as a right hand in a mirrored crop; ``process_wilor.py``
    mirrors the joints' x back but stores ``global_orient`` and ``hand_pose`` as predicted,
    so a left wrist turns the wrong way. ``M R M`` (:func:`~trackset.geometry.camera.mirror_x`) is
    what trackset's own WiLoR adapter applies. Right hands, positions and validity are
    unchanged; ``joints_3d`` is left as stored (the H5 does not use it).

    Examples:
        >>> from trackset.formats.intermediates import Hand
        >>> turned = np.eye(4)[None].copy(); turned[0, :3, :3] = [[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]
        >>> hand = Hand(np.ones(1, bool), turned, np.zeros((1, 15, 3, 3)), np.zeros((1, 21, 3)), np.zeros(10))
        >>> fixed = script_hands_unmirrored(HandPoses(hand, hand, np.eye(3), 1, conventions="script"))
        >>> fixed.left.wrist_pose[0, 0, :2].tolist(), fixed.right.wrist_pose[0, 0, :2].tolist(), fixed.conventions
        ([0.0, 1.0], [0.0, -1.0], 'trackset')
    """
    left = hands.left
    wrist = np.array(left.wrist_pose, copy=True)
    wrist[:, :3, :3] = mirror_x(wrist[:, :3, :3])
    unmirrored = replace(left, wrist_pose=wrist, hand_pose=mirror_x(left.hand_pose).astype(left.hand_pose.dtype))
    return replace(hands, left=unmirrored, conventions="trackset")


def to_trackset_conventions(
    video_id: str, tracks: Tracks3d, hands: HandPoses | None, extrinsics: np.ndarray, tracks_path: Path
) -> tuple[Tracks3d, HandPoses | None]:
    """Tracks and hands in trackset's conventions, whichever pipeline wrote each file."""
    if tracks.conventions == "script":
        tracks = script_tracks_in_camera0(tracks, extrinsics, video_id, tracks_path)
    if hands is not None and hands.conventions == "script":
        hands = script_hands_unmirrored(hands)
    return tracks, hands
