"""When a run will be done: rate, ETA and GPU-hours from its progress counts, on a given clock.

The planner counts, per stage, the videos it is finished with and what it spent on them
(:class:`~trackset.scheduling.progress.StageProgress`, :class:`~trackset.scheduling.progress.Spent`);
whoever carries the plan out (the engine, the simulator) tells :class:`Estimator` each new
count with the time it came at, and asks it for a :class:`RunEstimate` when it publishes.
No clock of its own, so a test drives it with made-up times.

**A recent window.** Rates are taken over the last :data:`WINDOW_SHARE` of the time the run
has run so far, not from its start: the first wave is slow (the first preprocessing before
any GPU task, profiling one worker per GPU, model loads) and would weigh on the rate for
the whole run; and not over a fixed time, which a 5-minute demo and a 5-day build cannot
share. A window that grows with the run still follows a change of speed (a GPU node lost),
one window's time later.

**Robust to waves.** A stage's count moves in bursts: depth runs a wave, then waits while
tracks and hands run it, while the CPU lanes run the next and the last wave beside them,
and the planner collects a lane's tasks only when it needs them. So the run's ETA does not
divide videos by a stage's rate. It divides the work left by the rate work is done at,
in GPU-seconds: a video of a GPU task holds ``1/k`` of its GPU for its seconds (a worker of
``k`` per GPU). While the GPUs are busy, GPU-seconds accrue at the same pace whichever GPU
stage runs, so the rate holds steady through a wave's stages; the CPU lanes run beside the
GPUs, and if they fall behind, the GPUs wait and the rate shows it. Work left = each GPU
stage's videos left x its recent GPU-seconds per processed video of its sized rounds (a
profiling video runs alone on its GPU, dearer than one of the rounds after it, so it stands
for the stage's cost only until one of those ran). A GPU stage that has
processed no video yet has no cost to go by: the ETA says "estimating" until each has one.
Not counted: the last wave's CPU lane after the last GPU task (its H5 files: a minute of a
build of days), which has the ETA of its own rate once only it is left. A run without GPU
shares (the thread runner, or no GPU stage) counts every stage's seconds instead.

Per stage, videos per hour is its own count over the window; its ETA (videos left over
that rate) is at most the run's, as no stage ends after the run. GPU-hours so far = the
sum over its GPU tasks' videos of seconds x GPU share; projected = so far + videos left x
its recent GPU-seconds per processed video.

Memory is bounded whatever the run's length: at most ``max_samples`` snapshots of the
counts, thinned to every other one (and their spacing doubled) when full.

Examples:
    >>> from trackset.scheduling.progress import Spent
    >>> clock = Estimator(["depth_camera"], total=10, started=0.0, gpu_stages=["depth_camera"])
    >>> clock.observe(100.0, "depth_camera", 2, Spent(2, 20.0, 20.0))
    >>> clock.observe(200.0, "depth_camera", 4, Spent(4, 40.0, 40.0))
    >>> run = clock.estimate(200.0)
    >>> run.eta_s, run.videos_per_hour, round(run.gpu_hours_projected * 3600)
    (300.0, 72.0, 100)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from trackset.scheduling.progress import Spent

WINDOW_SHARE = 0.5
"""The rates' window: this share of the time the run has run so far, up to now."""

MAX_SAMPLES = 64
"""Snapshots of the counts an :class:`Estimator` keeps at most."""


@dataclass(frozen=True)
class StageEstimate:
    """One stage at one time.

    Attributes:
        stage: the stage.
        done: videos it is finished with (processed, skipped, failed, or dropped before it).
        total: the run's videos.
        videos_per_hour: its count's rate over the window; None before any time passed.
        eta_s: seconds until it is finished with every video; None while unknown.
        gpu_hours: GPU-hours its videos held so far.
        gpu_hours_projected: so far + its videos left at its recent GPU-hours per video;
            None until it has processed a video.
    """

    stage: str
    done: int
    total: int
    videos_per_hour: float | None
    eta_s: float | None
    gpu_hours: float
    gpu_hours_projected: float | None

    @property
    def percent(self) -> float:
        return 100.0 * min(self.done, self.total) / max(self.total, 1)


