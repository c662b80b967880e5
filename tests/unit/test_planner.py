"""The wave planner, driven by an in-memory cluster that carries out its commands at once
(no Prefect, no Dask): lanes, look-ahead, every queued-boundary rule, out-of-memory, progress."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trackset.config.settings import Settings
from trackset.domain import StageOutcome, StageRecord, VideoFailure, VideoRef
from trackset.gpu.inventory import GpuInfo
from trackset.scheduling import commands as c
from trackset.scheduling.facts import Knobs, RunShape, stage_facts
from trackset.scheduling.outcomes import TaskFailure, TaskReport, reached
from trackset.scheduling.planner import WavePlanner
from trackset.scheduling.progress import Spent, StageProgress
from trackset.stages.registry import enabled_stages

GIB = 1024**3
STAGES = enabled_stages(Settings())  # preprocess, depth_camera, object_masks, tracks_3d, hands, h5_build
GPU_STAGES = ["depth_camera", "object_masks", "tracks_3d", "hands"]
# 6.84 GiB a worker, as tests/flows/test_dask_runner.py's STAGE_COST: 2 workers per 32 GiB GPU
# (max_workers_per_gpu 2), and two stages' workers side by side hold 13.7 GiB of its 28.8.
PEAK = int(6.84 * GIB)
KNOBS = Knobs(wave_size=3, profiling_videos=1, max_workers_per_gpu=2, gpu_task_videos=1, cpu_task_videos=4, retries=1)


def vid(index: int) -> str:
    return f"{index:05d}"


def videos(count: int) -> list[VideoRef]:
    return [VideoRef(vid(i), Path(f"clip_{i:03d}.mp4"), f"h{i}") for i in range(count)]


def gpu(index: int, total_gib: float = 32) -> GpuInfo:
    return GpuInfo(index, "FakeGPU", int(total_gib * GIB), 0, int(total_gib * GIB))


@dataclass
class FakeCluster:
    """Carries out the planner's commands at once, in memory, as the engine does on Dask.

    A task of one video raises for a failing video (``process-video``); a shard or a queued
    task returns a failure record instead (``process-shard``, ``process-after``). Outputs a
    task wrote are current afterwards, and a video run again comes back ``skipped``.

    Attributes:
        peaks: GiB a video holds on the GPU, by stage (a stage absent measures no peak).
        oom_at: (stage, video) -> the workers per GPU at and above which it runs out of memory.
        errors: (stage, video) -> its typed input error.
        task_faults: (stage, video) -> how many more tasks holding it fail as a whole.
        current: stage -> videos whose outputs are current before the run.
        no_gpu: stage -> videos that need no GPU (written in the flow).
        stored: stage -> a peak an earlier run stored.
        flow_write_fails: (stage, video) whose write in the flow fails (it needs no GPU).
        seconds: seconds a video takes, by stage (0 where absent).
        worker_names: per GPU, its workers' names, as the engine reads them (empty: unknown).
        runs_on: video -> the worker its GPU tasks run on (none where absent).
    """

    peaks: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GPU_STAGES, PEAK / GIB))
    oom_at: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)
    task_faults: dict[tuple[str, str], int] = field(default_factory=dict)
    current: dict[str, set[str]] = field(default_factory=dict)
    no_gpu: dict[str, set[str]] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    flow_write_fails: set[tuple[str, str]] = field(default_factory=set)
    seconds: dict[str, float] = field(default_factory=dict)
    gpus: tuple[GpuInfo, ...] = (gpu(0), gpu(1))
    slots_per_gpu: int = 2
    worker_names: tuple[tuple[str, ...], ...] = ()
    runs_on: dict[str, str] = field(default_factory=dict)
    fail_on: type | None = None  # a command type whose execution raises
    commands: list[c.Command] = field(default_factory=list)
    ran: list[tuple[str, str, int]] = field(default_factory=list)  # (stage, video, workers per GPU) of each run
    published: dict[str, list[int]] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)
    closed: dict[str, list[StageOutcome]] = field(default_factory=dict)
    rounds: dict[int, list[TaskReport]] = field(default_factory=dict)
    reporting: dict[tuple[int, ...], list[TaskReport]] = field(default_factory=dict)

    def execute(self, command: c.Command):
        self.commands.append(command)
        if self.fail_on is not None and isinstance(command, self.fail_on):
            raise RuntimeError("the cluster went away")
        match command:
            case c.Check(stage, given):
                done = self.current.get(stage, set())
                others = [v.video_id for v in given if v.video_id not in done]
                gpu_work = {i for i in others if stage in GPU_STAGES and i not in self.no_gpu.get(stage, set())}
                return c.Checked(frozenset(done & {v.video_id for v in given}), frozenset(), frozenset(gpu_work))
            case c.WriteHere(stage, given):
                outcome = StageOutcome(stage)
                for video in given:
                    if (stage, video.video_id) in self.flow_write_fails:  # a full disk in the flow: left out
                        continue
                    outcome.add(self._run(stage, video, 0))
                return outcome
            case c.Submit(round_, stage, given, per_task, workers):
                chunks = [list(given[i : i + per_task]) for i in range(0, len(given), per_task)]
                self.rounds[round_] = [self._task(stage, chunk, workers or 1, single=per_task == 1) for chunk in chunks]
            case c.SubmitAfter(round_, stage, upstream, ids, workers):
                tasks = []
                for task in (t for r in upstream for t in self.rounds[r]):
                    chosen = [v for v in task.videos if v.video_id in ids]
                    if chosen and task.results is None:
                        tasks.append(TaskReport(tuple(chosen), failure=TaskFailure("NotReady", ran=False), queued=True))
                    elif chosen:
                        ready = reached(chosen, task.results)
                        report = self._task(stage, ready, workers, single=False)
                        tasks.append(TaskReport(tuple(chosen), report.results, report.failure, queued=True))
                self.rounds[round_] = tasks
            case c.NextReport(rounds):
                pending = self.reporting.setdefault(rounds, [t for r in rounds for t in self.rounds[r]])
                if pending:
                    return pending.pop(0)
                del self.reporting[rounds]
            case c.Profile(stage, given):
                return tuple(self._task(stage, [video], 1, single=True) for video in given)
            case c.ReadGpus(stage, measure):
                if not measure:
                    return c.GpuView(self.slots_per_gpu)
                return c.GpuView(self.slots_per_gpu, self.gpus, workers=self.worker_names)
            case c.LoadProfile(stage):
                return self.stored.get(stage)
            case c.Publish(stage, done):
                self.published.setdefault(stage, []).append(done)
            case c.Release(stage):
                self.released.append(stage)
            case c.CloseWave(stage, outcome):
                self.closed.setdefault(stage, []).append(outcome)
        return None

    def _task(self, stage: str, chunk: list[VideoRef], workers: int, *, single: bool) -> TaskReport:
        for video in chunk:
            key = (stage, video.video_id)
            if self.task_faults.get(key, 0) > 0:
                self.task_faults[key] -= 1
                return TaskReport(tuple(chunk), failure=TaskFailure("OSError: disk full", "disk full"))
        results = [self._run(stage, video, workers) for video in chunk]
        if single and results and isinstance(results[0], VideoFailure):  # process-video raises
            failure = results[0]
            oom = failure.kind == "out_of_memory"
            return TaskReport(tuple(chunk), failure=TaskFailure(failure.reason, out_of_memory=oom, typed=not oom))
        return TaskReport(tuple(chunk), tuple(results))

    def _run(self, stage: str, video: VideoRef, workers: int) -> StageRecord | VideoFailure:
        key = (stage, video.video_id)
        self.ran.append((stage, video.video_id, workers))
        if key in self.errors:
            return VideoFailure(video.video_id, stage, self.errors[key])
        if workers >= self.oom_at.get(key, 10**6):
            return VideoFailure(video.video_id, stage, f"OutOfMemoryError at {workers}", "out_of_memory")
        if video.video_id in self.current.setdefault(stage, set()):
            return StageRecord(video.video_id, stage, "skipped")
        self.current[stage].add(video.video_id)
        peak = self.peaks.get(stage)
        seconds = self.seconds.get(stage, 0.0)
        worker = self.runs_on.get(video.video_id, "") if workers else ""
        peak_bytes = int(peak * GIB) if peak else None
        return StageRecord(video.video_id, stage, "done", seconds, peak_bytes=peak_bytes, worker=worker)

    # -- what the planner did, read back ---------------------------------------------------

    def of(self, kind: type) -> list:
        return [command for command in self.commands if isinstance(command, kind)]

    def logged(self) -> list[str]:
        return [command.message for command in self.of(c.Log)]

    def outcome(self, stage: str) -> tuple[dict[str, str], dict[str, str]]:
        """Every video's status in ``stage`` over the run, and its failures' kinds."""
        records = {r.video_id: r.status for o in self.closed.get(stage, []) for r in o.records}
        failures = {f.video_id: f.kind for o in self.closed.get(stage, []) for f in o.failures}
        return records, failures


def unprompted(count: int) -> dict[str, set[str]]:
    """Clips without a prompt: their object masks need no GPU (written in the flow)."""
    return {"object_masks": {vid(i) for i in range(count)}}


def plan(cluster: FakeCluster, count: int, knobs: Knobs = KNOBS, shape: RunShape | None = None) -> FakeCluster:
    planner = WavePlanner(videos(count), stage_facts(STAGES, Settings()), knobs, shape or RunShape(cpu_slots=2))
    c.drive(planner.run(), cluster.execute)
    return cluster


def index_of(cluster: FakeCluster, predicate) -> int:
    return next(i for i, command in enumerate(cluster.commands) if predicate(command))


def submits(cluster: FakeCluster, stage: str, kind: type = c.Submit) -> list:
    return [command for command in cluster.of(kind) if command.stage == stage]


# -- every video once, in waves, with the lanes beside the GPU stages ------------------------------


def test_every_stage_sees_every_video_once_and_each_wave_lands_before_the_next_ends():
    cluster = plan(FakeCluster(), 6)
    for stage in STAGES:
        records, failures = cluster.outcome(stage)
        assert sorted(records) == [vid(i) for i in range(6)] and not failures, stage
        assert set(records.values()) == {"done"}, stage
        assert len(cluster.closed[stage]) == 2, stage  # one close per wave
    # Wave 2 is preprocessed before wave 1's depth starts; wave 1's H5 is collected after wave 2's hands.
    pre_2 = index_of(
        cluster, lambda x: isinstance(x, c.Submit) and x.stage == "preprocess" and x.videos[0].video_id == vid(3)
    )
    depth_1 = index_of(cluster, lambda x: isinstance(x, (c.Submit, c.Profile)) and x.stage == "depth_camera")
    assert pre_2 < depth_1
    freed = [[v.video_id for v in x.videos] for x in cluster.of(c.FreeIntermediates)]
    assert freed == [[vid(0), vid(1), vid(2)], [vid(3), vid(4), vid(5)]]
    # Wave 1's H5 files are built beside wave 2's GPU stages, and land before wave 2's start.
    h5 = [cluster.commands.index(x) for x in submits(cluster, "h5_build")]
    depth_closed = [
        i for i, x in enumerate(cluster.commands) if isinstance(x, c.CloseWave) and x.stage == "depth_camera"
    ]
    first_free = index_of(cluster, lambda x: isinstance(x, c.FreeIntermediates))
    assert h5[0] < depth_closed[1] and first_free < h5[1]


def test_rounds_go_in_chunks_that_leave_every_slot_two_tasks_and_end_in_smaller_ones():
    knobs = Knobs(wave_size=100, profiling_videos=2, max_workers_per_gpu=2, gpu_task_videos=10, cpu_task_videos=4)
    cluster = plan(FakeCluster(), 42, knobs)
    # 40 videos after profiling on 2 GPUs x 2 workers: 40 // 8 = 5 per task, and the last
    # 4 slots x 5 videos in tasks of 2; preprocess 42 // 4 -> 4 per shard.
    depth = submits(cluster, "depth_camera")
    assert [(len(x.videos), x.per_task, x.workers_per_gpu) for x in depth] == [(20, 5, 2), (20, 2, 2)]
    assert [v.video_id for x in depth for v in x.videos] == [vid(i) for i in range(2, 42)]
    [pre] = submits(cluster, "preprocess")
    assert (pre.per_task, pre.workers_per_gpu) == (4, None)


def test_a_stage_queued_behind_a_round_in_parts_follows_its_tasks_in_order():
    knobs = Knobs(wave_size=21, profiling_videos=1, max_workers_per_gpu=2, gpu_task_videos=10)
    cluster = plan(FakeCluster(), 42, knobs)
    # Wave 2's depth, queued behind wave 1's hands: 21 // 8 = 2 per task, the last 8 alone.
    depth = [x for x in submits(cluster, "depth_camera") if x.videos[0].video_id >= vid(21)]
    assert [(len(x.videos), x.per_task) for x in depth] == [(12, 2), (9, 1)]
    [masks] = [x for x in cluster.of(c.SubmitAfter) if x.stage == "object_masks"]
    assert masks.upstream == tuple(x.round for x in depth)


def test_videos_already_current_are_skipped_and_not_run():
    cluster = plan(FakeCluster(current={"depth_camera": {vid(1)}}), 3)
    records, _ = cluster.outcome("depth_camera")
    assert records == {vid(0): "done", vid(1): "skipped", vid(2): "done"}
    assert ("depth_camera", vid(1)) not in {(s, v) for s, v, _ in cluster.ran}


def test_on_threads_nothing_is_sized_and_out_of_memory_is_quarantined_at_once():
    cluster = FakeCluster(oom_at={("hands", vid(1)): 1})
    plan(cluster, 3, shape=RunShape(threads=True, cpu_slots=2))
    assert not cluster.of(c.ReadGpus) and not cluster.of(c.Profile) and not cluster.of(c.SubmitAfter)
    assert all(x.workers_per_gpu is None for x in cluster.of(c.Submit))
    _, failures = cluster.outcome("hands")
    assert failures == {vid(1): "quarantined"}
    [packed] = [x for x in cluster.of(c.Packed) if x.stage == "hands"]
    assert packed.result.quarantined[0].reason.startswith("out of memory on a cluster trackset cannot resize")


# -- profiles, stored peaks, look-ahead ----------------------------------------------------------


def test_the_first_wave_profiles_and_later_waves_queue_each_stage_behind_the_one_before():
    cluster = plan(FakeCluster(no_gpu={"object_masks": {vid(i) for i in range(6)}}), 6)
    assert [x.stage for x in cluster.of(c.Profile)] == ["depth_camera", "tracks_3d", "hands"]  # wave 1 only
    assert [(x.stage, x.peak_bytes) for x in cluster.of(c.SaveProfile)] == [
        ("depth_camera", int(6.84 * GIB)),
        ("tracks_3d", int(6.84 * GIB)),
        ("hands", int(6.84 * GIB)),
    ]
    # Wave 1's hands queue wave 2's depth: a round of its own, submitted before wave 2 starts.
    assert "depth_camera: 3 videos queued behind hands's tasks (2 workers per GPU)" in cluster.logged()
    # On wave 2 tracks wait on depth's tasks and hands on tracks', task by task.
    after = cluster.of(c.SubmitAfter)
    assert [(x.stage, sorted(x.videos), x.workers_per_gpu) for x in after] == [
        ("tracks_3d", [vid(3), vid(4), vid(5)], 2),
        ("hands", [vid(3), vid(4), vid(5)], 2),
    ]
    tracks_after = after[0]
    depth_rounds = {x.round for x in submits(cluster, "depth_camera") if x.videos[0].video_id == vid(3)}
    assert set(tracks_after.upstream) == depth_rounds
    # The masks (no GPU) were written in the flow before tracks were queued past them.
    write = index_of(cluster, lambda x: isinstance(x, c.WriteHere) and x.videos[0].video_id == vid(3))
    assert write < cluster.commands.index(tracks_after)
    # No stage ran a video twice.
    assert len(cluster.ran) == len(set(cluster.ran))


def test_a_stage_that_does_not_fit_beside_the_one_before_waits_for_the_gpus():
    """24 GiB of tracks (1 worker per GPU) beside 2 workers of 6.84 GiB: 24 + 6.84 > 0.9 x 32."""
    peaks = {"depth_camera": 6.84, "tracks_3d": 24.0, "hands": 6.84}
    cluster = plan(FakeCluster(peaks=peaks, no_gpu=unprompted(6)), 6)
    assert "tracks_3d: waits for the GPUs as a whole: it does not fit beside depth_camera" in cluster.logged()
    assert "tracks_3d" not in {x.stage for x in cluster.of(c.SubmitAfter)}
    assert "depth_camera: 3 videos queued behind hands's tasks (2 workers per GPU)" in cluster.logged()


def test_the_next_stage_is_queued_at_fewer_workers_where_that_fits_beside_the_one_before():
    """Hands (2 workers of 6.84 GiB) beside one worker of 24 GiB tracks: 24 + 6.84 > 28.8, so
    hands are queued at one worker per GPU (24 on worker 0), and run the wave at that size."""
    peaks = {"depth_camera": 6.84, "tracks_3d": 24.0, "hands": 6.84}
    cluster = plan(FakeCluster(peaks=peaks, no_gpu=unprompted(6)), 6)
    message = "hands: 3 videos queued behind tracks_3d's tasks (1 workers per GPU, 1 fewer than its own to fit beside)"
    assert message in cluster.logged()
    [queued] = [x for x in cluster.of(c.SubmitAfter) if x.stage == "hands"]
    assert queued.workers_per_gpu == 1
    assert {w for s, v, w in cluster.ran if s == "hands" and v in {vid(3), vid(4), vid(5)}} == {1}


def test_a_stored_profile_is_used_from_the_first_wave_and_no_peak_means_no_second_profile():
    peaks = {"depth_camera": 6.84, "tracks_3d": 6.84}  # object masks and hands measure no peak
    cluster = plan(FakeCluster(peaks=peaks, stored={"depth_camera": int(10 * GIB)}), 6)
    assert [x.stage for x in cluster.of(c.Profile)] == ["object_masks", "tracks_3d", "hands"]
    first_depth = submits(cluster, "depth_camera")[0]
    assert first_depth.workers_per_gpu == 2 and len(first_depth.videos) == 3  # floor(28.8 / 10) = 2, no profiling
    assert "hands" not in {x.stage for x in cluster.of(c.SaveProfile)}


# -- the queued boundary ---------------------------------------------------------------------


def test_a_queued_task_skips_a_video_its_upstream_task_failed_and_the_video_goes_no_further():
    cluster = plan(FakeCluster(errors={("depth_camera", vid(4)): "unusable depth"}, no_gpu=unprompted(6)), 6)
    _, failures = cluster.outcome("depth_camera")
    assert failures == {vid(4): "error"}
    assert ("tracks_3d", vid(4)) not in {(s, v) for s, v, _ in cluster.ran}
    tracks, tracks_failures = cluster.outcome("tracks_3d")
    assert sorted(tracks) == [vid(i) for i in range(6) if i != 4] and not tracks_failures


def test_a_queued_task_of_a_shard_runs_only_the_videos_its_upstream_task_finished():
    """One GPU, one worker: wave 2's depth goes in chunks of 2, and 00005 fails inside its
    chunk; tracks' queued task behind that chunk runs 00004 alone."""
    knobs = Knobs(wave_size=4, profiling_videos=1, max_workers_per_gpu=1, gpu_task_videos=2, retries=1)
    cluster = FakeCluster(errors={("depth_camera", vid(5)): "unusable depth"}, no_gpu=unprompted(8), gpus=(gpu(0),))
    plan(cluster, 8, knobs)
    [queued] = [x for x in cluster.of(c.SubmitAfter) if x.stage == "tracks_3d"]
    assert sorted(queued.videos) == [vid(4), vid(5), vid(6), vid(7)]
    tracks_ran = [v for s, v, _ in cluster.ran if s == "tracks_3d"]
    assert vid(4) in tracks_ran and vid(5) not in tracks_ran
    assert cluster.outcome("tracks_3d") == ({vid(i): "done" for i in range(8) if i != 5}, {})


