"""Faults during a build: nothing is lost, nothing half-written looks complete (slow suite).

Issue 8, item 1. Each test injects one kind of fault into a real ``build-dataset`` run and
compares what lands with one clean build of the same corpus (the module's baseline):

- a Dask worker process SIGKILLed in the middle of a GPU-stage task;
- the flow process itself SIGKILLed mid-run, then a second run;
- writes that fail half-way with a full disk or an I/O error (the H5 file, the partials,
  the depth intermediate), persistently or once;
- an out-of-memory storm on the fake GPUs, with one video that does not fit alone.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from prefect.settings import get_current_settings

from bench.run_history import waves_task_runs
from tests.flows.helpers import SMALL_H, SMALL_S, SMALL_W, digests, merge_sections, small_build, vid
from trackset.flows.build_dataset import build_dataset
from trackset.formats import h5_layout, intermediates
from trackset.formats import statistics as statistics_module
from trackset.synthetic.corpus import make_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NUM_VIDEOS, FRAMES, SEED = 6, 12, 7
W, H, S = SMALL_W, SMALL_H, SMALL_S
STAGES = ("preprocess", "depth_camera", "tracks_3d", "hands", "h5_build")


def overrides(root: Path, **extra) -> dict:
    return merge_sections(small_build(root, points_per_window=32), extra)



def h5_digests(dataset: Path) -> dict[str, str]:
    return {name: digest for name, digest in digests(dataset).items() if name.endswith(".hdf5")}


def temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(".*.tmp")]


def done_ids(summary, stage: str) -> set[str]:
    return {r.video_id for r in summary.records(stage) if r.status == "done"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("faults-corpus") / "videos"
    make_corpus(videos, NUM_VIDEOS, seed=SEED, num_frames=FRAMES, width=W, height=H)
    return videos


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory) -> dict[str, str]:
    """Digests of one clean build of the corpus: what every faulty run must end with."""
    root = tmp_path_factory.mktemp("faults-baseline")
    shutil.copytree(corpus, root / "videos")
    summary = build_dataset(overrides=overrides(root))
    assert not summary.failures
    result = digests(root / "dataset")
    assert len(result) == NUM_VIDEOS + 1
    return result


def fresh(corpus: Path, root: Path) -> Path:
    shutil.copytree(corpus, root / "videos")
    return root


# -- a Dask worker dies mid-task -------------------------------------------------------------


def test_a_dask_worker_killed_mid_task_is_rerun_and_every_video_lands(corpus, baseline, tmp_path, monkeypatch):
    root = fresh(corpus, tmp_path)
    victim = "clip_004.mp4"
    monkeypatch.setenv("TRACKSET_TEST_KILL_DIR", str(tmp_path))  # spawned workers inherit it
    monkeypatch.setenv("TRACKSET_TEST_KILL_SOURCE", victim)
    preload = str(Path(__file__).with_name("preload_kill_once.py"))
    summary = build_dataset(
        overrides=overrides(root, cluster={"runner": "dask", "profiling_videos": 1, "worker_preload": [preload]})
    )
    killed_worker, killed_pid = (tmp_path / "killed").read_text().split()
    assert killed_worker.startswith("gpu") and int(killed_pid) > 0  # it really died mid-task
    assert not summary.failures
    assert done_ids(summary, "depth_camera") == {vid(i) for i in range(NUM_VIDEOS)}
    assert digests(root / "dataset") == baseline


# -- the flow process dies -------------------------------------------------------------------


def completed(root: Path) -> dict[str, set[str]]:
    """Videos each stage has finished on disk: a marker (partials for the H5 build)."""
    done = {stage: {p.stem for p in (root / "work" / "markers" / stage).glob("*.json")} for stage in STAGES[:-1]}
    done["h5_build"] = {p.stem for p in (root / "dataset" / "partials").glob("*.json")}
    return done


def kill_when(root: Path, tmp_path: Path, settings: dict, ready) -> dict[str, set[str]]:
    """Run ``trackset run`` in its own process group, SIGKILL it once ``ready(completed)``,
    and return what each stage had finished on disk at the kill."""
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)}  # this session's server
    trackset = Path(sys.executable).with_name("trackset")
    process = subprocess.Popen(
        [str(trackset), "run", "--settings", str(path)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while not ready(completed(root)):
            assert process.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline, "the run never got to the kill point"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return completed(root)


def resume_and_compare(root: Path, before: dict[str, set[str]], baseline: dict[str, str], **extra) -> None:
    """A second run recomputes, per stage, exactly what was unfinished, and ends with the clean bytes."""
    summary = build_dataset(overrides=overrides(root, **extra))
    assert not summary.failures
    everyone = {vid(i) for i in range(NUM_VIDEOS)}
    for stage in STAGES:
        assert done_ids(summary, stage) == everyone - before[stage], stage
    assert temporaries(root / "work", root / "dataset") == []
    assert digests(root / "dataset") == baseline


def test_sigkill_of_the_flow_process_then_resume_recomputes_only_unfinished_videos(corpus, baseline, tmp_path):
    root = fresh(corpus, tmp_path)
    # One worker and a tracks stage that takes ~1 s per video: the kill lands inside it.
    slow = overrides(root, cluster={"cpu_workers": 1}, synthetic={"tracks_3d": {"cpu_s_per_frame": 0.08}})
    before = kill_when(root, tmp_path, slow, lambda done: len(done["tracks_3d"]) >= 2)
    assert 2 <= len(before["tracks_3d"]) < NUM_VIDEOS, before  # killed mid-stage
    assert before["depth_camera"] == {vid(i) for i in range(NUM_VIDEOS)}
    assert before["h5_build"] == set()
    resume_and_compare(root, before, baseline)


def test_sigkill_mid_wave_then_resume_continues_where_it_stopped(corpus, baseline, tmp_path):
    """Waves of 2: killed once the first wave has landed and the second is on its GPU stages."""
    root = fresh(corpus, tmp_path)
    waves = {"wave_size": 2}
    slow = overrides(root, cluster={"cpu_workers": 1}, run=waves, synthetic={"tracks_3d": {"cpu_s_per_frame": 0.08}})
    before = kill_when(root, tmp_path, slow, lambda done: len(done["h5_build"]) >= 2 and len(done["tracks_3d"]) >= 3)
    assert before["h5_build"] == {vid(0), vid(1)}, before  # the first wave landed
    assert len(before["tracks_3d"]) < NUM_VIDEOS and len(before["depth_camera"]) < NUM_VIDEOS, before
    resume_and_compare(root, before, baseline, run=waves)


# -- writes that fail half-way ---------------------------------------------------------------

# video index -> what breaks, where
H5_MID_FILE, PARTIALS, DEPTH_NPZ, H5_ONCE = 1, 2, 3, 4


def disk_full(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def inject_write_faults(monkeypatch) -> dict[str, int]:
    """Break the writes of four videos; returns how often each fault fired."""
    fired = {"h5": 0, "partials": 0, "npz": 0, "h5_once": 0}

    real_small_write = h5_layout._SmallDatasetWriter.write

    def small_write(self, group, name, data):
        target = Path(group.file.filename).name  # the temporary file: ".<vid>.hdf5.<random>.tmp"
        if target.startswith(f".{vid(H5_MID_FILE)}.hdf5.") and name == "poses" and group.name.endswith("0001"):
            fired["h5"] += 1  # video and depth are written, the window groups half-way
            raise disk_full(group.file.filename)
        if target.startswith(f".{vid(H5_ONCE)}.hdf5.") and fired["h5_once"] == 0:
            fired["h5_once"] += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO), group.file.filename)
        return real_small_write(self, group, name, data)

    real_write_text_atomic = statistics_module.write_text_atomic

    def write_text_atomic(target: Path, text: str) -> None:
        if Path(target).name == f"{vid(PARTIALS)}.json":
            fired["partials"] += 1
            from trackset.formats.layout import atomic_path

            with atomic_path(Path(target)) as tmp:
                tmp.write_text(text[: len(text) // 2])
                raise disk_full(tmp)
        real_write_text_atomic(target, text)

    real_savez = np.savez

    def savez(file, *args, **kwargs):
        name = Path(getattr(file, "name", "")).name
        if name.startswith(f".{vid(DEPTH_NPZ)}.npz."):
            fired["npz"] += 1
            buffer = io.BytesIO()
            real_savez(buffer, *args, **kwargs)
            file.write(buffer.getvalue()[: buffer.tell() // 2])
            raise disk_full(name)
        return real_savez(file, *args, **kwargs)

    monkeypatch.setattr(h5_layout._SmallDatasetWriter, "write", small_write)
    monkeypatch.setattr(statistics_module, "write_text_atomic", write_text_atomic)
    monkeypatch.setattr(intermediates.np, "savez", savez)
    return fired


@pytest.fixture(scope="module")
def write_faults(corpus, tmp_path_factory):
    """One run with four broken writes: CPU shards of 2, and on one worker GPU chunks of 3
    (``chunk_videos(6, 1, 8)``), so a failing video shares its shard or chunk."""
    root = fresh(corpus, tmp_path_factory.mktemp("write-faults"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        fired = inject_write_faults(monkeypatch)
        summary = build_dataset(overrides=overrides(root, cluster={"cpu_task_videos": 2, "cpu_workers": 1}))
    return root, summary, fired


def test_persistent_write_faults_fail_only_their_video_after_retries(write_faults):
    _, summary, fired = write_faults
    failures = {f.video_id: f for f in summary.failures}
    assert {k: f.stage for k, f in failures.items()} == {
        vid(H5_MID_FILE): "h5_build",
        vid(PARTIALS): "h5_build",
        vid(DEPTH_NPZ): "depth_camera",
    }
    for failure in failures.values():
        assert "No space left on device" in failure.reason and failure.kind == "error"
        assert failure.attempts == 2  # retried once in place (retries: 1), then reported
    # Each persistent fault fired on every attempt: twice in its shard (CPU) or chunk (GPU),
    # then twice on its own.
    assert fired["npz"] == 4 and fired["h5"] == 4 and fired["partials"] == 4


def test_nothing_half_written_looks_complete(write_faults):
    root, _, _ = write_faults
    dataset, work = root / "dataset", root / "work"
    assert temporaries(work, dataset) == []
    for index in (H5_MID_FILE, PARTIALS):
        assert not (dataset / f"{vid(index)}.hdf5").exists()  # no H5 that training would read
        assert not (dataset / "partials" / f"{vid(index)}.json").exists()
    assert not (work / "vipe" / f"{vid(DEPTH_NPZ)}.npz").exists()
    assert not (work / "markers" / "depth_camera" / f"{vid(DEPTH_NPZ)}.json").exists()
    stats = yaml.safe_load((dataset / "normalization_stats.yaml").read_text())
    partials = [json.loads(p.read_text()) for p in (dataset / "partials").glob("*.json")]
    assert len(partials) == NUM_VIDEOS - 3
    assert stats["pose_num_samples"] == sum(p["moments"]["pose"]["count"] for p in partials)


def test_every_other_video_is_byte_identical_and_a_one_off_error_is_retried(write_faults, baseline):
    root, summary, fired = write_faults
    assert fired["h5_once"] == 1
    assert vid(H5_ONCE) in done_ids(summary, "h5_build")
    broken = {f"{vid(i)}.hdf5" for i in (H5_MID_FILE, PARTIALS, DEPTH_NPZ)}
    assert h5_digests(root / "dataset") == {k: v for k, v in baseline.items() if k.endswith(".hdf5") and k not in broken}


def test_after_the_disk_is_freed_a_rerun_recovers_the_clean_dataset(write_faults, baseline):
    root, summary, _ = write_faults
    again = build_dataset(overrides=overrides(root, cluster={"cpu_task_videos": 2}))
    assert not again.failures
    assert done_ids(again, "depth_camera") == {vid(DEPTH_NPZ)}
    assert done_ids(again, "h5_build") == {vid(i) for i in (H5_MID_FILE, PARTIALS, DEPTH_NPZ)}
    assert digests(root / "dataset") == baseline


# -- an out-of-memory storm ------------------------------------------------------------------

# Two 16 GiB fake GPUs. The two short videos profile at 2 + 0.5 + 8 x 0.25 = 4.5 GiB, so the
# plan is floor(0.9 x 16 / 4.5) = 3 workers per GPU. A 24-frame video holds 8.5 GiB with its
# model: two at once on one GPU do not fit, one alone does. The 64-frame video holds 18.5 GiB
# and fits nowhere, so it runs out of memory at 3, 2 and 1 workers per GPU.
STORM_COST = {"model_mb": 2048, "per_video_mb": 512, "per_frame_mb": 256, "gpu_s_per_frame": 0.05}
STORM_FRAMES = {"a_short": 8, "b_short": 8, "c_long": 24, "d_long": 24, "e_long": 24, "f_long": 24, "z_giant": 64}


def depth_rounds(flow_run_id) -> list[list[str]]:
    """Video ids of each round of the depth stage after profiling, from the task runs' tags
    (``workers-per-gpu-<k>``), largest ``k`` first."""
    runs = waves_task_runs(flow_run_id, "depth-camera-")
    by_size: dict[int, list[str]] = {}
    for run in runs:
        [tag] = [t for t in run.tags if t.startswith("workers-per-gpu-")]
        by_size.setdefault(int(tag.rsplit("-", 1)[1]), []).append(run.name.rsplit("-", 1)[1])
    return [sorted(by_size[k]) for k in sorted(by_size, reverse=True)]


def test_an_out_of_memory_storm_shrinks_lands_what_fits_and_quarantines_the_rest(tmp_path):
    from trackset.synthetic.corpus import encode_scene, video_seed
    from trackset.synthetic.scene import SceneSpec

    for index, (name, frames) in enumerate(STORM_FRAMES.items()):
        encode_scene(SceneSpec.from_seed(video_seed(SEED, index), frames, 10.0, W, H), tmp_path / "videos" / f"{name}.mp4")
    ids = {name: vid(i) for i, name in enumerate(STORM_FRAMES)}  # names sort in this order
    giant, longs = ids["z_giant"], {ids[n] for n in STORM_FRAMES if n.endswith("_long")}
    settings = overrides(
        tmp_path,
        cluster={"runner": "dask", "profiling_videos": 2, "fake_gpus": [{"memory_gb": 16}, {"memory_gb": 16}]},
        synthetic={"depth_camera": STORM_COST},
    )
    state = build_dataset(overrides=settings, return_state=True)
    summary = state.result()

    depth = summary.records("depth_camera")
    assert {r.video_id for r in depth} == set(ids.values()) - {giant}  # every video that fits alone
    [failure] = summary.failures
    assert (failure.video_id, failure.kind, failure.stage) == (giant, "quarantined", "depth_camera")
    assert "out of memory alone on a GPU" in failure.reason and "OutOfMemoryError" in failure.reason
    # 3 workers per GPU for the five videos after profiling, then 2 and 1 for what ran out of
    # memory: the giant, and any long video that met another on its GPU at 2 (timing decides).
    rounds = depth_rounds(state.state_details.flow_run_id)
    assert rounds[0] == sorted(longs | {giant}) and len(rounds) == 3
    assert giant in rounds[1] and giant in rounds[2] and set(rounds[2]) <= longs | {giant}
    packing = {r.video_id: r.info["workers_per_gpu"] for r in summary.records("depth_camera")}
    assert packing[ids["a_short"]] == packing[ids["b_short"]] == 1  # profiled alone
    assert {packing[v] for v in longs} <= {1, 2, 3} and 3 in {packing[v] for v in longs}
    assert sorted(p.stem for p in (tmp_path / "dataset").glob("*.hdf5")) == sorted(set(ids.values()) - {giant})
    lines = [json.loads(line) for line in (tmp_path / "dataset" / "manifest.jsonl").read_text().splitlines()]
    assert [(q["video_id"], q["stage"]) for q in lines if q["kind"] == "quarantine"] == [(giant, "depth_camera")]

    again = build_dataset(overrides=settings)  # the giant stays out, with its reason, until something changes
    assert [(f.video_id, f.kind) for f in again.failures] == [(giant, "quarantined")]
    assert again.videos_pending == 0
