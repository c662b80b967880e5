"""Builds whose GPU workers are SLURM jobs, against a real one-node SLURM (slow suite).

``deployments/slurm-local.sh up`` starts it (as root; ``.ci/run`` does): two fake GPUs as
GRES of types ``small`` (index 0) and ``big`` (index 1). Without a controller answering,
these tests skip, unless ``TRACKSET_REQUIRE_SLURM=1`` (``.ci/run``) makes that a failure.
Every job asks one CPU (the node has two), so both GPUs get a job at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.flows.helpers import SMALL_H, SMALL_W, digests, merge_sections, small_build
from trackset.cluster.security import write_secrets
from trackset.flows.build_dataset import build_dataset
from trackset.synthetic.corpus import encode_scene, video_seed
from trackset.synthetic.scene import SceneSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

VIDEOS = 6
FRAMES = 8


def slurm_answers() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    if not slurm_answers():
        if os.environ.get("TRACKSET_REQUIRE_SLURM") == "1":
            pytest.fail("no SLURM controller answers: deployments/slurm-local.sh up")
        pytest.skip("no SLURM controller answers (deployments/slurm-local.sh up starts one)")


def squeue() -> list[tuple[str, str]]:
    """This user's jobs as ``(id, state)``."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split()) for line in out.splitlines()]  # type: ignore[misc]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("slurm-corpus") / "videos"
    for index in range(VIDEOS):
        encode_scene(SceneSpec.from_seed(video_seed(7, index), FRAMES, 10.0, SMALL_W, SMALL_H), videos / f"v{index}.mp4")
    return videos


@pytest.fixture(scope="module")
def local_digests(corpus, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("slurm-local")
    shutil.copytree(corpus, root / "videos")
    summary = build_dataset(overrides=overrides(root))
    assert not summary.failures
    return digests(root / "dataset")


def overrides(root: Path, fake_gb: tuple[int, int] = (16, 16), **slurm) -> dict:
    cluster = {"runner": "dask", "cpu_workers": 1, "profiling_videos": 2, "gpu_task_videos": 1,
               "fake_gpus": [{"memory_gb": fake_gb[0]}, {"memory_gb": fake_gb[1]}]}
    if slurm:
        write_secrets(root / "secrets")
        cluster |= {"kind": "slurm", "tls_dir": str(root / "secrets" / "tls"), "max_workers_per_gpu": 2,
                    "slurm": {"cpus_per_job": 1, "memory": "2GB", "max_jobs": 2, "poll_s": 0.5,
                              "walltime": "00:30:00", "retire_before_walltime_s": 60, "retire_stagger_s": 0,
                              **slurm}}
    return merge_sections(small_build(root, points_per_window=16), {"cluster": cluster})


def fresh(corpus: Path, root: Path) -> Path:
    shutil.copytree(corpus, root / "videos")
    return root


def test_a_build_on_slurm_jobs_gives_the_local_bytes_and_gives_every_job_back(corpus, local_digests, tmp_path):
    root = fresh(corpus, tmp_path / "slurm")
    summary = build_dataset(overrides=overrides(root, max_jobs=2))
    assert not summary.failures
    assert digests(root / "dataset") == local_digests
    workers = {r.worker for r in summary.records("depth_camera") if r.status == "done"}
    assert workers and all(w.startswith("slurm-") for w in workers), workers
    deadline = time.monotonic() + 30
    while squeue():
        assert time.monotonic() < deadline, f"jobs left after the run: {squeue()}"
        time.sleep(0.5)