def test_a_failed_queued_task_only_logs_and_its_videos_run_again_as_missed():
    cluster = FakeCluster(task_faults={("tracks_3d", vid(4)): 1}, no_gpu=unprompted(6))  # its queued task fails
    plan(cluster, 6)
    assert "tracks_3d: a task of 1 videos failed (disk full); those that reached it run again" in cluster.logged()
    records, failures = cluster.outcome("tracks_3d")
    assert records[vid(4)] == "done" and not failures
    missed = [x for x in submits(cluster, "tracks_3d") if [v.video_id for v in x.videos] == [vid(4)]]
    assert len(missed) == 1 and missed[0].workers_per_gpu == 2


def test_a_queued_round_whose_videos_all_failed_upstream_is_collected_apart_and_runs_nothing():
    errors = {("depth_camera", vid(i)): "unusable depth" for i in (3, 4, 5)}
    cluster = plan(FakeCluster(errors=errors, no_gpu=unprompted(6)), 6)
    # Wave 2's depth failed every video: tracks' queued tasks never started, and tracks ran nothing.
    [queued] = [x for x in cluster.of(c.SubmitAfter) if x.stage == "tracks_3d"]
    collected = [x for x in cluster.of(c.NextReport) if x.rounds == (queued.round,)]
    assert collected  # collected on their own rounds
    assert ("tracks_3d", vid(3)) not in {(s, v) for s, v, _ in cluster.ran}
    reads = [x.stage for x in cluster.of(c.ReadGpus)]
    assert reads.count("tracks_3d") == 1  # wave 1 only: nothing to pack on wave 2
    assert cluster.outcome("tracks_3d")[0].keys() == {vid(0), vid(1), vid(2)}


