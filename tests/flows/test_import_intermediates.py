"""Building the dataset from the script pipeline's intermediates, in its exact on-disk format.

The intermediates are made by a normal trackset run (whose H5 files are checked against
ground truth in test_build_dataset.py), then rewritten as the scripts write them: PNG
frames, numpy arrays inside the ``.pt`` files, and window poses in the scripts' own
(wrong) convention E_s^-1 E_{s+k}. Importing them must give byte-identical H5 files:
camera motion comes from the depth stage's extrinsics, never from stored window poses.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from flows.build_dataset import build_dataset
from flows.cli import main as cli_main
from tests.flows.helpers import paths_under
from trackset.synthetic.corpus import make_corpus

NUM_VIDEOS, NUM_FRAMES = 2, 14


def run_overrides(root: Path) -> dict:
    return {
        "paths": paths_under(root),
        "cluster": {"runner": "threads"},
    }


def to_script_format(work: Path, out: Path, video_id: str) -> None:
    """Rewrite one video's trackset intermediates the way the script pipeline stores them."""
    frames = np.load(work / "frames" / video_id / "frames.npy")
    (out / "frames" / video_id).mkdir(parents=True)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(out / "frames" / video_id / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (out / "vipe").mkdir(exist_ok=True)
    shutil.copy(work / "vipe" / f"{video_id}.npz", out / "vipe" / f"{video_id}.npz")
    extrinsics = np.load(out / "vipe" / f"{video_id}.npz")["extrinsics"].astype(np.float64)

    tracks = torch.load(work / "tracks_3d" / f"{video_id}.pt", weights_only=True)
    script_poses = [
        np.stack([np.linalg.inv(extrinsics[s]) @ extrinsics[k] for k in range(s, e)]).astype(np.float32)
        for s, e in tracks["windows"]
    ]
    (out / "tracks_3d").mkdir(exist_ok=True)
    torch.save(
        {
            "tracks": [t.clone() for t in tracks["tracks"]],
            "windows": tracks["windows"],
            "window_poses": script_poses,
            "intrinsics": tracks["intrinsics"].numpy(),
            "video_name": video_id,
            "window_length": tracks["window_length"],
            "stride": tracks["stride"],
            "grid_size": 32,
            "num_frames": tracks["num_frames"],
            "resolution": tracks["resolution"],
        },
        out / "tracks_3d" / f"{video_id}.pt",
    )
    hands = torch.load(work / "hand_poses" / f"{video_id}.pt", weights_only=True)
    (out / "hand_poses").mkdir(exist_ok=True)
    torch.save(
        {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in hands.items()},
        out / "hand_poses" / f"{video_id}.pt",
    )


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    make_corpus(root / "videos", NUM_VIDEOS, seed=5, num_frames=NUM_FRAMES)
    build_dataset(overrides=run_overrides(root))
    return root


def h5_digests(dataset: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(dataset.glob("*.hdf5"))}


def test_import_of_script_format_matches_the_pipeline(pipeline_run, tmp_path):
    scripts = tmp_path / "script-output"
    for index in range(NUM_VIDEOS):
        to_script_format(pipeline_run / "work", scripts, f"{index:05d}")
    before = {p: p.stat().st_mtime_ns for p in scripts.rglob("*") if p.is_file()}

    summary = build_dataset(import_dir=str(scripts), overrides={"paths": {"dataset_dir": str(tmp_path / "dataset")}})

    assert not summary.failures
    assert h5_digests(tmp_path / "dataset") == h5_digests(pipeline_run / "dataset")
    assert {p: p.stat().st_mtime_ns for p in scripts.rglob("*") if p.is_file()} == before  # read only
    manifest = (tmp_path / "dataset" / "manifest.jsonl").read_text()
    assert '"video_id":"00000"' in manifest and "import:" in manifest
    stats = (tmp_path / "dataset" / "normalization_stats.yaml").read_bytes()
    assert stats == (pipeline_run / "dataset" / "normalization_stats.yaml").read_bytes()


def test_import_again_skips_and_incomplete_video_is_reported(pipeline_run, tmp_path):
    scripts = tmp_path / "script-output"
    to_script_format(pipeline_run / "work", scripts, "00000")
    to_script_format(pipeline_run / "work", scripts, "00001")
    (scripts / "tracks_3d" / "00001.pt").unlink()
    dataset = tmp_path / "dataset"
    assert cli_main(["import-intermediates", str(scripts), "--dataset-dir", str(dataset)]) == 1
    assert sorted(p.name for p in dataset.glob("*.hdf5")) == ["00000.hdf5"]
    summary = build_dataset(import_dir=str(scripts), overrides={"paths": {"dataset_dir": str(dataset)}})
    assert summary.videos_pending == 0
    assert [(f.video_id, f.stage) for f in summary.failures] == [("00001", "import")]
    assert "tracks_3d/ missing" in summary.failures[0].reason
