"""A synthetic video's intermediates rewritten exactly as the script pipeline stores them.

The import path (``trackset import-intermediates``) reads what hgupt3/y2r's scripts leave
behind, so testing and benchmarking it needs such files with known content. A trackset
build of a synthetic corpus provides the content; this module rewrites one video of its
work directory the way the scripts would have written it, from the scene's ground truth:

- ``frames/<vid>/<n:05d>.png`` (``preprocess.py``: ``cv2.imwrite`` of BGR frames);
- ``vipe/<vid>.npz`` with ``np.savez_compressed`` (``process_vipe.py``), same arrays;
- ``tracks_3d/<vid>.pt``: ``window_poses`` = X_k = E_s^-1 E_{s+k} computed in float32 from
  the depth file, as ``relativize_poses`` does, and 3D points as an ideal tracker reports
  them when given X_k as its world->camera extrinsics (``process_tapip3d.py``):
  q_k = X_k^-1 c_k, with c_k the true point in camera s+k; numpy ``intrinsics``;
- ``hand_poses/<vid>.pt``: numpy arrays, left-hand rotations as WiLoR reports them
  (``process_wilor.py`` stores them mirrored, M R M with M = diag(-1, 1, 1)).

Pure: no Prefect. Used by ``tests/flows/test_import_intermediates.py`` and
``bench/vs_script.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from trackset.formats.intermediates import load_pt
from trackset.formats.layout import WorkLayout
from trackset.synthetic.corpus import load_scene_for
from trackset.synthetic.scene import SceneSpec

MIRROR = np.diag([-1.0, 1.0, 1.0])
"""x mirror: WiLoR's left-hand rotations are ``MIRROR @ R @ MIRROR`` of the true ones."""

SCRIPT_FOLDERS = ("frames", "vipe", "tracks_3d", "hand_poses")
"""The folders of a script pipeline's data directory that an import reads."""


def scene_and_times(video: Path, work: Path, video_id: str) -> tuple[SceneSpec, np.ndarray]:
    """The scene of a synthetic ``video`` and the source times of the frames preprocessing kept."""
    meta = json.loads(WorkLayout(work).frames_meta(video_id).read_text())
    return load_scene_for(video), np.asarray(meta["timestamps_s"])


def script_tracks(work: Path, video_id: str, scene: SceneSpec, times: np.ndarray) -> dict[str, Any]:
    """``tracks_3d/<vid>.pt`` as process_tapip3d.py writes it, from an ideal tracker.

    The windows and points are those of trackset's own tracks file in ``work`` (true points
    in each window's camera 0); only their frame and the stored poses change.
    """
    layout = WorkLayout(work)
    native = torch.load(layout.tracks_3d(video_id), weights_only=True)
    with np.load(layout.vipe(video_id)) as vipe:
        stored = vipe["extrinsics"]  # float32, what the scripts load
    truth = scene.extrinsics(times)
    tracks, window_poses = [], []
    for (s, e), points in zip(native["windows"], native["tracks"], strict=True):
        x = np.stack([np.linalg.inv(stored[s]) @ stored[k] for k in range(s, e)])  # float32, relativize_poses
        camera0 = points[0].double().numpy()  # the true points of steps s..e-1 in camera s
        ideal = []
        for k, step in enumerate(camera0):
            seen = (truth[s + k] @ np.linalg.inv(truth[s]))[:3]  # camera s -> camera s+k
            c_k = step @ seen[:, :3].T + seen[:, 3]
            world = np.linalg.inv(x[k].astype(np.float64))  # TAPIP3D's world of step k
            ideal.append(c_k @ world[:3, :3].T + world[:3, 3])
        tracks.append(torch.from_numpy(np.stack(ideal).astype(np.float32))[None])
        window_poses.append(x)
    return {
        "tracks": tracks,
        "windows": native["windows"],
        "window_poses": window_poses,
        "global_frame0_pose": np.stack([np.linalg.inv(stored[0]) @ stored[s] for s, _ in native["windows"]]),
        "intrinsics": native["intrinsics"].numpy(),
        "video_name": video_id,
        "window_length": native["window_length"],
        "stride": native["stride"],
        "grid_size": 64,
        "num_frames": native["num_frames"],
        "resolution": native["resolution"],
    }