def test_what_ran_out_of_memory_upstream_is_skipped_by_the_queued_task_and_run_as_missed_after_the_shrink():
    """As tests/flows/test_dask_runner.py on Dask: 00004 runs out of memory in depth at 2
    workers per GPU; tracks' queued task for it does not start; depth waits for tracks'
    queued round and frees tracks' models before its round at 1 worker; tracks then runs
    00004 in a task of its own."""
    cluster = plan(FakeCluster(oom_at={("depth_camera", vid(4)): 2}, no_gpu=unprompted(6)), 6)
    depth = {v: w for s, v, w in cluster.ran if s == "depth_camera" and v == vid(4)}
    assert depth == {vid(4): 1}
    assert "depth_camera" in {x.stage for x in cluster.of(c.ForgetProfile)}  # it under-estimated
    [queued] = [x for x in cluster.of(c.SubmitAfter) if x.stage == "tracks_3d"]
    settle = index_of(cluster, lambda x: isinstance(x, c.Settle))
    assert cluster.of(c.Settle)[0].rounds == (queued.round,)
    assert cluster.commands[settle + 1] == c.Release("tracks_3d")
    shrunk = index_of(
        cluster, lambda x: isinstance(x, c.Submit) and x.stage == "depth_camera" and x.workers_per_gpu == 1
    )
    assert settle < shrunk
    missed = [x for x in submits(cluster, "tracks_3d") if [v.video_id for v in x.videos] == [vid(4)]]
    assert len(missed) == 1 and cluster.commands.index(missed[0]) > shrunk
    for stage in STAGES:
        records, failures = cluster.outcome(stage)
        assert sorted(records) == [vid(i) for i in range(6)] and not failures, stage


