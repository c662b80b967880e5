"""The build-dataset flow end to end on a tiny synthetic corpus (thread runner, fast suite).

Ground truth comes from each video's own scene parameters (its ``.scene.json``), never from
the implementation's helpers: every H5 field (query coords, displacements, poses, wrist
uvd, wrist rotation and rotation displacements) is recomputed here with numpy and scipy.
Videos 00000 and 00002 have a camera that turns by 10-13 degrees about every axis within a
window and hands that rotate about every axis, which tells each composition from its
mirror image (``E_s E_{s+k}^-1`` from ``E_{s+k}^-1 E_s``, ``R_k R_0^T`` from ``R_0^T R_k``,
rotation columns from rows); video 00001 is the demo's gentle scene.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from tests.flows.helpers import digests, merge_sections, paths_under
from trackset import __version__
from trackset.dataset.lock import LOCK_NAME
from trackset.flows.build_dataset import build_dataset
from trackset.formats.statistics import STATS_YAML_KEYS
from trackset.synthetic.corpus import encode_scene, load_scene_for, video_seed
from trackset.synthetic.scene import STATIC_ID, SceneSpec

# Seed 2 at 20 frames: the turning videos' hands stay in the 256 crop for some full windows
# (both hands of 00002) and leave it during others; the gentle video's hands never stay in it.
NUM_FRAMES, SEED, L, S = 20, 2, 10, 256
MOTIONS = ("turning", "gentle", "turning")
NUM_VIDEOS = len(MOTIONS)


def overrides(root: Path, **extra) -> dict:
    base = {
        "paths": paths_under(root),
        "cluster": {"runner": "threads", "cpu_workers": 2},
        "retry": {"retries": 0},
    }
    return merge_sections(base, extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for index, motion in enumerate(MOTIONS):
        spec = SceneSpec.from_seed(video_seed(SEED, index), NUM_FRAMES, motion=motion)
        encode_scene(spec, root / "videos" / f"clip_{index:03d}.mp4")
    return root / "videos"


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """One clean build, shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("built")
    shutil.copytree(corpus, root / "videos")
    summary = build_dataset(overrides=overrides(root))
    return root, summary


def manifest_sources(dataset: Path) -> dict[str, str]:
    lines = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    return {line["video_id"]: line["source"] for line in lines if line.get("kind", "video") == "video"}


def test_every_video_lands_with_the_formats_layout(built):
    root, summary = built
    dataset = root / "dataset"
    assert not summary.failures
    assert sorted(p.name for p in dataset.glob("*.hdf5")) == [f"{i:05d}.hdf5" for i in range(NUM_VIDEOS)]
    with h5py.File(dataset / "00000.hdf5") as f:
        assert f["root/video"].shape == (NUM_FRAMES, 3, S, S) and f["root/video"].dtype == np.uint8
        assert f["root/depth"].shape == (NUM_FRAMES, S, S) and f["root/depth"].dtype == np.float32
        assert f["root/num_track_ts"][()] == L and f["root/track_type"][()] == b"3d"
        assert sorted(f["root/tracks"]) == [f"frame_{t:04d}" for t in range(NUM_FRAMES - L + 1)]
    stats = yaml.safe_load((dataset / "normalization_stats.yaml").read_text())
    assert [key for key in STATS_YAML_KEYS if key not in stats] == []


def test_every_file_names_what_made_it_and_the_record_names_the_dataset(built):
    root, summary = built
    dataset = root / "dataset"
    fingerprints = []
    for path in sorted(dataset.glob("*.hdf5")):
        partials = json.loads((dataset / "partials" / f"{path.stem}.json").read_text())
        with h5py.File(path) as f:
            attrs = dict(f.attrs)
        assert attrs["trackset.fingerprint"] == partials["fingerprint"]
        assert (attrs["trackset.video_id"], attrs["trackset.version"]) == (path.stem, __version__)
        stages = ["preprocess", "depth_camera", "object_masks", "tracks_3d", "hands", "h5_build"]
        assert json.loads(attrs["trackset.stages"]) == stages
        assert json.loads(attrs["trackset.h5_build.settings"])["section"]["target_size"] == S
        assert attrs["trackset.depth_camera.model"] == "synthetic" and attrs["trackset.hands.seed"] == int(path.stem)
        fingerprints.append(f"{path.stem}\t{partials['fingerprint']}\n")
    record = json.loads((dataset / "dataset.json").read_text())
    assert record["dataset_version"] == hashlib.sha256("".join(fingerprints).encode()).hexdigest()
    assert summary.dataset_version == record["dataset_version"]
    assert (record["videos"], record["runs"][0]["videos_built"], record["runs"][0]["videos_failed"]) == (3, 3, 0)


