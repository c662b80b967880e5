"""Simulator: the real wave planner against simulated GPUs and a clock, at the scale users have.

    .venv/bin/python bench/simulate.py --table                       # 8 and 64 GPUs, 50,000 videos
    .venv/bin/python bench/simulate.py --gpus 8 --videos 50000 --wave-size 500
    .venv/bin/python bench/simulate.py --small /tmp/trackset-bench-waves   # bench/waves.py's corpus

The planner (:mod:`trackset.scheduling.planner`) decides every round, chunk, queue and
wave as it does in a run; here its commands are carried out by a discrete-event model of
the run's cluster instead of Prefect and Dask, which this script never imports:

- **GPUs**: ``--gpus`` of ``--gpu-gib`` each, ``cluster.max_workers_per_gpu`` worker
  processes per GPU; a task asking for ``k`` workers per GPU runs on the first ``k`` of any
  GPU, one task per worker, earliest submitted first (Dask's order). A video's GPU phase
  holds its GPU alone (phases of the GPU's workers queue, as on a saturated GPU), its CPU
  phase does not. A worker holds one GPU stage's model: a task of another stage loads its
  model first, and a released stage's models are gone.
- **CPU workers** run preprocessing and the H5 build, a video at a time.
- **The flow** is one process: every command costs it time (a submission per task, a
  collection per task, a release or a reading of the GPUs per call, ...), during which the
  workers go on. A task costs ``task_start_s`` on its worker before it runs (Prefect's
  task start on Dask).
- **Memory**: each video holds a peak on the GPU drawn from its stage's range; a video whose
  peak times the round's workers per GPU exceeds the GPU runs out of memory (and the
  planner shrinks, then quarantines, as in a run).

Stage times and sizes (:data:`STAGES`): ViPE 40-50 s per ~190-frame video, ~13 GB to load
plus 1-4 GB per video, ~22 s to load, on a 31.3 GB RTX 5090 (the seed reports); the other
GPU stages' peaks are the stage table's priors (SAM3 8-10 GB, TAPIP3D 8 GB, WiLoR 6 GB), and
their times, which no seed measured, are assumptions that bring the GPU work to the
~80 s per video BENCHMARKS.md's arithmetic used; preprocessing ~3 s of CPU per video
(same), the H5 build 1.24 s (the script pipeline's sequential figure, seed report);
intermediates per video as README's disk table (frames 112 MB, depth 75 MB, tracks 6 MB,
hands 0.35 MB), freed once a wave's H5 files land (``keep_intermediates: none``).

Measured per run: GPU idle share (the share of GPU-seconds, from the first task to the
last, in which a GPU has no GPU-stage task running; and, as ``bench/waves.py`` counts it,
the share of time no GPU anywhere has one), the time to the first H5 file, the peak bytes
of intermediates, the orchestration per video (task runs, and the engine's calls to
Dask or the Prefect API), and the run's ETA (:mod:`trackset.scheduling.eta`, fed each
``Publish`` as the engine feeds it) at 10, 30 and 50 % done against the time actually
left: the engine's, and one whose rates are taken from the run's start. ``--small`` sets
the model to ``bench/waves.py``'s corpus and machine from a measured run of it (its run
report's seconds per stage) and compares.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import platform
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from trackset.config.settings import Settings
from trackset.domain import StageOutcome, StageRecord, VideoFailure, VideoRef
from trackset.gpu.inventory import GpuInfo
from trackset.scheduling import commands as c
from trackset.scheduling.eta import Estimator
from trackset.scheduling.facts import Knobs, RunShape, stage_facts
from trackset.scheduling.outcomes import TaskFailure, TaskReport, reached
from trackset.scheduling.planner import WavePlanner
from trackset.stages.registry import enabled_stages

GB = 1024**3  # the seeds report GPU memory as torch does: GiB, written "GB"
GIB = 1024**3
MB = 10**6


@dataclass(frozen=True)
class StageModel:
    """How one stage behaves per ~190-frame video on the simulated cluster.

    Attributes:
        seconds: range of a video's time on one worker (GPU stages: alone on its GPU).
        gpu_share: the part of that time the video holds the GPU (the rest is CPU work).
        peak_gb: range of the GPU memory a worker holds on the video, model included.
        load_s: loading the model on a worker.
        output_bytes: intermediates the stage leaves per video.
    """

    seconds: tuple[float, float]
    gpu_share: float = 0.0
    peak_gb: tuple[float, float] | None = None
    load_s: float = 0.0
    output_bytes: int = 0


STAGES: dict[str, StageModel] = {
    "preprocess": StageModel((3.0, 3.0), output_bytes=112 * MB),
    # ViPE: 40-50 s per video, ~13 GB to load + 1-4 GB per video, ~22 s to load (seed reports).
    "depth_camera": StageModel((40.0, 50.0), 0.9, (14.0, 17.0), 22.0, 75 * MB),
    # SAM3 "~8-10GB per worker" (y2r config.yaml); time assumed.
    "object_masks": StageModel((8.0, 12.0), 0.9, (8.0, 10.0), 10.0, 0),
    # TAPIP3D 8 GB (stage table prior); time assumed.
    "tracks_3d": StageModel((12.0, 18.0), 0.9, (6.8, 8.0), 10.0, 6 * MB),
    # WiLoR 6 GB (stage table prior); time assumed.
    "hands": StageModel((8.0, 12.0), 0.9, (5.1, 6.0), 10.0, 350_000),
    # The script pipeline's H5 stage, sequential: 1.24 s per video (seed report).
    "h5_build": StageModel((1.24, 1.24)),
}


@dataclass(frozen=True)
class Costs:
    """What orchestration costs, in seconds (the flow's per command, a worker's per task).

    The defaults are for a cluster: Prefect's task start on a Dask worker 0.24-0.39 s
    (PLATFORM-NOTES.md), an API update ~26 ms and ``is_done`` ~0.2 ms per video (measured
    at 50,000 videos, same notes); the rest are estimates of a round trip each.
    """

    task_start_s: float = 0.3
    submit_s: float = 0.01  # per task submitted
    report_s: float = 0.002  # per task collected
    check_s: float = 0.0002  # per video checked (is_done)
    write_here_s: float = 0.005  # per video written in the flow
    cluster_call_s: float = 0.2  # a Client.run over the workers: release, read the GPUs
    api_call_s: float = 0.026  # a progress update, an artifact
    subflow_s: float = 1.0  # starting the profile-memory subflow
    land_s: float = 0.001  # per video: report lines, freeing its intermediates


@dataclass
class Worker:
    gpu: int | None  # None: a CPU worker
    rank: int = 0
    loaded: str | None = None  # the GPU stage whose model it holds


@dataclass
class Task:
    id: int
    round: int
    stage: str
    videos: tuple[VideoRef, ...]
    workers_per_gpu: int | None  # None: a CPU task
    single: bool  # process-video: a failing video fails the task
    queued: bool = False
    upstream: int | None = None  # the task it waits on (process-after)
    upstream_report: TaskReport | None = None  # how that task ended
    report: TaskReport | None = None
    ended: float | None = None


class EtaPoint(NamedTuple):
    """The run's estimate at one time: seconds since it started, percent done, ETA (None:
    unknown, or only a lower bound while a stage's cost is unknown)."""

    elapsed_s: float
    percent: float
    eta_s: float | None


