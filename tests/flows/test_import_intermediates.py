"""Building the dataset from the script pipeline's intermediates, in its exact format and meaning.

A normal trackset build of a synthetic corpus (a camera turning about every axis, hands
rotating about every axis) is the reference. Its intermediates are then rewritten as the
scripts produce them, from the scene's ground truth:

- PNG frames, numpy arrays inside the ``.pt`` files, the scripts' keys;
- ``window_poses`` = X_k = E_s^-1 E_{s+k} computed in float32 from the depth file, as
  ``relativize_poses`` does, and 3D points as an ideal tracker reports them when given X_k
  as its world->camera extrinsics (``process_tapip3d.py``): q_k = X_k^-1 c_k, with c_k the
  true point in camera s+k;
- left-hand rotations as WiLoR reports them (``process_wilor.py`` stores them mirrored,
  M R M with M = diag(-1, 1, 1)).

Importing them must give the reference's H5 files within float32 rounding: same windows,
points, poses and hands. Expectations use numpy on the scene's parameters only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
import yaml

from flows.build_dataset import build_dataset
from flows.cli import main as cli_main
from tests.flows.helpers import paths_under
from trackset.synthetic.corpus import encode_scene, load_scene_for, video_seed
from trackset.synthetic.scene import SceneSpec

# Seed 4 at 14 frames: video 00000 has both hands in the crop for full windows.
NUM_VIDEOS, NUM_FRAMES, SEED = 2, 14, 4
MIRROR = np.diag([-1.0, 1.0, 1.0])
ATOL = 2e-6  # float32 rounding of metre-scale points and unit rotations, a few ulps


def run_overrides(root: Path) -> dict:
    return {"paths": paths_under(root), "cluster": {"runner": "threads"}}


def scene_times(root: Path, index: int) -> tuple[SceneSpec, np.ndarray]:
    """The scene of video ``index`` and the source times of its kept frames."""
    meta = json.loads((root / "work" / "frames" / f"{index:05d}" / "meta.json").read_text())
    return load_scene_for(root / "videos" / f"clip_{index:03d}.mp4"), np.asarray(meta["timestamps_s"])


def script_tracks(work: Path, video_id: str, scene: SceneSpec, times: np.ndarray) -> dict:
    """``tracks_3d/<vid>.pt`` as process_tapip3d.py writes it, from an ideal tracker."""
    native = torch.load(work / "tracks_3d" / f"{video_id}.pt", weights_only=True)
    with np.load(work / "vipe" / f"{video_id}.npz") as vipe:
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


def script_hands(video_id: str, scene: SceneSpec, times: np.ndarray, intrinsics: np.ndarray) -> dict:
    """``hand_poses/<vid>.pt`` as process_wilor.py writes it: numpy, left rotations mirrored."""
    extrinsics = scene.extrinsics(times)
    result: dict = {"video_name": video_id, "num_frames": NUM_FRAMES, "intrinsics": intrinsics}
    for side in ("left", "right"):
        valid = scene.hand_valid(side, times)
        wrist = extrinsics @ scene.wrist_poses_world(side, times)  # in the camera of each frame
        if side == "left":
            wrist[:, :3, :3] = MIRROR @ wrist[:, :3, :3] @ MIRROR  # WiLoR's global_orient of a left hand
        wrist[~valid] = np.nan
        result[f"{side}_valid"] = valid
        result[f"{side}_wrist_pose"] = wrist.astype(np.float32)
        fingers = np.zeros((NUM_FRAMES, 15, 3, 3), np.float32)
        fingers[~valid] = np.nan
        result[f"{side}_hand_pose"] = fingers
        result[f"{side}_joints_3d"] = np.full((NUM_FRAMES, 21, 3), np.nan, np.float32)
        result[f"{side}_betas"] = np.zeros(10, np.float32)
    return result


def to_script_format(root: Path, out: Path, index: int) -> None:
    """Rewrite one video's intermediates the way the script pipeline stores them."""
    video_id, work = f"{index:05d}", root / "work"
    scene, times = scene_times(root, index)
    frames = np.load(work / "frames" / video_id / "frames.npy")
    (out / "frames" / video_id).mkdir(parents=True)
    for number, frame in enumerate(frames):
        cv2.imwrite(str(out / "frames" / video_id / f"{number:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    for folder in ("vipe", "tracks_3d", "hand_poses"):
        (out / folder).mkdir(exist_ok=True)
    shutil.copy(work / "vipe" / f"{video_id}.npz", out / "vipe" / f"{video_id}.npz")
    tracks = script_tracks(work, video_id, scene, times)
    torch.save(tracks, out / "tracks_3d" / f"{video_id}.pt")
    torch.save(script_hands(video_id, scene, times, tracks["intrinsics"]), out / "hand_poses" / f"{video_id}.pt")


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    for index in range(NUM_VIDEOS):
        spec = SceneSpec.from_seed(video_seed(SEED, index), NUM_FRAMES, motion="turning")
        encode_scene(spec, root / "videos" / f"clip_{index:03d}.mp4")
    build_dataset(overrides=run_overrides(root))
    return root


def nearest_within(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Index in ``others`` of each query point's twin (within ``ATOL``), -1 where it has none."""
    if not len(points) or not len(others):
        return np.full(len(points), -1)
    distance = np.abs(points[:, None] - others[None]).max(axis=2)
    best = distance.argmin(axis=1)
    return np.where(distance[np.arange(len(points)), best] <= ATOL, best, -1)


def assert_same_points(native: dict, imported: dict, group: str) -> None:
    """The points of one window agree within ``ATOL``; a point may be kept by one build only
    when rounding decides it: its u or v lies within ``ATOL`` of the image edge at some step."""
    query, disp = native[f"{group}/query_coords"], native[f"{group}/displacements"]
    got_query, got_disp = imported[f"{group}/query_coords"], imported[f"{group}/displacements"]
    twin, back = nearest_within(got_query, query), nearest_within(query, got_query)
    both = twin >= 0
    np.testing.assert_allclose(got_query[both], query[twin[both]], atol=ATOL, rtol=0, err_msg=group)
    np.testing.assert_allclose(got_disp[:, both], disp[:, twin[both]], atol=ATOL, rtol=0, err_msg=group)
    for q, d, alone in ((query, disp, back < 0), (got_query, got_disp, ~both)):
        uv = q[alone][None, :, :2] + d[:, alone, :2]
        assert (np.minimum(np.abs(uv), np.abs(uv - 1)).min(axis=(0, 2)) <= ATOL).all(), (group, uv)
    assert len(query) - both.sum() <= 2 and len(got_query) - both.sum() <= 2, group


def h5_contents(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        found: dict[str, np.ndarray] = {}
        f.visititems(lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return found


def test_import_of_script_intermediates_equals_a_native_build(pipeline_run, tmp_path):
    scripts = tmp_path / "script-output"
    for index in range(NUM_VIDEOS):
        to_script_format(pipeline_run, scripts, index)
    before = {p: p.stat().st_mtime_ns for p in scripts.rglob("*") if p.is_file()}

    summary = build_dataset(import_dir=str(scripts), overrides={"paths": {"dataset_dir": str(tmp_path / "dataset")}})

    assert not summary.failures
    assert {p: p.stat().st_mtime_ns for p in scripts.rglob("*") if p.is_file()} == before  # read only
    hands_seen = {"left": 0, "right": 0}
    for index in range(NUM_VIDEOS):
        name = f"{index:05d}.hdf5"
        native, imported = h5_contents(pipeline_run / "dataset" / name), h5_contents(tmp_path / "dataset" / name)
        assert sorted(imported) == sorted(native), name  # same windows, same hands present
        for key, value in native.items():
            if key.endswith("query_coords"):
                assert_same_points(native, imported, key.rsplit("/", 1)[0])
            elif key.endswith("displacements") and "wrist" not in key:
                continue  # compared with their query coords
            elif key.endswith(("poses", "video", "depth", "intrinsics", "num_frames", "num_track_ts", "track_type")):
                np.testing.assert_array_equal(imported[key], value, err_msg=key)  # from the same vipe file
            else:
                np.testing.assert_allclose(imported[key], value, atol=ATOL, rtol=0, err_msg=f"{name} {key}")
        for side in hands_seen:
            hands_seen[side] += sum(key.endswith(f"{side}_wrist_query_rot_6d") for key in native)
    assert hands_seen["left"] > 0 and hands_seen["right"] > 0
    h5 = next(outcome for outcome in summary.stages if outcome.stage == "h5_build")
    assert {record.info["input_conventions"] for record in h5.records} == {"script"}

    manifest = (tmp_path / "dataset" / "manifest.jsonl").read_text()
    assert '"video_id":"00000"' in manifest and "import:" in manifest
    assert cli_main(["validate", str(tmp_path / "dataset"), "--deep"]) == 0
    # Poses and hands are the same rows; points differ by those rounding kept on the image edge.
    stats = yaml.safe_load((tmp_path / "dataset" / "normalization_stats.yaml").read_text())
    reference = yaml.safe_load((pipeline_run / "dataset" / "normalization_stats.yaml").read_text())
    assert sorted(stats) == sorted(reference)
    for key, value in reference.items():
        same_rows = key.startswith(("pose", "hand"))
        if not isinstance(value, float | int | list) or (same_rows and key.endswith("num_samples")):
            assert stats[key] == value, key
        else:
            np.testing.assert_allclose(stats[key], value, rtol=1e-5 if same_rows else 2e-3, err_msg=key)


def test_import_again_skips_and_incomplete_video_is_reported(pipeline_run, tmp_path):
    scripts = tmp_path / "script-output"
    to_script_format(pipeline_run, scripts, 0)
    to_script_format(pipeline_run, scripts, 1)
    (scripts / "tracks_3d" / "00001.pt").unlink()
    dataset = tmp_path / "dataset"
    assert cli_main(["import-intermediates", str(scripts), "--dataset-dir", str(dataset)]) == 1
    assert sorted(p.name for p in dataset.glob("*.hdf5")) == ["00000.hdf5"]
    summary = build_dataset(import_dir=str(scripts), overrides={"paths": {"dataset_dir": str(dataset)}})
    assert summary.videos_pending == 0
    assert [(f.video_id, f.stage) for f in summary.failures] == [("00001", "import")]
    assert "tracks_3d/ missing" in summary.failures[0].reason