# -- out of memory ---------------------------------------------------------------------------


def test_out_of_memory_shrinks_then_quarantines_and_the_next_wave_profiles_again():
    cluster = FakeCluster(oom_at={("hands", vid(1)): 2, ("hands", vid(2)): 1})
    plan(cluster, 6)
    runs = [(v, w) for s, v, w in cluster.ran if s == "hands"]
    assert runs[:5] == [(vid(0), 1), (vid(1), 2), (vid(2), 2), (vid(1), 1), (vid(2), 1)]
    _, failures = cluster.outcome("hands")
    assert failures == {vid(2): "quarantined"}
    [packed] = [x for x in cluster.of(c.Packed) if x.stage == "hands" and x.result.quarantined]
    assert packed.result.quarantined[0].reason.startswith("out of memory alone on a GPU: OutOfMemoryError at 1")
    assert [x.stage for x in cluster.of(c.Profile)].count("hands") == 2  # the shrink forgot its peak


def test_a_failed_shard_runs_again_one_video_per_task_and_only_the_faulty_video_fails():
    cluster = FakeCluster(task_faults={("preprocess", vid(1)): 3})  # fails its shard, then alone twice
    knobs = Knobs(wave_size=10, cpu_task_videos=4, profiling_videos=1, max_workers_per_gpu=2, retries=1)
    plan(cluster, 4, knobs, RunShape(cpu_slots=1))
    pre = submits(cluster, "preprocess")
    assert [(len(x.videos), x.per_task) for x in pre] == [(4, 2), (2, 1)]  # the failed shard of 2, one per task
    _, failures = cluster.outcome("preprocess")
    assert failures == {vid(1): "error"}
    [failure] = [f for o in cluster.closed["preprocess"] for f in o.failures]
    assert failure.attempts == 2  # retries (1) + 1
    assert "preprocess: a shard of 2 videos failed (disk full); rerunning them one per task" in cluster.logged()
    assert cluster.outcome("preprocess")[0][vid(0)] == "done"  # run twice, finished once: done, not skipped