@dataclass(frozen=True)
class RunEstimate:
    """The whole run at one time (module docstring).

    Attributes:
        done: videos every stage is finished with (the fewest of any stage).
        total: the run's videos.
        percent: the share of the run's work done: the GPU stages' videos weighted by their
            GPU-seconds per video (module docstring); every stage the same while one's cost
            is unknown.
        videos_per_hour: whole videos (through every stage) per hour at the recent rate
            of work; None while unknown.
        eta_s: seconds until the run is done; None while unknown. While ``waiting_for`` is
            not empty, only the work of the stages whose cost is known, at the window's
            rate: not a bound (the rate of the first seconds can be low), a part.
        waiting_for: the stages with videos left whose cost is not known yet (no video
            processed): their work is not in ``eta_s``.
        gpu_hours: GPU-hours held so far, every stage.
        gpu_hours_projected: so far + every stage's projection; None while one is unknown.
        elapsed_s: seconds since the run started.
        stages: each stage's estimate, in the run's order.
    """

    done: int
    total: int
    percent: float
    videos_per_hour: float | None
    eta_s: float | None
    waiting_for: tuple[str, ...]
    gpu_hours: float
    gpu_hours_projected: float | None
    elapsed_s: float
    stages: tuple[StageEstimate, ...]


class _Count(NamedTuple):
    done: int
    spent: Spent


_NONE = _Count(0, Spent())


class _Sample(NamedTuple):
    time: float
    counts: dict[str, _Count]


class Estimator:
    """A run's rates, ETA and GPU-hours from the counts it is told (module docstring).

    Args:
        stages: the run's stages, in order: a stage not heard from yet counts as not started.
        total: the run's videos.
        gpu_stages: those of ``stages`` whose videos hold GPU shares (noted in GPU-seconds):
            the run's work is theirs, in GPU-seconds; none (a run on threads, which notes no
            GPU share, or without GPU stages): every stage's, in cost-seconds.
        started: when the run started, on the clock the times given later are on.
        window_share: the rates' window, as a share of the time run so far.
        max_samples: snapshots kept at most.
    """

    def __init__(
        self,
        stages: Sequence[str],
        total: int,
        started: float,
        gpu_stages: Collection[str] = (),
        *,
        window_share: float = WINDOW_SHARE,
        max_samples: int = MAX_SAMPLES,
    ) -> None:
        if not 0 < window_share <= 1:
            raise ValueError(f"window_share must be in (0, 1], got {window_share}")
        if max_samples < 4:
            raise ValueError(f"max_samples must be at least 4, got {max_samples}")
        self.stages = list(stages)
        self.gpu_stages = frozenset(gpu_stages)
        self.total = total
        self.started = started
        self.window_share = window_share
        self.max_samples = max_samples
        self._now: dict[str, _Count] = {}
        self._samples: list[_Sample] = [_Sample(started, {})]
        self._spacing = 0.0  # the least time between two snapshots; doubles when they are thinned

    @property
    def samples(self) -> int:
        """Snapshots held now (at most ``max_samples``)."""
        return len(self._samples)

    def observe(self, now: float, stage: str, done: int, spent: Spent) -> None:
        """``stage`` is finished with ``done`` videos and spent ``spent``, at ``now``."""
        if stage not in self.stages:
            self.stages.append(stage)
        self._now[stage] = _Count(done, spent)
        if now - self._samples[-1].time >= self._spacing:
            self._samples.append(_Sample(now, dict(self._now)))
            if len(self._samples) > self.max_samples:
                self._samples = self._samples[::2]
                self._spacing = (self._samples[-1].time - self.started) / len(self._samples)

    def _base(self, now: float) -> _Sample:
        """The newest snapshot at least a window before ``now`` (the start if none is)."""
        edge = now - self.window_share * max(now - self.started, 0.0)
        return next((s for s in reversed(self._samples) if s.time <= edge), self._samples[0])

    def estimate(self, now: float) -> RunEstimate:
        """Every stage and the run as of ``now`` (module docstring)."""
        base = self._base(now)
        span = now - base.time
        gpu = bool(self.gpu_stages)
        rows = [
            _StageRow.of(stage, self._now.get(stage, _NONE), base.counts.get(stage, _NONE), self.total, span, gpu)
            for stage in self.stages
        ]
        work = [row for row in rows if not gpu or row.stage in self.gpu_stages]  # the stages the work counts
        rate = sum(row.work_rate for row in work)  # work-seconds per second over the window
        costs = [row.work_per_video for row in work]
        waiting = tuple(row.stage for row in work if row.left and row.work_per_video is None)
        eta: float | None = None
        if not any(row.left for row in rows):
            eta = 0.0
        elif any(row.left for row in work):
            known = sum(row.left * (row.work_per_video or 0.0) for row in work)
            if rate > 0 and (known or not waiting):
                eta = known / rate  # at least that, while a stage's cost is still unknown
        else:  # only stages beside the work are left (the last wave's H5 files): at their own rates
            tails = [row.left / row.rate if row.rate else None for row in rows if row.left]
            eta = None if None in tails else max(t for t in tails if t is not None)
        per_video = None if None in costs else sum(c for c in costs if c is not None)
        if per_video:
            done = sum((row.work_per_video or 0.0) * min(row.done, self.total) for row in work)
            percent = 100.0 * done / (per_video * max(self.total, 1))
        else:  # a stage's cost is not known yet: every stage weighs the same
            percent = sum(100.0 * min(row.done, self.total) for row in rows) / max(len(rows) * self.total, 1)
        stages = tuple(row.estimate(None if waiting else eta) for row in rows)
        projected = [stage.gpu_hours_projected for stage in stages]
        return RunEstimate(
            done=min((row.done for row in rows), default=0),
            total=self.total,
            percent=min(percent, 100.0),
            videos_per_hour=3600.0 * rate / per_video if per_video and span > 0 else None,
            eta_s=eta,
            waiting_for=waiting,
            gpu_hours=sum(stage.gpu_hours for stage in stages),
            gpu_hours_projected=None if None in projected else sum(p or 0.0 for p in projected),
            elapsed_s=max(now - self.started, 0.0),
            stages=stages,
        )


