"""The build-dataset flow end to end on a tiny synthetic corpus (thread runner, fast suite).

Ground truth comes from each video's own scene parameters (its ``.scene.json``), never from
the implementation's helpers: expected poses and wrist projections are computed here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from flows.build_dataset import build_dataset
from tests.flows.helpers import digests, merge_sections, paths_under
from trackset.statistics import STATS_YAML_KEYS
from trackset.synthetic.corpus import load_scene_for, make_corpus
from trackset.synthetic.scene import STATIC_ID

# Seed 2 at 20 frames: videos 00000 and 00001 have windows where a hand stays in view.
NUM_VIDEOS, NUM_FRAMES, SEED, L, S = 3, 20, 2, 10, 256


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
    make_corpus(root / "videos", NUM_VIDEOS, seed=SEED, num_frames=NUM_FRAMES)
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


@pytest.mark.parametrize("video_id", ["00000", "00002"])
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


@pytest.mark.parametrize("video_id", ["00000", "00001"])
def test_wrist_uvd_is_projection_of_true_wrist_in_window_camera_zero(built, video_id):
    root, _ = built
    scene, times = _scene_and_times(root, video_id)
    extrinsics, k256 = scene.extrinsics(times), _k256(scene)
    checked = 0
    with h5py.File(root / "dataset" / f"{video_id}.hdf5") as f:
        for side in ("left", "right"):
            valid = scene.hand_valid(side, times)
            wrists = scene.wrist_poses_world(side, times)
            for s in range(NUM_FRAMES - L + 1):
                group = f[f"root/tracks/frame_{s:04d}"]
                present = f"{side}_wrist_query_uvd" in group
                assert present == bool(valid[s : s + L].all())
                if not present:
                    continue
                query = group[f"{side}_wrist_query_uvd"][()]
                disp = group[f"{side}_wrist_uvd_displacements"][()]
                for k in range(L):
                    expected = _uvd(k256, (extrinsics[s] @ wrists[s + k])[:3, 3])
                    np.testing.assert_allclose(query + disp[k], expected, atol=2e-5)
                checked += 1
    assert checked > 0


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
    summary = build_dataset(overrides=overrides(root))
    assert summary.videos_pending == 0
    assert all(r.status == "skipped" for outcome in summary.stages for r in outcome.records)
    assert digests(root / "dataset") == before


def test_crash_and_resume_matches_a_clean_run(built, corpus, tmp_path):
    clean_root, _ = built
    root = tmp_path
    shutil.copytree(corpus, root / "videos")
    build_dataset(overrides=overrides(root))
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
    redone = {r.video_id for o in summary.stages for r in o.records if r.status == "done"}
    assert redone == {"00001", "00002"}
    assert digests(dataset) == digests(clean_root / "dataset")


def test_changed_window_length_reruns_only_affected_stages(built, corpus, tmp_path):
    root = tmp_path
    shutil.copytree(built[0] / "videos", root / "videos")
    shutil.copytree(built[0] / "work", root / "work")
    shutil.copytree(built[0] / "dataset", root / "dataset")
    summary = build_dataset(overrides=overrides(root, tracks_3d={"window_length": 8}))
    status = {o.stage: {r.status for r in o.records} for o in summary.stages}
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
    from flows.cli import main

    assert main(["validate", str(built[0] / "dataset")]) == 0
    copy = tmp_path / "dataset"
    shutil.copytree(built[0] / "dataset", copy)
    h5 = copy / "00001.hdf5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    capsys.readouterr()
    assert main(["validate", str(copy)]) == 1
    failing = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert len(failing) == 1 and "00001.hdf5" in failing[0]