def test_a_video_whose_write_fails_in_the_flow_goes_to_a_task():
    cluster = FakeCluster(no_gpu={"object_masks": {vid(0), vid(1)}}, flow_write_fails={("object_masks", vid(1))})
    plan(cluster, 2)
    writes = [[v.video_id for v in x.videos] for x in cluster.of(c.WriteHere) if x.stage == "object_masks"]
    assert writes[-1] == [vid(0), vid(1)]  # (the first: 00001 alone, written early behind depth)
    tasked = [
        v.video_id
        for x in submits(cluster, "object_masks", c.Profile) + submits(cluster, "object_masks")
        for v in x.videos
    ]
    assert tasked == [vid(1)]


def test_an_error_while_a_gpu_stage_runs_still_frees_its_models():
    cluster = FakeCluster(fail_on=c.Packed)
    with pytest.raises(RuntimeError, match="the cluster went away"):
        plan(cluster, 3)
    assert cluster.commands[-1] == c.Release("depth_camera")


# -- progress --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "trouble",
    [
        {},
        {"oom_at": {("hands", vid(1)): 2, ("hands", vid(2)): 1, ("depth_camera", vid(4)): 2}},
        {"task_faults": {("preprocess", vid(1)): 1, ("tracks_3d", vid(4)): 1}},
    ],
    ids=["clean", "out-of-memory", "task-faults"],
)
def test_progress_never_steps_back_and_ends_at_every_video(trouble):
    cluster = plan(FakeCluster(**trouble), 6)
    for stage in STAGES:
        shown = cluster.published[stage]
        assert shown == sorted(shown), (stage, shown)
        assert shown[-1] == 6, stage


