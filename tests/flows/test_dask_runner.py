"""GPU stages on the GPU-pinned Dask runner, with the fake 2-GPU inventory (slow suite).

These start real Dask clusters of spawned Nanny workers: pinning and placement are checked
from inside the worker processes, through what each task recorded.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.build_dataset import build_dataset
from tests.flows.helpers import merge_sections, paths_under
from trackset.synthetic.corpus import make_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# ~14 GiB per depth worker on two 32 GiB fake GPUs: floor(0.9 * 32 / 14.3) = 2 workers per GPU.
DEPTH_COST = {"model_mb": 13_000, "per_video_mb": 1_000, "per_frame_mb": 16}


def overrides(root: Path, **extra) -> dict:
    base = {
        "paths": paths_under(root),
        "cluster": {"runner": "dask", "profiling_videos": 2},
        "synthetic": {"depth_camera": DEPTH_COST},
        "retry": {"retries": 1, "retry_delay_s": 0.1},
    }
    return merge_sections(base, extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask-corpus")
    make_corpus(root, 6, seed=7, num_frames=12)
    return root


async def artifacts(keys: list[str]) -> dict[str, object]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    return {a.key: a.data for a in found}


def test_gpu_tasks_run_pinned_round_robin_on_gpu_workers_sized_by_profile(corpus, tmp_path):
    (tmp_path / "videos").symlink_to(corpus)
    summary = build_dataset(overrides=overrides(tmp_path))
    assert not summary.failures
    depth = summary.records("depth_camera")
    assert len(depth) == 6
    for record in depth:
        # Worker gpu{g}-w{k} saw CUDA_VISIBLE_DEVICES=g inside its own process.
        assert record.worker.startswith(f"gpu{record.gpu}-w"), (record.worker, record.gpu)
        assert record.peak_bytes == (13_000 + 1_000 + 16 * 12) * 2**20
    assert {r.gpu for r in depth} == {"0", "1"}
    workers = {r.worker for r in depth}
    assert workers <= {f"gpu{g}-w{k}" for g in (0, 1) for k in (0, 1)}
    assert any(w.endswith("-w1") for w in workers)  # the sized cluster had 2 workers per GPU
    assert all(r.worker.startswith("cpu-w") for r in summary.records("h5_build"))
    keys = [
        "memory-profile-depth-camera",
        "stage-depth-camera",
        "progress-depth-camera",
        "run-summary",
        "dask-dashboard",
    ]
    found = asyncio.run(artifacts(keys))
    assert set(found) == set(keys)
    assert re.search(r"\(http://127\.0\.0\.1:\d+/status\)", str(found["dask-dashboard"]))


def test_a_worker_that_cannot_load_its_model_does_not_stop_the_others(corpus, tmp_path):
    (tmp_path / "videos").symlink_to(corpus)
    preload = str(Path(__file__).with_name("preload_broken_gpu1.py"))
    summary = build_dataset(overrides=overrides(tmp_path, cluster={"worker_preload": [preload]}))
    depth, failures = summary.records("depth_camera"), summary.stage("depth_camera").failures
    assert depth, "the GPU 0 workers kept processing"
    assert all(r.gpu == "0" for r in depth)
    assert failures, "the GPU 1 workers' videos are reported, not lost"
    assert all("weights unreadable on worker gpu1-" in f.reason for f in failures)
    landed = sorted(p.stem for p in (tmp_path / "dataset").glob("*.hdf5"))
    assert landed == sorted(r.video_id for r in depth)
    assert len(landed) + len(failures) == 6


def add_video(source: Path, videos: Path) -> None:
    """Copy a corpus video and its ground-truth sidecar (registration skips symlinked files)."""
    for path in (source, source.with_suffix(".scene.json")):
        shutil.copy2(path, videos / path.name)


def test_each_gpu_stage_profiles_on_its_first_wave_only_and_the_next_run_starts_from_the_stored_peak(corpus, tmp_path):
    """Depth charges the fake GPUs (a peak is measured and stored); the other GPU stages charge
    nothing, and are not profiled again on later waves for it. The clips have no prompt, so
    the object masks run no GPU task and are never profiled."""
    from bench.run_history import stage_subflows
    from trackset.settings import load_settings
    from trackset.stages.registry import enabled_stages, stage_spec

    videos = tmp_path / "videos"
    videos.mkdir()
    sources = sorted(corpus.glob("*.mp4"))
    for source in sources[:4]:
        add_video(source, videos)
    settings = overrides(tmp_path, run={"wave_size": 2}, cluster={"profiling_videos": 1})
    gpu_stages = [s for s in enabled_stages(load_settings(None, settings)) if stage_spec(s).resources.uses_gpu]
    assert "depth_camera" in gpu_stages and "object_masks" in gpu_stages and len(gpu_stages) > 2
    tasked = set(gpu_stages) - {"object_masks"}

    def profiled(state) -> list[str]:
        subflows = stage_subflows(state.state_details.flow_run_id)
        return sorted(run.name.removeprefix("profile-") for run in subflows if run.name.startswith("profile-"))

    first = build_dataset(overrides=settings, return_state=True)
    assert not first.result().failures and len(first.result().records("depth_camera")) == 4
    assert profiled(first) == sorted(tasked)  # once each, on wave 1 of 2
    assert (tmp_path / "work" / "profiles" / "depth_camera.json").is_file()

    for source in sources[4:]:
        add_video(source, videos)
    second = build_dataset(overrides=settings, return_state=True)
    assert [r.status for r in second.result().records("depth_camera")] == ["done"] * 2  # only the new
    assert profiled(second) == sorted(tasked - {"depth_camera"})