def _scene_and_times(root: Path, video_id: str):
    source = root / "videos" / manifest_sources(root / "dataset")[video_id]
    scene = load_scene_for(source)
    meta = json.loads((root / "work" / "frames" / video_id / "meta.json").read_text())
    return scene, np.asarray(meta["timestamps_s"])


def _k256(scene) -> np.ndarray:
    """K after the 384x384 centre crop of 512x384 and the resize to 256, worked out by hand."""
    k = scene.intrinsics().astype(np.float64)
    scale = S / 384
    return np.array([[k[0, 0] * scale, 0, (k[0, 2] - 64) * scale], [0, k[1, 1] * scale, k[1, 2] * scale], [0, 0, 1]])


def _uvd(k: np.ndarray, point: np.ndarray) -> np.ndarray:
    x, y, z = point
    return np.array([(k[0, 0] * x / z + k[0, 2]) / S, (k[1, 1] * y / z + k[1, 2]) / S, z])


def _in_crop(uvd: np.ndarray) -> bool:
    """FORMATS.md's in-image rule for positions ``(L, 3)``, written out."""
    return bool(((uvd[:, 0] >= 0) & (uvd[:, 0] <= 1) & (uvd[:, 1] >= 0) & (uvd[:, 1] <= 1) & (uvd[:, 2] > 0)).all())


def _wrists_in_camera_zero(scene, times, side: str, s: int) -> np.ndarray:
    """``(L, 4, 4)`` true wrist of steps s..s+L-1 in the camera of frame s: E_s W_world."""
    return scene.extrinsics(times[s : s + 1])[0] @ scene.wrist_poses_world(side, times[s : s + L])


def _hand_kept(scene, times, side: str, s: int) -> bool:
    """A window keeps a hand valid at every step whose wrist stays in the crop at every step."""
    if not scene.hand_valid(side, times[s : s + L]).all():
        return False
    k256 = _k256(scene)
    return _in_crop(np.stack([_uvd(k256, w[:3, 3]) for w in _wrists_in_camera_zero(scene, times, side, s)]))


def _six_d(rotation: np.ndarray) -> np.ndarray:
    """Columns 0 then 1 of a rotation matrix (FORMATS.md's 6D)."""
    return np.r_[rotation[:, 0], rotation[:, 1]]


@pytest.mark.parametrize("video_id", ["00000", "00001", "00002"])
def test_poses_equal_true_relative_camera_motion(built, video_id):
    root, _ = built
    scene, times = _scene_and_times(root, video_id)
    extrinsics = scene.extrinsics(times)
    with h5py.File(root / "dataset" / f"{video_id}.hdf5") as f:
        for s in range(NUM_FRAMES - L + 1):
            poses = f[f"root/tracks/frame_{s:04d}/poses"][()]
            for k in range(L):
                rel = extrinsics[s] @ np.linalg.inv(extrinsics[s + k])
                expected = np.r_[rel[:3, 0], rel[:3, 1], rel[:3, 3]]
                np.testing.assert_allclose(poses[k], expected, atol=2e-5)


def test_the_turning_videos_turn_about_every_axis(built):
    """Guards the fixture: the camera turns by degrees within a window about x, y and z."""
    root, _ = built
    for video_id in ("00000", "00002"):
        scene, times = _scene_and_times(root, video_id)
        rotations = Rotation.from_matrix(scene.extrinsics(times)[:, :3, :3])
        turns = np.stack([(rotations[s] * rotations[s + L - 1].inv()).as_rotvec() for s in range(NUM_FRAMES - L + 1)])
        assert (np.degrees(np.abs(turns)).max(axis=0) > 2.0).all(), turns
        assert np.degrees(np.linalg.norm(turns, axis=1)).max() > 8.0