def test_a_gpu_video_notes_its_gpu_seconds_and_each_publish_says_what_the_stage_spent():
    seconds = {"preprocess": 2.0, "depth_camera": 8.0, "object_masks": 1.0, "h5_build": 1.0}
    cluster = plan(FakeCluster(seconds=seconds, no_gpu=unprompted(6)), 6)
    depth = {r.video_id: r.info for o in cluster.closed["depth_camera"] for r in o.records}
    # The profiling video ran alone on its GPU; the others on 2 workers per GPU: half of one each.
    assert {video: info["gpu_seconds"] for video, info in depth.items()} == {vid(0): 8.0} | {
        vid(i): 4.0 for i in range(1, 6)
    }
    cpu = [r for stage in ("preprocess", "object_masks", "h5_build") for o in cluster.closed[stage] for r in o.records]
    assert len(cpu) == 18 and not any("gpu_seconds" in r.info for r in cpu)  # CPU tasks, and written in the flow
    last = {command.stage: command for command in cluster.of(c.Publish)}
    # The profiling video's cost is noted apart too: the estimator does not take it for the sized rounds'.
    assert last["depth_camera"].spent == Spent(6, 8.0 + 5 * 4.0, 8.0 + 5 * 4.0, 1, 8.0, 8.0)
    assert last["preprocess"].spent == Spent(6, 12.0, 0.0)
    assert last["object_masks"].spent == Spent(6, 6.0, 0.0)  # no GPU: their seconds in the flow
    spent = [command.spent.videos for command in cluster.of(c.Publish) if command.stage == "depth_camera"]
    assert spent == sorted(spent) and spent[0] < 6