ETA_SHARES = (0.1, 0.3, 0.5)


def eta_at(points: list[EtaPoint], end_s: float, share: float) -> tuple[EtaPoint, float] | None:
    """The first estimate published once ``share`` of the work was done (its percent), and
    the time that was actually left then; None if none was.

    Examples:
        >>> eta_at([EtaPoint(10, 5.0, None), EtaPoint(30, 31.0, 80.0), EtaPoint(50, 52.0, 45.0)], 100, 0.3)
        (EtaPoint(elapsed_s=30, percent=31.0, eta_s=80.0), 70)
    """
    point = next((point for point in points if point.percent >= 100 * share), None)
    return None if point is None else (point, end_s - point.elapsed_s)


def eta_errors(
    points: list[EtaPoint], end_s: float, shares: tuple[float, ...] = ETA_SHARES
) -> dict[float, float | None]:
    """The ETA's error, (ETA - time left) / time left, at each share of the work done."""
    errors: dict[float, float | None] = {}
    for share in shares:
        found = eta_at(points, end_s, share)
        errors[share] = None
        if found is not None and found[0].eta_s is not None and found[1] > 0:
            errors[share] = found[0].eta_s / found[1] - 1
    return errors


@dataclass
class Metrics:
    videos: int
    gpus: int
    wave_size: int
    wall_s: float = 0.0
    first_h5_s: float | None = None
    span: tuple[float, float] = (0.0, 0.0)
    gpu_busy_s: list[float] = field(default_factory=list)  # per GPU: time with a GPU-stage task
    idle_parts_s: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mean per GPU: before its first task, between, after
    any_gpu_busy_s: float = 0.0  # time with a GPU-stage task on any GPU
    any_busy: list[tuple[float, float]] = field(default_factory=list)  # those stretches
    peak_bytes: int = 0
    task_runs: int = 0
    engine_calls: int = 0
    out_of_memory: int = 0
    landed: int = 0  # videos whose H5 file was built
    etas: dict[str, list[EtaPoint]] = field(default_factory=dict)  # by estimator: the run's estimate over time
    end_s: float = 0.0  # when the planner was done (the flow's last command)

    @property
    def idle_share(self) -> float:
        span = self.span[1] - self.span[0]
        return 1 - sum(self.gpu_busy_s) / (len(self.gpu_busy_s) * span) if span else 0.0

    @property
    def any_idle_share(self) -> float:
        span = self.span[1] - self.span[0]
        return 1 - self.any_gpu_busy_s / span if span else 0.0

    def row(self) -> dict[str, Any]:
        return {
            "gpus": self.gpus,
            "videos": self.videos,
            "wave": self.wave_size,
            "wall_h": self.wall_s / 3600,
            "first_h5_h": (self.first_h5_s or 0) / 3600,
            "idle": self.idle_share,
            "any_idle": self.any_idle_share,
            "idle_head_h": self.idle_parts_s[0] / 3600,
            "idle_between_h": self.idle_parts_s[1] / 3600,
            "idle_tail_h": self.idle_parts_s[2] / 3600,
            "peak_tb": self.peak_bytes / 1e12,
            "task_runs_per_video": self.task_runs / self.videos,
            "calls_per_video": self.engine_calls / self.videos,
            "out_of_memory": self.out_of_memory,
            **{
                f"eta_error_{name}_{round(100 * share)}": error
                for name, points in self.etas.items()
                for share, error in eta_errors(points, self.end_s).items()
            },
        }