@pytest.mark.parametrize("video_id", ["00000", "00001", "00002"])
def test_every_track_follows_its_true_point_in_window_camera_zero(built, video_id):
    """Each kept point is traced back to its pixel, body and depth in the scene at the window
    start, then moved with that body and projected into camera 0 at every step."""
    root, _ = built
    scene, times = _scene_and_times(root, video_id)
    k, k256 = scene.intrinsics(), _k256(scene)
    extrinsics, bodies = scene.extrinsics(times), scene.body_poses(times)
    moving = 0
    with h5py.File(root / "dataset" / f"{video_id}.hdf5") as f:
        for s in (0, 4, NUM_FRAMES - L):
            group = f[f"root/tracks/frame_{s:04d}"]
            query, disp = group["query_coords"][()].astype(np.float64), group["displacements"][()]
            assert len(query) > 20
            depth, object_id = scene.render_depth(times[s])
            x = (query[:, 0] * S - k256[0, 2]) * 384 / S + k[0, 2]
            y = (query[:, 1] * S - k256[1, 2]) * 384 / S + k[1, 2]
            col, row = np.rint(x).astype(int), np.rint(y).astype(int)
            np.testing.assert_allclose(np.c_[x, y], np.c_[col, row], atol=2e-3)  # queries sit on pixels
            z = depth[row, col].astype(np.float64)
            camera_s = np.c_[(col - k[0, 2]) / k[0, 0] * z, (row - k[1, 2]) / k[1, 1] * z, z, np.ones_like(z)]
            world = np.linalg.inv(extrinsics[s]) @ camera_s.T  # (4, N)
            for n, body in enumerate(object_id[row, col]):
                local = np.linalg.inv(bodies[body][s]) @ world[:, n]
                expected = np.stack([_uvd(k256, (extrinsics[s] @ bodies[body][s + j] @ local)[:3]) for j in range(L)])
                np.testing.assert_allclose(query[n, :2], expected[0, :2], atol=2e-5)
                np.testing.assert_allclose(query[n, 2], np.clip(expected[0, 2], 0.1, 2.5), atol=1e-4)
                np.testing.assert_allclose(disp[:, n], expected - expected[0], atol=2e-5)  # unclipped depth
                moving += int(body != STATIC_ID)
    assert moving > 0


@pytest.mark.parametrize("video_id", ["00000", "00001", "00002"])
def test_wrist_uvd_is_projection_of_true_wrist_in_window_camera_zero(built, video_id):
    root, _ = built
    scene, times = _scene_and_times(root, video_id)
    k256 = _k256(scene)
    with h5py.File(root / "dataset" / f"{video_id}.hdf5") as f:
        for side in ("left", "right"):
            for s in range(NUM_FRAMES - L + 1):
                group = f[f"root/tracks/frame_{s:04d}"]
                present = f"{side}_wrist_query_uvd" in group
                assert present == _hand_kept(scene, times, side, s), (side, s)
                if not present:
                    continue
                query = group[f"{side}_wrist_query_uvd"][()]
                disp = group[f"{side}_wrist_uvd_displacements"][()]
                for k, wrist in enumerate(_wrists_in_camera_zero(scene, times, side, s)):
                    np.testing.assert_allclose(query + disp[k], _uvd(k256, wrist[:3, 3]), atol=2e-5)


@pytest.mark.parametrize("video_id", ["00000", "00002"])
def test_wrist_rotations_are_true_rotations_in_window_camera_zero(built, video_id):
    """query_rot_6d is the wrist's rotation in camera 0 at step 0, rot_displacements R_k R_0^T,
    with the true rotations composed here by scipy."""
    root, _ = built
    scene, times = _scene_and_times(root, video_id)
    extrinsics = scene.extrinsics(times)
    checked = {"left": 0, "right": 0}
    with h5py.File(root / "dataset" / f"{video_id}.hdf5") as f:
        for side in checked:
            wrist_to_world = Rotation.from_matrix(scene.wrist_poses_world(side, times)[:, :3, :3])
            world_to_camera = Rotation.from_matrix(extrinsics[:, :3, :3])
            for s in range(NUM_FRAMES - L + 1):
                group = f[f"root/tracks/frame_{s:04d}"]
                if f"{side}_wrist_query_rot_6d" not in group:
                    continue
                in_camera0 = world_to_camera[s] * wrist_to_world[s : s + L]  # camera 0 <- wrist, per step
                np.testing.assert_allclose(
                    group[f"{side}_wrist_query_rot_6d"][()], _six_d(in_camera0[0].as_matrix()), atol=1e-5
                )
                relative = in_camera0 * in_camera0[0].inv()
                rot_disp = group[f"{side}_wrist_rot_displacements"][()]
                for k in range(L):
                    np.testing.assert_allclose(rot_disp[k], _six_d(relative[k].as_matrix()), atol=1e-5)
                checked[side] += 1
    if video_id == "00002":  # both of its hands stay in the crop for some windows
        assert checked["left"] > 0 and checked["right"] > 0