def script_hands(video_id: str, scene: SceneSpec, times: np.ndarray, intrinsics: np.ndarray) -> dict[str, Any]:
    """``hand_poses/<vid>.pt`` as process_wilor.py writes it: numpy, left rotations mirrored."""
    num_frames = len(times)
    extrinsics = scene.extrinsics(times)
    result: dict[str, Any] = {"video_name": video_id, "num_frames": num_frames, "intrinsics": intrinsics}
    for side in ("left", "right"):
        valid = scene.hand_valid(side, times)
        wrist = extrinsics @ scene.wrist_poses_world(side, times)  # in the camera of each frame
        if side == "left":
            wrist[:, :3, :3] = MIRROR @ wrist[:, :3, :3] @ MIRROR  # WiLoR's global_orient of a left hand
        wrist[~valid] = np.nan
        result[f"{side}_valid"] = valid
        result[f"{side}_wrist_pose"] = wrist.astype(np.float32)
        fingers = np.zeros((num_frames, 15, 3, 3), np.float32)
        fingers[~valid] = np.nan
        result[f"{side}_hand_pose"] = fingers
        result[f"{side}_joints_3d"] = np.full((num_frames, 21, 3), np.nan, np.float32)
        result[f"{side}_betas"] = np.zeros(10, np.float32)
    return result


def write_script_format(video: Path, work: Path, video_id: str, out: Path) -> None:
    """Rewrite one video of a synthetic build's ``work`` directory as the scripts store it.

    Args:
        video: the synthetic source video (its scene sidecar beside it).
        work: the work directory of a trackset build of it.
        video_id: the video's id in ``work``; the files in ``out`` get the same id.
        out: the script pipeline's data directory (``frames/``, ``vipe/``, ...), created.
    """
    source, target = WorkLayout(work), WorkLayout(out)
    scene, times = scene_and_times(video, work, video_id)
    frames = np.load(source.frames_npy(video_id))
    target.frames_dir(video_id).mkdir(parents=True)
    for number, frame in enumerate(frames):
        cv2.imwrite(str(target.frames_dir(video_id) / f"{number:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    for folder in SCRIPT_FOLDERS[1:]:
        (out / folder).mkdir(parents=True, exist_ok=True)
    with np.load(source.vipe(video_id)) as vipe:
        np.savez_compressed(target.vipe(video_id), **{key: vipe[key] for key in vipe.files})
    tracks = script_tracks(work, video_id, scene, times)
    torch.save(tracks, target.tracks_3d(video_id))
    torch.save(script_hands(video_id, scene, times, tracks["intrinsics"]), target.hand_poses(video_id))


def copy_video(source: Path, video_id: str, target: Path, new_id: str) -> None:
    """Copy a video of one script data directory into another (or the same), as ``new_id``.

    Files are copied byte for byte except ``video_name`` in the ``.pt`` files, which the
    scripts (and trackset's readers) set to the id: a corpus of many videos then costs one
    synthetic build per distinct scene, not per video.
    """
    old, new = WorkLayout(source), WorkLayout(target)
    shutil.copytree(old.frames_dir(video_id), new.frames_dir(new_id))
    for folder in SCRIPT_FOLDERS[1:]:
        (target / folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(old.vipe(video_id), new.vipe(new_id))
    for stage, path in (("tracks_3d", WorkLayout.tracks_3d), ("hands", WorkLayout.hand_poses)):
        data = load_pt(path(old, video_id), video_id, stage)  # numpy inside: the safe loader's allow-list
        torch.save({**data, "video_name": new_id}, path(new, new_id))