@dataclass(frozen=True)
class _StageRow:
    """One stage's counts now and over the window, and what follows from them.

    ``work_*`` are in the run's measure of work: GPU-seconds where it counts its GPU stages'
    work, else every stage's cost-seconds (:class:`~trackset.scheduling.progress.Spent`).
    """

    stage: str
    done: int
    total: int
    left: int
    rate: float | None  # videos per second over the window
    work_rate: float  # work-seconds per second over the window
    work_per_video: float | None  # recent work-seconds per processed video; None: none processed yet
    gpu_per_video: float | None
    gpu_seconds: float

    @classmethod
    def of(cls, stage: str, now: _Count, base: _Count, total: int, span: float, gpu: bool) -> _StageRow:
        cost, held = _per_video(now.spent, base.spent, gpu)
        if cost is None and now.done:  # finished with some, processed none (current, or dropped before): free
            cost, held = 0.0, 0.0
        return cls(
            stage,
            now.done,
            total,
            max(total - now.done, 0),
            max(now.done - base.done, 0) / span if span > 0 else None,
            max(_work(now.spent, gpu) - _work(base.spent, gpu), 0.0) / span if span > 0 else 0.0,
            cost,
            held,
            now.spent.gpu_seconds,
        )

    def estimate(self, run_eta: float | None) -> StageEstimate:
        """Its estimate; its ETA no later than the run's (no stage ends after the run)."""
        own = 0.0 if not self.left else (self.left / self.rate if self.rate else None)
        if run_eta is not None:
            own = run_eta if own is None else min(own, run_eta)
        projected = None if self.gpu_per_video is None else (self.gpu_seconds + self.left * self.gpu_per_video) / 3600
        return StageEstimate(
            stage=self.stage,
            done=self.done,
            total=self.total,
            videos_per_hour=None if self.rate is None else 3600.0 * self.rate,
            eta_s=own,
            gpu_hours=self.gpu_seconds / 3600,
            gpu_hours_projected=projected,
        )


def _work(spent: Spent, gpu: bool) -> float:
    return spent.gpu_seconds if gpu else spent.seconds


def _per_video(now: Spent, base: Spent, gpu: bool) -> tuple[float | None, float | None]:
    """Work-seconds and GPU-seconds per video a stage's sized rounds took: in the window if
    it has any, else over the run; while only profiling videos ran, theirs (one worker per
    GPU, dearer than the sized rounds to come); None before any video."""

    def sized(spent: Spent) -> tuple[int, float, float]:
        profiled = spent.profiled_gpu_seconds if gpu else spent.profiled_seconds
        return (
            spent.videos - spent.profiled,
            _work(spent, gpu) - profiled,
            spent.gpu_seconds - spent.profiled_gpu_seconds,
        )

    (videos, work, held), (before, work_before, held_before) = sized(now), sized(base)
    every = (now.videos, _work(now, gpu), now.gpu_seconds)
    for count, seconds, gpu_seconds in (
        (videos - before, work - work_before, held - held_before),
        (videos, work, held),
        every,
    ):
        if count > 0:
            return max(seconds, 0.0) / count, max(gpu_seconds, 0.0) / count
    return None, None


