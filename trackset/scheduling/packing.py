"""How a GPU stage packs its videos onto GPUs: profile, size, run, shrink, quarantine.

DECISIONS.md ("Out-of-memory policy") as a pure generator, :func:`pack_rounds`: it yields
each round it wants run (:class:`RoundRequest`: which videos, at how many workers per GPU,
profiling or not) and is sent back what the round did (a :class:`~trackset.domain.StageOutcome`).
The wave planner (:mod:`trackset.scheduling.planner`) drives it and decides how a round is
run (which tasks, queued behind what); every branch of the policy is tested in
milliseconds by driving it with a fake GPU (tests/unit/test_packing.py):

1. **Profile.** The first ``profiling_videos`` videos run with one worker per GPU; their
   largest peak (DECISIONS.md: the maximum, not the mean) is the stage's peak. A peak
   measured earlier (``known_peak_bytes``, e.g. a previous wave's) skips this step; without
   any measured peak the stage's prior sizes the cluster, and without a prior one worker
   per GPU runs.
2. **Size.** Each GPU gets :func:`~trackset.gpu.sizing.plan_workers_per_gpu` of what it has
   available (:func:`size_gpus`); the stage runs at the smallest of them on every GPU
   (:func:`workers_on_every_gpu`), since a Dask resource holds a task to the first ``k``
   workers of *any* GPU. A peak above a whole GPU fails the rest of the stage at once
   (:class:`~trackset.gpu.sizing.PeakExceedsGpuError`).
3. **Run and shrink.** The remaining videos run at that size; those that ran out of memory
   run again with one fewer worker per GPU, down to one.
4. **Quarantine.** A video that runs out of memory alone on a GPU (while profiling, or at
   one worker per GPU) is returned as quarantined with its reason; so is every
   out-of-memory video on a cluster that cannot be resized (``resizable=False``).

Nothing is dropped: every video given comes back as a record or a failure.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trackset.domain import StageOutcome, StageRecord, VideoFailure, VideoRef
from trackset.gpu.inventory import GpuInfo
from trackset.gpu.sizing import MemoryProfile, PeakExceedsGpuError, shrink

PeakSource = Literal["profiled", "given", "prior", "none"]


@dataclass(frozen=True)
class PackingSettings:
    """The knobs of the policy (``cluster.*`` settings)."""

    profiling_videos: int
    headroom: float
    max_workers_per_gpu: int


@dataclass(frozen=True)
class RoundRequest:
    """A round the policy wants run: ``videos`` with ``workers_per_gpu`` workers on each GPU.

    Out-of-memory failures come back as failures of kind ``out_of_memory``, never raised;
    ``profiling`` marks the profiling round (its own subflow in the UI).
    """

    videos: list[VideoRef]
    workers_per_gpu: int
    profiling: bool = False


@dataclass(frozen=True)
class Round:
    """One round that ran: how many videos, at what size, and how many ran out of memory."""

    workers_per_gpu: int
    videos: int
    out_of_memory: int
    profiling: bool = False


@dataclass
class PackingResult:
    """What the policy did to a stage's videos.

    Attributes:
        outcome: every video's record or failure; quarantined videos are failures of kind
            ``"quarantined"``, also listed in :attr:`quarantined`.
        quarantined: the videos that did not fit, for the manifest.
        rounds: each round, in order.
        peak_bytes: the peak the sizing used, and :attr:`peak_source` where it came from.
        profiles: one sizing per GPU (the ``memory-profile-<stage>`` table), if sized.
        error: why the stage could not run at all (a peak above a GPU), else None.
    """

    outcome: StageOutcome
    quarantined: list[VideoFailure] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    peak_bytes: int | None = None
    peak_source: PeakSource = "none"
    profiles: list[MemoryProfile] = field(default_factory=list)
    error: str | None = None

    @property
    def workers_per_gpu(self) -> int | None:
        """The size of the last round that ran, if any ran."""
        return self.rounds[-1].workers_per_gpu if self.rounds else None

    @property
    def shrank(self) -> bool:
        """Whether a sized round ran out of memory: the peak it was sized from was too low."""
        return any(r.out_of_memory for r in self.rounds if not r.profiling)


PackingSteps = Generator[RoundRequest, StageOutcome, PackingResult]
""":func:`pack_rounds`: yields the rounds to run, is sent their outcomes, returns the result."""


def size_gpus(stage: str, gpus: Sequence[GpuInfo], peak_bytes: int, settings: PackingSettings) -> list[MemoryProfile]:
    """Each GPU's sizing for ``peak_bytes``: how many of the stage's workers fit on it.

    Raises:
        PeakExceedsGpuError: not even one worker fits on some GPU.
    """
    return [
        MemoryProfile.plan(
            stage, gpu.index, gpu.available_bytes, peak_bytes, settings.headroom, settings.max_workers_per_gpu
        )
        for gpu in gpus
    ]


def workers_on_every_gpu(profiles: Sequence[MemoryProfile]) -> int:
    """The size a stage runs at on every GPU: the smallest of the GPUs' own sizings.

    A task asks for the first ``k`` workers of a GPU, any GPU (:mod:`trackset.cluster.plan`),
    so one ``k`` serves all of them; GPUs of several kinds sized apart would each need a
    resource of their own, and this is where their sizes would part.

    Examples:
        >>> workers_on_every_gpu([MemoryProfile("hands", 0, 80, 10, 4), MemoryProfile("hands", 1, 40, 10, 3)])
        3
    """
    return min(profile.workers_per_gpu for profile in profiles)


def pack_rounds(
    stage: str,
    videos: Sequence[VideoRef],
    gpus: Sequence[GpuInfo],
    settings: PackingSettings,
    *,
    prior_peak_bytes: int | None = None,
    known_peak_bytes: int | None = None,
    profile: bool = True,
    resizable: bool = True,
) -> PackingSteps:
    """Run a GPU stage's ``videos`` by the out-of-memory policy (module docstring), a round at a time.

    Args:
        stage: the stage's name, for records and messages.
        videos: the videos to process, in order (profiling takes the first ones).
        gpus: the GPUs the stage may use, with what each has available now.
        settings: profiling count, headroom and the cap on workers per GPU.
        prior_peak_bytes: the stage's declared peak, used when no peak is measured.
        known_peak_bytes: a peak measured earlier; skips profiling.
        profile: False where an earlier wave profiled and measured no peak: profiling again
            would measure nothing again, so the prior (or one worker per GPU) sizes it at once.
        resizable: False where the cluster cannot be resized (threads, or workers started by
            someone else): everything runs once and out-of-memory videos are quarantined.
    """
    result = PackingResult(StageOutcome(stage))
    pending = list(videos)
    if not resizable:
        yield from _round(result, RoundRequest(pending, 1), note=False)
        _quarantine(result, _take_oom(result.outcome), "out of memory on a cluster trackset cannot resize")
        return result

    if known_peak_bytes is not None:
        result.peak_bytes, result.peak_source = known_peak_bytes, "given"
    elif pending and profile:
        head, pending = pending[: settings.profiling_videos], pending[settings.profiling_videos :]
        part = yield from _round(result, RoundRequest(head, 1, profiling=True))
        _quarantine(result, _take_oom(result.outcome), "out of memory alone on a GPU while profiling")
        peak = measured_peak(part)
        if peak is not None:
            result.peak_bytes, result.peak_source = peak, "profiled"
    if result.peak_bytes is None and prior_peak_bytes is not None:
        result.peak_bytes, result.peak_source = prior_peak_bytes, "prior"

    workers = 1
    if result.peak_bytes is not None:
        try:
            result.profiles = size_gpus(stage, gpus, result.peak_bytes, settings)
        except PeakExceedsGpuError as exc:
            # Not even one worker fits: fail the rest now instead of wasting the corpus on it.
            result.error = str(exc)
            result.outcome.failures += [VideoFailure(v.video_id, stage, str(exc)) for v in pending]
            return result
        workers = workers_on_every_gpu(result.profiles)

    while pending:
        by_id = {video.video_id: video for video in pending}
        yield from _round(result, RoundRequest(pending, workers))
        oom = _take_oom(result.outcome)
        if not oom:
            break
        smaller = shrink(workers)
        if smaller is None:
            _quarantine(result, oom, "out of memory alone on a GPU")
            break
        pending, workers = [by_id[failure.video_id] for failure in oom], smaller
    return result


def measured_peak(outcome: StageOutcome) -> int | None:
    """The largest peak the finished videos of ``outcome`` measured (DECISIONS.md: the maximum), if any."""
    return max((r.peak_bytes for r in outcome.records if r.status == "done" and r.peak_bytes), default=None)


def _round(
    result: PackingResult, request: RoundRequest, *, note: bool = True
) -> Generator[RoundRequest, StageOutcome, StageOutcome]:
    """Have ``request`` run once and fold its outcome into ``result`` (out-of-memory ones included)."""
    part = yield request
    if note:
        _note_packing(part.records, request.workers_per_gpu)
    oom = sum(failure.kind == "out_of_memory" for failure in part.failures)
    result.rounds.append(Round(request.workers_per_gpu, len(request.videos), oom, request.profiling))
    result.outcome.records += part.records
    result.outcome.failures += part.failures
    return part


def _note_packing(records: list[StageRecord], workers_per_gpu: int) -> None:
    """Record on each video the workers per GPU it ran with (profiled, planned or shrunk)."""
    for record in records:
        record.info["workers_per_gpu"] = workers_per_gpu


def _take_oom(outcome: StageOutcome) -> list[VideoFailure]:
    """Remove and return the out-of-memory failures of ``outcome``."""
    oom = [f for f in outcome.failures if f.kind == "out_of_memory"]
    outcome.failures = [f for f in outcome.failures if f.kind != "out_of_memory"]
    return oom


def _quarantine(result: PackingResult, failures: list[VideoFailure], why: str) -> None:
    """Turn out-of-memory failures into quarantines with their reason."""
    for failure in failures:
        quarantined = VideoFailure(
            failure.video_id, failure.stage, f"{why}: {failure.reason}", "quarantined", failure.attempts
        )
        result.quarantined.append(quarantined)
        result.outcome.failures.append(quarantined)