def test_a_video_holds_the_share_of_the_gpu_it_ran_on_when_gpus_differ_in_size():
    # 8 and 32 GiB at a peak of 6.84 GiB: floor(0.9 x 8 / 6.84) = 1 worker, floor(0.9 x 32 / 6.84) = 4, at most 2.
    names = (("small-w0", "small-w1"), ("big-w0", "big-w1"))
    on = {vid(i): names[i % 2][0] for i in range(6)}
    cluster = FakeCluster(gpus=(gpu(0, 8), gpu(1, 32)), worker_names=names, runs_on=on, seconds={"depth_camera": 8.0})
    plan(cluster, 6)
    depth = {r.video_id: r.info["gpu_seconds"] for o in cluster.closed["depth_camera"] for r in o.records}
    profiled = {vid(0)}  # alone on its GPU
    assert depth == {i: 8.0 if i in profiled or on[i].startswith("small") else 4.0 for i in on}
    # Its GPU's count is what the packing notes too.
    noted = {r.video_id: r.info["workers_per_gpu"] for o in cluster.closed["depth_camera"] for r in o.records}
    assert noted == {i: 1 if i in profiled or on[i].startswith("small") else 2 for i in on}


def test_stage_progress_counts_a_video_once_and_a_wave_whole():
    progress = StageProgress(total=5)
    assert progress.finished(["00000", "00001"]) and not progress.finished(["00001"])
    progress.close_wave(3)  # a video an earlier stage dropped counts too
    assert progress.done == 3
    progress.finished(["00003"])
    with pytest.raises(ValueError, match="a wave of 0 videos cannot have 1 finished"):
        progress.close_wave(0)