def test_hand_windows_outside_the_crop_are_counted_in_the_record_and_summary(built):
    root, summary = built
    h5_records = summary.records("h5_build")
    total = 0
    for record in h5_records:
        scene, times = _scene_and_times(root, record.video_id)
        expected = sum(
            bool(scene.hand_valid(side, times[s : s + L]).all()) and not _hand_kept(scene, times, side, s)
            for side in ("left", "right")
            for s in range(NUM_FRAMES - L + 1)
        )
        assert record.info["hand_windows_out_of_image"] == expected, record.video_id
        total += expected
    assert total > 0
    assert f"- hand windows dropped, wrist outside the image: **{total}**" in summary.to_markdown()


def test_static_points_have_zero_displacement_and_true_depth(built):
    root, _ = built
    scene, times = _scene_and_times(root, "00001")
    k256 = _k256(scene)
    static_seen = 0
    with h5py.File(root / "dataset" / "00001.hdf5") as f:
        for s in (0, NUM_FRAMES - L):
            depth, object_id = scene.render_depth(times[s])
            group = f[f"root/tracks/frame_{s:04d}"]
            query, disp = group["query_coords"][()], group["displacements"][()]
            # Back to 512x384 pixels: undo the resize and the crop (pixel centres on integers).
            x = np.rint((query[:, 0] * S - k256[0, 2]) * 384 / S + scene.intrinsics()[0, 2]).astype(int)
            y = np.rint((query[:, 1] * S - k256[1, 2]) * 384 / S + scene.intrinsics()[1, 2]).astype(int)
            static = object_id[y, x] == STATIC_ID
            static_seen += int(static.sum())
            np.testing.assert_allclose(disp[:, static], 0.0, atol=1e-6)
            np.testing.assert_allclose(query[:, 2], np.clip(depth[y, x], 0.1, 2.5), atol=1e-4)
    assert static_seen > 0


def test_statistics_are_exact_over_every_value_written(built):
    root, _ = built
    dataset = root / "dataset"
    values: dict[str, list[np.ndarray]] = {"displacement": [], "depth": [], "pose": [], "hand_uvd": [], "hand_rot": []}
    for path in sorted(dataset.glob("*.hdf5")):
        with h5py.File(path) as f:
            depth = f["root/depth"][()]
            values["depth"].append(depth[depth > 0].astype(np.float64))
            for group in f["root/tracks"].values():
                values["displacement"].append(group["displacements"][()].reshape(-1, 3))
                values["pose"].append(group["poses"][()])
                q = group["query_coords"][()][:, 2]
                values["depth"].append(q[q > 0].astype(np.float64))
                for side in ("left", "right"):
                    if f"{side}_wrist_uvd_displacements" in group:
                        values["hand_uvd"].append(group[f"{side}_wrist_uvd_displacements"][()])
                        values["hand_rot"].append(group[f"{side}_wrist_rot_displacements"][()])
    stats = yaml.safe_load((dataset / "normalization_stats.yaml").read_text())
    for name, prefix, count_key in [
        ("displacement", "displacement", "displacement_num_samples"),
        ("depth", "depth", "depth_num_samples"),
        ("pose", "pose", "pose_num_samples"),
        ("hand_uvd", "hand_uvd_disp", "hand_pose_num_samples"),
        ("hand_rot", "hand_rot_disp", "hand_pose_num_samples"),
    ]:
        data = np.concatenate([np.asarray(v, np.float64).reshape(len(v), -1) for v in values[name]])
        assert stats[count_key] == data.shape[0]
        mean, std = np.atleast_1d(stats[f"{prefix}_mean"]), np.atleast_1d(stats[f"{prefix}_std"])
        np.testing.assert_allclose(mean, data.mean(axis=0), rtol=1e-12, atol=1e-15)
        floored = [key for key in stats["std_floored"] if key.startswith(f"{prefix}_std")]
        true_std = data.std(axis=0)
        if not floored:
            np.testing.assert_allclose(std, true_std, rtol=1e-12, atol=1e-15)


def test_second_run_processes_nothing_and_rewrites_same_statistics(built):
    root, _ = built
    before = digests(root / "dataset")
    record = json.loads((root / "dataset" / "dataset.json").read_text())
    summary = build_dataset(overrides=overrides(root))
    assert summary.videos_pending == 0
    assert all(r.status == "skipped" for tally in summary.stages for r in summary.records(tally.stage))
    assert digests(root / "dataset") == before
    assert json.loads((root / "dataset" / "dataset.json").read_text()) == record  # no change, no new run