class Intervals:
    """The union length of intervals added in any order (busy time)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, float]] = []

    def add(self, start: float, end: float) -> None:
        if end > start:
            self.items.append((start, end))

    def union(self) -> float:
        return sum(end - start for start, end in self.merged())

    def merged(self) -> list[tuple[float, float]]:
        """The intervals merged where they overlap, in order."""
        out: list[tuple[float, float]] = []
        for start, end in sorted(self.items):
            if out and start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((start, end))
        return out

    def idle_parts(self, first: float, last: float) -> tuple[float, float, float]:
        """Idle time within ``first``..``last``: before the first interval, between, after the last."""
        merged = self.merged()
        if not merged:
            return last - first, 0.0, 0.0
        between = sum(b[0] - a[1] for a, b in itertools.pairwise(merged))
        return merged[0][0] - first, between, last - merged[-1][1]


class SimulatedCluster:
    """Carries out the planner's commands on simulated workers and a clock (module docstring)."""

    def __init__(
        self,
        stages: dict[str, StageModel],
        gpus: int,
        gpu_gib: float,
        workers_per_gpu: int,
        cpu_workers: int,
        costs: Costs,
        seed: int = 0,
    ) -> None:
        self.stages = stages
        self.costs = costs
        self.gpu_bytes = int(gpu_gib * GIB)
        self.infos = tuple(GpuInfo(g, "SimulatedGPU", self.gpu_bytes, 0, self.gpu_bytes) for g in range(gpus))
        self.workers = [Worker(g, k) for g in range(gpus) for k in range(workers_per_gpu)]
        self.workers += [Worker(None) for _ in range(cpu_workers)]
        self.slots_per_gpu = workers_per_gpu
        self.gpu_free_at = [0.0] * gpus
        self.busy_gpu = [Intervals() for _ in range(gpus)]
        self.busy_any = Intervals()
        self.seed = seed
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self.tasks: dict[int, Task] = {}
        self.rounds: dict[int, list[int]] = {}
        self._ready_cpu: deque[int] = deque()
        self._ready_gpu: dict[int, deque[int]] = {}  # by workers per GPU
        self._waiting: dict[int, list[int]] = {}  # upstream task -> queued tasks behind it
        self._ended: dict[int, deque[int]] = {}  # by round: tasks ended and not yet reported, in order
        self._reported: dict[int, int] = {}  # by round: tasks reported
        self._idle: list[Worker] = list(self.workers)
        self.first_task: float | None = None
        self.last_task = 0.0
        self.first_h5: float | None = None
        self.bytes_held = 0
        self.peak_bytes = 0
        self._held: dict[str, int] = {}
        self.task_runs = 0
        self.engine_calls = 0
        self.out_of_memory = 0
        self.landed = 0
        self._published: dict[str, float] = {}
        self.estimators: dict[str, Estimator] = {}  # ETAs, fed as the engine feeds its own
        self.etas: dict[str, list[EtaPoint]] = {}

    # -- the clock -----------------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    def _step(self) -> None:
        when, _, action = heapq.heappop(self._events)
        self.now = max(self.now, when)
        action()

    def _spend(self, seconds: float) -> None:
        """The flow is busy for ``seconds``; the workers go on meanwhile."""
        until = self.now + seconds
        while self._events and self._events[0][0] <= until:
            self._step()
        self.now = until

    def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            if not self._events:
                raise RuntimeError("the simulation is stuck: nothing left to happen")
            self._step()

    # -- videos --------------------------------------------------------------------------------

    def _draw(self, stage: str, video: VideoRef, which: str, span: tuple[float, float]) -> float:
        rng = random.Random(f"{self.seed}:{stage}:{video.video_id}:{which}")
        return rng.uniform(*span)

    def seconds(self, stage: str, video: VideoRef) -> float:
        return self._draw(stage, video, "seconds", self.stages[stage].seconds)

    def peak_bytes_of(self, stage: str, video: VideoRef) -> int | None:
        span = self.stages[stage].peak_gb
        return int(self._draw(stage, video, "peak", span) * GB) if span else None

    # -- workers and tasks ---------------------------------------------------------------------

    def _submit(self, task: Task) -> None:
        self.tasks[task.id] = task
        self.rounds.setdefault(task.round, []).append(task.id)
        self.task_runs += 1
        if task.upstream is None or self.tasks[task.upstream].ended is not None:
            self._ready(task)
        else:
            self._waiting.setdefault(task.upstream, []).append(task.id)

    def _ready(self, task: Task) -> None:
        upstream = task.upstream_report = self.tasks[task.upstream].report if task.upstream is not None else None
        if upstream is not None and upstream.results is None:  # NotReady: never starts
            self._end(task, TaskReport(task.videos, failure=TaskFailure("NotReady", ran=False), queued=True))
            return
        if task.workers_per_gpu is None:
            self._ready_cpu.append(task.id)
        else:
            self._ready_gpu.setdefault(task.workers_per_gpu, deque()).append(task.id)
        self._dispatch()

    def _next_task_for(self, worker: Worker) -> int | None:
        if worker.gpu is None:
            return self._ready_cpu.popleft() if self._ready_cpu else None
        heads = [(queue[0], k) for k, queue in self._ready_gpu.items() if queue and worker.rank < k]
        if not heads:
            return None
        _, k = min(heads)
        return self._ready_gpu[k].popleft()

    def _dispatch(self) -> None:
        """Give ready tasks to idle workers, earliest submitted first (Dask's order)."""
        if not self._ready_cpu and not any(self._ready_gpu.values()):
            return
        for worker in list(self._idle):
            task_id = self._next_task_for(worker)
            if task_id is not None:
                self._idle.remove(worker)
                self._start(worker, self.tasks[task_id])

    def _start(self, worker: Worker, task: Task) -> None:
        began = self.now + self.costs.task_start_s
        self.first_task = began if self.first_task is None else min(self.first_task, began)
        upstream = task.upstream_report
        to_run = reached(task.videos, upstream.results or ()) if upstream is not None else list(task.videos)
        clock = began
        if worker.gpu is not None and to_run and worker.loaded != task.stage:
            worker.loaded = task.stage  # one GPU stage's model at a time
            clock += self.stages[task.stage].load_s
        self._at(clock, lambda: self._next_video(worker, task, deque(to_run), [], began))

    def _next_video(
        self, worker: Worker, task: Task, left: deque[VideoRef], results: list[StageRecord | VideoFailure], began: float
    ) -> None:
        """Run the task's next video on ``worker`` (its GPU phase queued on its GPU), or end the task."""
        if not left:
            self._finish(worker, task, results, began)
            return
        video, stage = left.popleft(), task.stage
        seconds, peak = self.seconds(stage, video), self.peak_bytes_of(stage, video)
        if worker.gpu is not None and peak is not None and peak * (task.workers_per_gpu or 1) > self.gpu_bytes:
            self.out_of_memory += 1
            results.append(VideoFailure(video.video_id, stage, "OutOfMemoryError: CUDA out of memory", "out_of_memory"))
            self._at(self.now + 1.0, lambda: self._next_video(worker, task, left, results, began))
            return
        end = self.now + seconds
        if worker.gpu is not None:
            gpu_phase = seconds * self.stages[stage].gpu_share
            start = max(self.now, self.gpu_free_at[worker.gpu])
            self.gpu_free_at[worker.gpu] = start + gpu_phase
            end = start + seconds

        def done() -> None:
            results.append(StageRecord(video.video_id, stage, "done", seconds, peak))
            self._landed(stage, video)
            self._next_video(worker, task, left, results, began)

        self._at(end, done)

    def _finish(self, worker: Worker, task: Task, results: list[StageRecord | VideoFailure], began: float) -> None:
        if worker.gpu is not None:
            self.busy_gpu[worker.gpu].add(began, self.now)
            self.busy_any.add(began, self.now)
        if task.single and results and isinstance(results[0], VideoFailure):  # process-video raises
            report = TaskReport(task.videos, failure=TaskFailure(results[0].reason, out_of_memory=True))
        else:
            report = TaskReport(task.videos, tuple(results), queued=task.queued)
        self._idle.append(worker)
        self._end(task, report)
        self._dispatch()

    def _landed(self, stage: str, video: VideoRef) -> None:
        """Count a video's intermediates (and its H5 file) as its stage ends."""
        size = self.stages[stage].output_bytes
        if size:
            self._held[video.video_id] = self._held.get(video.video_id, 0) + size
            self.bytes_held += size
            self.peak_bytes = max(self.peak_bytes, self.bytes_held)
        if stage == "h5_build":
            self.landed += 1
            self.first_h5 = self.now if self.first_h5 is None else self.first_h5

    def _end(self, task: Task, report: TaskReport) -> None:
        task.report, task.ended = report, self.now
        self.last_task = max(self.last_task, self.now)
        self._ended.setdefault(task.round, deque()).append(task.id)
        for waiting in self._waiting.pop(task.id, []):
            self._ready(self.tasks[waiting])

    def _all_ended(self, rounds: tuple[int, ...]) -> bool:
        return all(len(self._ended.get(r, ())) + self._reported.get(r, 0) == len(self.rounds[r]) for r in rounds)

    # -- the commands --------------------------------------------------------------------------

    def execute(self, command: c.Command) -> Any:
        costs = self.costs
        match command:
            case c.Check(stage, videos):
                self._spend(costs.check_s * len(videos))
                needs_gpu = frozenset(v.video_id for v in videos) if self.stages[stage].gpu_share else frozenset()
                return c.Checked(needs_gpu=needs_gpu)
            case c.WriteHere(stage, videos):
                self._spend(costs.write_here_s * len(videos))
                return StageOutcome(stage, [StageRecord(v.video_id, stage, "done") for v in videos])
            case c.Submit(round_, stage, videos, per_task, workers):
                chunks = [videos[i : i + per_task] for i in range(0, len(videos), per_task)]
                self.engine_calls += len(chunks)
                self._spend(costs.submit_s * len(chunks))
                for chunk in chunks:
                    self._submit(Task(next(self._ids), round_, stage, tuple(chunk), workers, single=per_task == 1))
                self.rounds.setdefault(round_, [])
            case c.SubmitAfter(round_, stage, upstream, ids, workers):
                for task_id in [t for r in upstream for t in self.rounds[r]]:
                    chosen = tuple(v for v in self.tasks[task_id].videos if v.video_id in ids)
                    if chosen:
                        self.engine_calls += 1
                        self._spend(costs.submit_s)
                        task = Task(next(self._ids), round_, stage, chosen, workers, False, True, task_id)
                        self._submit(task)
                self.rounds.setdefault(round_, [])
            case c.NextReport(rounds):
                return self._next_report(rounds)
            case c.Settle(rounds):
                self._until(lambda: self._all_ended(rounds))
            case c.Profile(stage, videos):
                self.engine_calls += 1 + len(videos)
                self._spend(costs.subflow_s + costs.submit_s * len(videos))
                round_ = -next(self._ids) - 1
                for video in videos:
                    self._submit(Task(next(self._ids), round_, stage, (video,), 1, single=True))
                self._until(lambda: self._all_ended((round_,)))
                self._spend(costs.report_s * len(videos))
                self._ended.pop(round_)
                return tuple(self.tasks.pop(t).report for t in self.rounds.pop(round_))
            case c.Release(stage):
                self.engine_calls += 1
                self._spend(costs.cluster_call_s)
                for worker in self._idle:
                    if worker.loaded == stage:
                        worker.loaded = None
            case c.ReadGpus(_, measure):
                self.engine_calls += 1 if measure else 0
                self._spend(costs.cluster_call_s if measure else 0.0)
                return c.GpuView(self.slots_per_gpu, self.infos if measure else ())
            case c.Publish(stage, done, _, final, spent):
                for estimator in self.estimators.values():
                    estimator.observe(self.now, stage, done, spent)
                if final or self.now - self._published.get(stage, float("-inf")) >= 1.0:
                    self._published[stage] = self.now
                    self._note_eta()
                    self.engine_calls += 1
                    self._spend(costs.api_call_s)
            case c.Packed(_, result):
                if result.profiles:
                    self.engine_calls += 1
                    self._spend(costs.api_call_s)
            case c.CloseWave(_, outcome):
                self._spend(costs.land_s * (len(outcome.records) + len(outcome.failures)))
            case c.FreeIntermediates(videos):
                self._spend(costs.land_s * len(videos))
                for video in videos:
                    self.bytes_held -= self._held.pop(video.video_id, 0)
        return None

    def _next_report(self, rounds: tuple[int, ...]) -> TaskReport | None:
        """The next task of ``rounds`` to end (as ``as_completed``); None once all were reported."""
        if all(self._reported.get(r, 0) == len(self.rounds[r]) for r in rounds):
            for round_ in rounds:
                for task_id in self.rounds.pop(round_):
                    self._forget(task_id)
                self._ended.pop(round_, None)
                self._reported.pop(round_, None)
            return None
        self._until(lambda: any(self._ended.get(r) for r in rounds))
        round_ = min((r for r in rounds if self._ended.get(r)), key=lambda r: self.tasks[self._ended[r][0]].ended or 0)
        task_id = self._ended[round_].popleft()
        self._reported[round_] = self._reported.get(round_, 0) + 1
        self._spend(self.costs.report_s)
        report = self.tasks[task_id].report
        assert report is not None
        return report

    def _note_eta(self) -> None:
        """Keep the run's estimates as the engine would publish them now, a point per 0.1 % of
        the time so far at most (a few thousand points over a run of any length)."""
        for name, estimator in self.estimators.items():
            points = self.etas.setdefault(name, [])
            elapsed = self.now - estimator.started
            if not points or elapsed - points[-1].elapsed_s >= max(1.0, 0.001 * elapsed):
                run = estimator.estimate(self.now)
                points.append(EtaPoint(elapsed, run.percent, None if run.waiting_for else run.eta_s))

    def _forget(self, task_id: int) -> None:
        """Drop a collected task, unless a queued task still waits on it."""
        if task_id not in self._waiting:
            self.tasks.pop(task_id, None)