def test_rounds_have_ids_of_their_own():
    cluster = plan(FakeCluster(), 6)
    ids = [x.round for x in cluster.of(c.Submit)] + [x.round for x in cluster.of(c.SubmitAfter)]
    assert len(ids) == len(set(ids)) and not list(itertools.chain(cluster.reporting.values()))


def test_the_gpu_work_of_this_wave_and_the_next_is_announced_before_each_wave_and_none_after_the_last():
    """A SLURM run holds as many jobs as the announced GPU work can use: the first wave's and the
    second's while the first is preprocessed, then each wave's and the next one's as it reaches
    the GPU stages, and none once the last wave is through them, before its H5 files."""
    cluster = plan(FakeCluster(), 7)  # waves of 3, 3, 1
    assert [command.videos for command in cluster.of(c.GpuWork)] == [6, 6, 4, 1, 0]
    first_gpu = index_of(cluster, lambda x: isinstance(x, c.Submit) and x.stage in GPU_STAGES)
    first_work = index_of(cluster, lambda x: isinstance(x, c.GpuWork))
    assert first_work < first_gpu
    none_left = index_of(cluster, lambda x: isinstance(x, c.GpuWork) and x.videos == 0)
    gpu_submits = [
        i for i, x in enumerate(cluster.commands) if isinstance(x, c.Submit | c.SubmitAfter) and x.stage in GPU_STAGES
    ]
    last_h5 = max(cluster.commands.index(x) for x in submits(cluster, "h5_build"))
    assert max(gpu_submits) < none_left < last_h5