def test_a_run_that_takes_over_a_crashed_runs_lock_says_what_it_resumes(built, tmp_path, caplog):
    for folder in ("videos", "work", "dataset"):
        shutil.copytree(built[0] / folder, tmp_path / folder)
    (tmp_path / "dataset" / "partials" / "00002.json").unlink()  # the crashed run did not finish 00002
    crashed = {"host": "gpu1", "pid": 4242, "flow_run_id": "crashed-run", "started": "2027-01-05T02:00:00"}
    (tmp_path / "dataset" / LOCK_NAME).write_text(json.dumps(crashed))
    with caplog.at_level(logging.INFO):
        build_dataset(overrides=overrides(tmp_path))
    assert (
        "resuming flow run crashed-run (host gpu1, pid 4242, since 2027-01-05T02:00:00), which did not finish: "
        "2 of 3 videos done in earlier runs; 1 pending"
    ) in caplog.text


def copy_of_built(built, root: Path) -> Path:
    """``root`` holding a copy of the clean build's videos, work and dataset directories."""
    for name in ("videos", "work", "dataset"):
        shutil.copytree(built[0] / name, root / name)
    return root


def test_crash_and_resume_matches_a_clean_run(built, tmp_path):
    clean_root, _ = built
    root = copy_of_built(built, tmp_path)
    dataset = root / "dataset"
    # What a crash mid-run leaves: one video without partials and with a truncated H5, a stray
    # temporary file, and a tracks intermediate whose marker was never written.
    (dataset / "partials" / "00001.json").unlink()
    h5 = dataset / "00001.hdf5"
    h5.write_bytes(h5.read_bytes()[:1000])
    (dataset / ".00002.hdf5.abc.tmp").write_bytes(b"partial")
    (root / "work" / "markers" / "tracks_3d" / "00002.json").unlink()
    (dataset / "partials" / "00002.json").unlink()
    summary = build_dataset(overrides=overrides(root))
    redone = {r.video_id for o in summary.stages for r in summary.records(o.stage) if r.status == "done"}
    assert redone == {"00001", "00002"}
    assert digests(dataset) == digests(clean_root / "dataset")


def test_changed_window_length_reruns_only_affected_stages(built, tmp_path):
    root = copy_of_built(built, tmp_path)
    summary = build_dataset(overrides=overrides(root, tracks_3d={"window_length": 8}))
    status = {o.stage: {r.status for r in summary.records(o.stage)} for o in summary.stages}
    assert status["preprocess"] == status["depth_camera"] == status["hands"] == {"skipped"}
    assert status["tracks_3d"] == status["h5_build"] == {"done"}
    with h5py.File(root / "dataset" / "00000.hdf5") as f:
        assert f["root/num_track_ts"][()] == 8


def test_one_vs_two_workers_give_identical_bytes(built, corpus, tmp_path):
    root = tmp_path
    shutil.copytree(corpus, root / "videos")
    build_dataset(overrides=overrides(root, cluster={"cpu_workers": 1, "cpu_task_videos": 1}))
    assert digests(root / "dataset") == digests(built[0] / "dataset")


def test_a_bad_video_fails_alone(built, corpus, tmp_path):
    root = tmp_path
    shutil.copytree(corpus, root / "videos")
    (root / "videos" / "zz_not_a_video.mp4").write_text("this is not a video")
    summary = build_dataset(overrides=overrides(root))
    assert [(f.video_id, f.stage) for f in summary.failures] == [("00003", "preprocess")]
    assert "zz_not_a_video.mp4" in summary.failures[0].reason and "00003" in summary.failures[0].reason
    good = {p.name: p.read_bytes() for p in (root / "dataset").glob("*.hdf5")}
    assert sorted(good) == [f"{i:05d}.hdf5" for i in range(NUM_VIDEOS)]
    for name, data in good.items():
        assert data == (built[0] / "dataset" / name).read_bytes()


def test_validate_cli_clean_then_one_corrupted_file(built, tmp_path, capsys):
    from trackset.flows.cli import main

    assert main(["validate", str(built[0] / "dataset")]) == 0
    copy = tmp_path / "dataset"
    shutil.copytree(built[0] / "dataset", copy)
    h5 = copy / "00001.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    capsys.readouterr()
    assert main(["validate", str(copy)]) == 1
    failing = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert len(failing) == 2 and all("00001.hdf5" in line for line in failing)
    assert any("open:" in line for line in failing)
    assert any("stamp:" in line for line in failing)  # why: it is half the size its partials recorded