def simulate(
    videos: int,
    gpus: int,
    wave_size: int,
    *,
    stages: dict[str, StageModel] = STAGES,
    costs: Costs = Costs(),
    gpu_gib: float = 31.3,
    workers_per_gpu: int = 4,
    cpu_workers: int | None = None,
    knobs: Knobs | None = None,
    seed: int = 0,
) -> Metrics:
    """Plan and carry out a build of ``videos`` on ``gpus`` GPUs in waves of ``wave_size``."""
    settings = Settings()
    names = [name for name in enabled_stages(settings) if name in stages]
    facts = [replace(f, prior_peak_bytes=None) for f in stage_facts(names, settings)]
    knobs = replace(knobs or Knobs.from_settings(settings), wave_size=wave_size, max_workers_per_gpu=workers_per_gpu)
    cluster = SimulatedCluster(stages, gpus, gpu_gib, workers_per_gpu, cpu_workers or gpus, costs, seed)
    refs = [VideoRef(f"{i:05d}", Path(f"v{i}.mp4"), "") for i in range(videos)]
    planner = WavePlanner(refs, facts, knobs, RunShape(cpu_slots=cpu_workers or gpus, here="flow"))
    gpu_stages = [f.name for f in facts if f.uses_gpu]
    cluster.estimators = {  # the engine's, and one that takes its rates from the run's start
        "recent": Estimator(names, videos, cluster.now, gpu_stages),
        "start": Estimator(names, videos, cluster.now, gpu_stages, window_share=1.0),
    }
    c.drive(planner.run(), cluster.execute)
    end = cluster.now - cluster.estimators["recent"].started
    cluster._until(lambda: not cluster._events)
    busy = [intervals.union() for intervals in cluster.busy_gpu]
    span = (cluster.first_task or 0.0, cluster.last_task)
    parts = [intervals.idle_parts(*span) for intervals in cluster.busy_gpu]
    mean_parts = tuple(sum(part[i] for part in parts) / len(parts) for i in range(3))
    return Metrics(
        videos,
        gpus,
        wave_size,
        wall_s=cluster.now,
        etas=cluster.etas,
        end_s=end,
        first_h5_s=cluster.first_h5,
        span=span,
        gpu_busy_s=busy,
        idle_parts_s=(mean_parts[0], mean_parts[1], mean_parts[2]),
        any_gpu_busy_s=cluster.busy_any.union(),
        any_busy=cluster.busy_any.merged(),
        peak_bytes=cluster.peak_bytes,
        task_runs=cluster.task_runs,
        engine_calls=cluster.engine_calls,
        out_of_memory=cluster.out_of_memory,
        landed=cluster.landed,
    )