def format_duration(seconds: float) -> str:
    """A duration as a person reads it at a glance.

    Examples:
        >>> [format_duration(s) for s in (42, 95, 4000, 7260, 200000)]
        ['42 s', '2 min', '67 min', '2 h 01 min', '2 d 7 h']
    """
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    minutes = int(seconds // 60)
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    hours = minutes // 60
    return f"{hours // 24} d {hours % 24} h"


def _rate(videos_per_hour: float | None) -> str:
    if videos_per_hour is None:
        return "? videos/h"
    return f"{videos_per_hour:.1f} videos/h" if videos_per_hour < 10 else f"{videos_per_hour:,.0f} videos/h"


def _eta(eta_s: float | None) -> str:
    return "ETA estimating" if eta_s is None else ("done" if eta_s == 0 else f"ETA {format_duration(eta_s)}")


def _gpu(so_far: float, projected: float | None) -> str:
    ahead = "?" if projected is None else f"{projected:,.2f}"
    return f"{so_far:,.2f} GPU-h so far, {ahead} projected"


def describe_stage(stage: StageEstimate) -> str:
    """One line for a stage's progress artifact and the live display (no GPU part for a stage
    that held none and will hold none).

    Examples:
        >>> print(describe_stage(StageEstimate("hands", 12, 24, 310.0, 130.0, 0.05, 0.1)))
        12 of 24 videos · 310 videos/h · ETA 2 min · 0.05 GPU-h so far, 0.10 projected
        >>> print(describe_stage(StageEstimate("preprocess", 24, 24, 2.5, 0.0, 0.0, 0.0)))
        24 of 24 videos · 2.5 videos/h · done
    """
    line = f"{stage.done:,} of {stage.total:,} videos · {_rate(stage.videos_per_hour)} · {_eta(stage.eta_s)}"
    if stage.gpu_hours or stage.gpu_hours_projected:
        line += f" · {_gpu(stage.gpu_hours, stage.gpu_hours_projected)}"
    return line


def describe_run(run: RunEstimate) -> str:
    """One line for the run's progress artifact and the live display.

    Examples:
        >>> print(describe_run(RunEstimate(3, 24, 40.0, 20.0, 3900.0, (), 0.5, 0.9, 600.0, ())))
        3 of 24 videos through every stage · 20 videos/h · ETA 65 min · 0.50 GPU-h so far, 0.90 projected
        >>> print(describe_run(RunEstimate(0, 24, 20.0, None, 300.0, ("hands",), 0.5, None, 600.0, ())))
        ... # doctest: +NORMALIZE_WHITESPACE
        0 of 24 videos through every stage · ? videos/h · ETA 5 min + hands (no video yet)
        · 0.50 GPU-h so far, ? projected
    """
    eta = _eta(run.eta_s)
    if run.waiting_for and run.eta_s is not None:
        eta = f"ETA {format_duration(run.eta_s)} + {', '.join(run.waiting_for)} (no video yet)"
    return (
        f"{run.done:,} of {run.total:,} videos through every stage · {_rate(run.videos_per_hour)} · "
        f"{eta} · {_gpu(run.gpu_hours, run.gpu_hours_projected)}"
    )


def run_metadata(run: RunEstimate) -> dict[str, str]:
    """The run's numbers for programs reading its progress artifact (Prefect artifact
    metadata holds strings); a number still unknown is left out.

    ``eta_s`` is there only once every stage's cost is known; before, ``eta_known_stages_s``:
    the time left of the stages whose cost is known, without the others.

    Examples:
        >>> run_metadata(RunEstimate(3, 24, 40.0, 20.0, 30.0, ("hands",), 0.5, None, 600.0, ()))
        ... # doctest: +NORMALIZE_WHITESPACE
        {'done': '3', 'total': '24', 'percent': '40.0', 'elapsed_s': '600.0', 'gpu_hours': '0.5',
         'videos_per_hour': '20.0', 'eta_known_stages_s': '30.0'}
    """
    numbers: dict[str, float | int | None] = {
        "done": run.done,
        "total": run.total,
        "percent": round(run.percent, 3),
        "elapsed_s": round(run.elapsed_s, 3),
        "gpu_hours": round(run.gpu_hours, 6),
        "videos_per_hour": None if run.videos_per_hour is None else round(run.videos_per_hour, 3),
        "eta_s": None if run.eta_s is None or run.waiting_for else round(run.eta_s, 3),
        "eta_known_stages_s": None if run.eta_s is None or not run.waiting_for else round(run.eta_s, 3),
        "gpu_hours_projected": None if run.gpu_hours_projected is None else round(run.gpu_hours_projected, 6),
    }
    return {key: str(value) for key, value in numbers.items() if value is not None}
