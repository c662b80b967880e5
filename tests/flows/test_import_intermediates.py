"""Building the dataset from the script pipeline's intermediates, in its exact format and meaning.

A normal trackset build of a synthetic corpus (a camera turning about every axis, hands
rotating about every axis) is the reference. Its intermediates are then rewritten as the
scripts produce them, from the scene's ground truth (:mod:`trackset.synthetic.script_format`:
PNG frames, a compressed depth npz, numpy arrays inside the ``.pt`` files, the scripts'
poses and mirrored left hands).

Importing them must give the reference's H5 files within float32 rounding: same windows,
points, poses and hands. Expectations use numpy on the scene's parameters only.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.flows.helpers import paths_under
from trackset.flows.build_dataset import build_dataset
from trackset.flows.cli import main as cli_main
from trackset.synthetic.corpus import encode_scene, video_seed
from trackset.synthetic.scene import SceneSpec
from trackset.synthetic.script_format import write_script_format

# Seed 4 at 14 frames: video 00000 has both hands in the crop for full windows.
NUM_VIDEOS, NUM_FRAMES, SEED = 2, 14, 4
ATOL = 2e-6  # float32 rounding of metre-scale points and unit rotations, a few ulps


def run_overrides(root: Path) -> dict:
    return {"paths": paths_under(root), "cluster": {"runner": "threads"}}


def to_script_format(root: Path, out: Path, index: int) -> None:
    """Rewrite one video of the reference build the way the script pipeline stores it."""
    write_script_format(root / "videos" / f"clip_{index:03d}.mp4", root / "work", f"{index:05d}", out)


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

    # The thread runner: the import on Dask's CPU workers is the next test's.
    dataset = {"paths": {"dataset_dir": str(tmp_path / "dataset")}, "cluster": {"runner": "threads"}}
    summary = build_dataset(import_dir=str(scripts), overrides=dataset)

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
    assert {record.info["input_conventions"] for record in summary.records("h5_build")} == {"script"}

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


def test_an_import_runs_on_cpu_workers_only_skips_when_done_and_reports_an_incomplete_video(
    pipeline_run, tmp_path, monkeypatch
):
    """The CLI's import on the default Dask runner. It has no GPU stage, so the run's cluster
    must not start (and stop) the ``max_workers_per_gpu`` workers per GPU it would never use."""
    import trackset.engine.run_cluster as run_cluster

    started: list[list[str]] = []
    real = run_cluster.SpecCluster

    def recording(**spec):
        started.append(sorted(spec["workers"]))
        return real(**spec)

    monkeypatch.setattr(run_cluster, "SpecCluster", recording)
    scripts = tmp_path / "script-output"
    to_script_format(pipeline_run, scripts, 0)
    to_script_format(pipeline_run, scripts, 1)
    (scripts / "tracks_3d" / "00001.pt").unlink()
    dataset = tmp_path / "dataset"
    assert cli_main(["import-intermediates", str(scripts), "--dataset-dir", str(dataset)]) == 1
    assert sorted(p.name for p in dataset.glob("*.hdf5")) == ["00000.hdf5"]
    assert started == [["cpu-w0", "cpu-w1"]]  # cluster.cpu_workers: 2, and no GPU worker
    summary = build_dataset(import_dir=str(scripts), overrides={"paths": {"dataset_dir": str(dataset)}})
    assert summary.videos_pending == 0
    assert [(f.video_id, f.stage) for f in summary.failures] == [("00001", "import")]
    assert "tracks_3d/ missing" in summary.failures[0].reason
