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

from tests.flows.helpers import digests, merge_sections, paths_under
from trackset.flows.build_dataset import build_dataset
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
    from trackset.config.settings import load_settings
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


# ~6.8 GiB per worker of each tasked GPU stage: 2 workers per GPU (cluster.max_workers_per_gpu),
# and two stages' workers beside each other on a 32 GiB fake GPU hold 13.7 GiB of its 28.8.
STAGE_COST = {"model_mb": 6_000, "per_video_mb": 1_000}
TASKED = ("depth_camera", "tracks_3d", "hands")


def queued_task_runs(flow_run_id) -> tuple[list, dict]:
    """The build's task runs of ``process-after`` (queued behind the stage before), and every
    task run of the build by id."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        runs = [flow_run_id] + [child.id for child in children]
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=runs)))
    return [t for t in tasks if t.task_key.startswith("process_after")], {t.id: t for t in tasks}


@pytest.fixture(scope="module")
def threads_reference(corpus, tmp_path_factory) -> dict[str, str]:
    """Digests of the corpus built in one wave on the thread runner."""
    root = tmp_path_factory.mktemp("threads")
    shutil.copytree(corpus, root / "videos")
    assert not build_dataset(overrides=overrides(root, cluster={"runner": "threads"})).failures
    return digests(root / "dataset")


def queued_build(root: Path, corpus: Path, tracks_mb: int = STAGE_COST["model_mb"], **cluster):
    """The corpus in two waves of 3 on Dask, every tasked GPU stage charging the fake GPUs."""
    (root / "videos").symlink_to(corpus)
    costs = {stage: dict(STAGE_COST) for stage in TASKED}
    costs["tracks_3d"]["model_mb"] = tracks_mb  # 24 GiB: 1 worker per GPU, beside 2 of depth: 31.8 GiB
    sizing = {"profiling_videos": 1, "max_workers_per_gpu": 2, **cluster}
    settings = overrides(root, run={"wave_size": 3}, cluster=sizing, synthetic=costs)
    return build_dataset(overrides=settings, return_state=True)


@pytest.mark.parametrize("tracks_mb", [6_000, 24_000], ids=["fits-beside", "too-large-beside"])
def test_a_later_wave_queues_the_next_gpu_stage_behind_the_one_before(
    corpus, threads_reference, tmp_path, tracks_mb, caplog
):
    """On wave 2 both peaks are known: tracks' tasks wait on depth's (the unprompted masks are
    written in the flow first) and hands' on tracks', each starting when its own upstream task
    ends; wave 2's depth was queued behind wave 1's hands. The bytes are those of a
    thread-runner build in one wave. A stage whose peak does not fit beside the one before
    waits for the stage as a whole, as before."""
    state = queued_build(tmp_path, corpus, tracks_mb)
    summary = state.result()
    assert not summary.failures
    assert digests(tmp_path / "dataset") == threads_reference
    for stage in summary.stages:
        assert sorted(r.video_id for r in summary.records(stage.stage)) == [f"{i:05d}" for i in range(6)]

    queued, by_id = queued_task_runs(state.state_details.flow_run_id)
    assert "depth_camera: 3 videos queued behind hands's tasks (2 workers per GPU)" in caplog.messages
    if tracks_mb > STAGE_COST["model_mb"]:
        assert not [t for t in queued if t.name.startswith("tracks-3d-")]
        assert "tracks_3d: waits for the GPUs as a whole: it does not fit beside depth_camera" in caplog.messages
        return
    upstream_of = {"tracks-3d-": "depth-camera-", "hands-": "tracks-3d-"}
    for prefix, upstream_prefix in upstream_of.items():
        mine = [t for t in queued if t.name.startswith(prefix)]
        assert len(mine) == 3, (prefix, [t.name for t in queued])  # one per video of wave 2, none on wave 1
        for task in mine:
            (upstream,) = [by_id[i.id] for i in task.task_inputs["upstream"]]
            assert upstream.name.startswith(upstream_prefix), (task.name, upstream.name)
            assert task.start_time >= upstream.end_time


def test_a_queued_task_skips_what_ran_out_of_memory_upstream_and_the_stage_runs_it_after_the_shrink(
    corpus, threads_reference, tmp_path, monkeypatch, caplog
):
    """Video 00004 (wave 2) runs out of memory in depth at 2 workers per GPU: tracks' queued
    task for it does not start (NotReady), depth waits for tracks' queued round before
    its round at 1 worker per GPU, and tracks then runs 00004 in a task of its own."""
    monkeypatch.setenv("TRACKSET_TEST_OOM_VIDEO", "00004")
    preload = str(Path(__file__).with_name("preload_oom_at_two.py"))
    state = queued_build(tmp_path, corpus, worker_preload=[preload])
    summary = state.result()
    assert not summary.failures
    assert digests(tmp_path / "dataset") == threads_reference
    assert {r.video_id: r.info["workers_per_gpu"] for r in summary.records("depth_camera")}["00004"] == 1
    assert "depth_camera: 1 videos ran out of memory; retrying them with 1 workers per GPU" in caplog.messages

    queued, by_id = queued_task_runs(state.state_details.flow_run_id)
    tracks = {t.name: t for t in by_id.values() if t.name.startswith("tracks-3d-0000")}
    assert tracks["tracks-3d-00004"].task_key.startswith("process_video")  # the rerun after the shrink
    # Prefect names a task it never starts by its key, so a skipped one is found by its upstream.
    skipped = [t for t in queued if t.state.name == "NotReady"]
    upstream = [by_id[ref.id] for t in skipped for ref in t.task_inputs["upstream"]]
    assert [(u.name, u.state.name) for u in upstream if u.name.startswith("depth-camera-")] == [
        ("depth-camera-00004", "Failed")
    ]
    assert sorted(t.name for t in queued if t.name.startswith("tracks-3d-") and t.state.is_completed()) == [
        "tracks-3d-00003",
        "tracks-3d-00005",
    ]