# -- bench/waves.py's corpus on this machine ---------------------------------------------------

SMALL_COSTS = Costs(
    task_start_s=1.3,  # submission to a task's start on a GPU worker (BENCHMARKS.md, waves, slower machine)
    submit_s=0.03,
    report_s=0.01,
    check_s=0.002,
    write_here_s=0.01,
    cluster_call_s=0.1,  # release + read the GPUs: ~0.35 s per transition with a submission and a collection
    api_call_s=0.05,
    subflow_s=3.0,  # the profiling round's gap before the sized round: 2-7 s (same section)
)
"""Orchestration on the 2-core machine ``bench/waves.py`` runs on, as measured there before."""


def small_model(run_dir: Path, gpu_s_per_frame: float = 0.1, frames: int = 60) -> dict[str, StageModel]:
    """The stages of ``bench/waves.py``'s corpus as one of its runs measured them.

    A stage's seconds per video are the mean of its run report's records (for a GPU stage,
    of its profiling videos, which ran alone on their GPU); the part holding the GPU is what
    ``bench/waves.py`` gives the synthetic stages (``gpu_s_per_frame`` x ``frames``, hands and
    the unprompted object masks less), serialised per fake GPU. Intermediates per video: the
    frames (512 x 384 x 3 bytes x 60) and the depth (float16, 512 x 384 x 60).
    """
    [path] = sorted((run_dir / "dataset" / "runs").glob("*.jsonl"))
    done = [row for row in map(json.loads, path.read_text().splitlines()) if row.get("status") == "done"]
    gpu = {"depth_camera": 1.0, "tracks_3d": 1.0, "hands": 0.5}
    outputs = {"preprocess": 512 * 384 * 3 * frames, "depth_camera": 512 * 384 * 2 * frames}
    stages: dict[str, StageModel] = {}
    for name in ("preprocess", "depth_camera", "object_masks", "tracks_3d", "hands", "h5_build"):
        mine = [row for row in done if row["stage"] == name]
        alone = [row for row in mine if row.get("info", {}).get("workers_per_gpu") == 1] or mine
        seconds = sum(row["seconds"] for row in alone) / max(len(alone), 1)
        share = min(1.0, gpu[name] * gpu_s_per_frame * frames / seconds) if name in gpu and seconds else 0.0
        peak = (2.5, 2.5) if name in gpu else None  # model_mb 2000 + per_video_mb 500: 2 workers per 32 GiB
        stages[name] = StageModel((seconds, seconds), share, peak, 0.0, outputs.get(name, 0))
    return stages


def small(out: Path, seed: int) -> str:
    """``bench/waves.py``'s runs (``out``) beside what the simulator predicts for them.

    Times count from the first task's start: the flow's own start (the Prefect server, the
    cluster's workers, registration) is outside the planner, and so outside the simulation.
    """
    lines = [
        "| mode | videos | wave | | task span s | first H5 s after the first task | GPU idle share (any GPU) "
        "| idle s before / between / after | peak intermediates MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in sorted(out.glob("*-*/result.json")):
        measured = json.loads(result.read_text())
        runs = json.loads((result.parent / "task-runs.json").read_text())
        first_task = min(run["start"] for run in runs)
        first_h5 = min(path.stat().st_mtime for path in (result.parent / "dataset").glob("*.hdf5")) - first_task
        stages = small_model(result.parent)
        knobs = Knobs(max_workers_per_gpu=2, profiling_videos=2)
        predicted = simulate(
            measured["videos"],
            2,
            measured["wave"],
            stages=stages,
            costs=SMALL_COSTS,
            gpu_gib=32,
            workers_per_gpu=2,
            cpu_workers=2,
            knobs=knobs,
            seed=seed,
        )
        mode, videos, wave = measured["mode"], measured["videos"], measured["wave"]
        idle = 1 - measured["gpu_busy_s"] / measured["span_s"]
        parts = f"{measured['idle_head_s']:.1f} / {measured['idle_between_s']:.1f} / {measured['idle_tail_s']:.1f}"
        lines.append(
            f"| {mode} | {videos} | {wave} | measured | {measured['span_s']:.1f} | {first_h5:.1f} | {idle:.0%} "
            f"| {parts} | {measured['peak_bytes'] / 2**20:.0f} |"
        )
        start, end = predicted.span
        busy = Intervals()
        for a, b in predicted.any_busy:
            busy.add(a, b)
        head, between, tail = busy.idle_parts(start, end)
        lines.append(
            f"| {mode} | {videos} | {wave} | simulated | {end - start:.1f} | {(predicted.first_h5_s or 0) - start:.1f} "
            f"| {predicted.any_idle_share:.0%} | {head:.1f} / {between:.1f} / {tail:.1f} "
            f"| {predicted.peak_bytes / 2**20:.0f} |"
        )
        seconds = ", ".join(f"{name} {model.seconds[0]:.2f}" for name, model in stages.items())
        lines.append(f"|  |  |  | s per video in its run report: {seconds} |  |  |  |  |  |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=50_000)
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--wave-sizes", type=int, nargs="+", default=[50_000, 500], help="a size >= --videos: barrier")
    parser.add_argument("--gpu-task-videos", type=int, nargs="+", default=[Knobs().gpu_task_videos])
    parser.add_argument("--cpu-workers", type=int, help="CPU workers (default: one per GPU)")
    parser.add_argument("--small", type=Path, metavar="WAVES_OUT", help="bench/waves.py's corpus: its --out folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    clock = time.perf_counter()
    if args.small:
        print(small(args.small, args.seed))
        return
    rows = []
    for gpus, size, per_task in itertools.product(args.gpus, args.wave_sizes, args.gpu_task_videos):
        knobs = Knobs(gpu_task_videos=per_task)
        metrics = simulate(args.videos, gpus, size, cpu_workers=args.cpu_workers, knobs=knobs, seed=args.seed)
        mode = "barrier" if size >= args.videos else "waves"
        rows.append({"mode": mode, "gpu_task_videos": per_task, **metrics.row()})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(report(rows, started, time.perf_counter() - clock))


def report(rows: list[dict[str, Any]], started: str, seconds: float) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"- command: `.venv/bin/python bench/simulate.py {' '.join(sys.argv[1:])}`",
        f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}; {seconds:.0f} s of simulation "
        f"(deterministic: the load does not change the numbers); load average at the end {load}",
        f"- date: {started}",
        "",
        "| GPUs | mode | wave | gpu_task_videos | wall h | first H5 h | GPU idle share | idle h per GPU: before "
        "/ between / after | idle, any GPU | peak intermediates TB | task runs / video | engine calls / video "
        "| ETA error at 10 / 30 / 50 % done | same, rates from the run's start |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['gpus']} | {r['mode']} | {r['wave']} | {r['gpu_task_videos']} | {r['wall_h']:.1f} "
            f"| {r['first_h5_h']:.2f} | {r['idle']:.2%} "
            f"| {r['idle_head_h']:.2f} / {r['idle_between_h']:.2f} / {r['idle_tail_h']:.2f} | {r['any_idle']:.2%} "
            f"| {r['peak_tb']:.2f} | {r['task_runs_per_video']:.3f} | {r['calls_per_video']:.3f} "
            f"| {_errors(r, 'recent')} | {_errors(r, 'start')} |"
        )
    return "\n".join(lines)


def _errors(row: dict[str, Any], name: str) -> str:
    """An estimator's ETA errors at 10, 30 and 50 % done, signed (+: too late)."""
    errors = (row.get(f"eta_error_{name}_{round(100 * share)}") for share in ETA_SHARES)
    return " / ".join("-" if error is None else f"{error:+.1%}" for error in errors)


if __name__ == "__main__":
    main()
