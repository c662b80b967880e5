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
   available (:func:`size_gpus`): a peak measured on a 40 GB card sizes the 80 GB ones from
   the same peak, each by its own memory, and one request carries every GPU's size to Dask
   (:mod:`trackset.scheduling.gpu_layout`). A GPU smaller than the peak takes none of the
   stage's tasks; a peak above every GPU fails the rest of the stage at once
   (:class:`~trackset.gpu.sizing.PeakExceedsGpuError`).
3. **Run and shrink.** The remaining videos run at that size. Those that ran out of memory
   needed more than each worker of their GPU could hold: they run again where a worker
   holds more, one worker fewer on the GPUs that ran out (:func:`shrink_after`). Other GPUs
   keep their workers, unless theirs held no more than that each (the same video would run
   out there too); where the GPU is not known, the GPUs whose workers hold least shrink.
4. **Quarantine.** A video that runs out of memory alone on a GPU with no larger GPU to go
   to (while profiling, or at one worker per GPU) is returned as quarantined with its
   reason; so is every out-of-memory video on a cluster that cannot be resized
   (``resizable=False``).

Nothing is dropped: every video given comes back as a record or a failure.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trackset.domain import StageOutcome, StageRecord, VideoFailure, VideoRef
from trackset.gpu.inventory import GpuInfo
from trackset.gpu.sizing import MemoryProfile, PeakExceedsGpuError, plan_workers_per_gpu
from trackset.scheduling.gpu_layout import GpuLayout, GpuSize

PeakSource = Literal["profiled", "given", "prior", "none"]


@dataclass(frozen=True)
class PackingSettings:
    """The knobs of the policy (``cluster.*`` settings)."""

    profiling_videos: int
    headroom: float
    max_workers_per_gpu: int


@dataclass(frozen=True)
class RoundRequest:
    """A round the policy wants run: ``videos`` on the first ``workers_per_gpu`` workers of
    each GPU whose share is at least ``need_bytes`` (:class:`~trackset.scheduling.gpu_layout.GpuSize`):
    ``per_gpu`` workers on each GPU of the layout.

    Out-of-memory failures come back as failures of kind ``out_of_memory``, never raised;
    ``profiling`` marks the profiling round (its own subflow in the UI).
    """

    videos: list[VideoRef]
    workers_per_gpu: int
    profiling: bool = False
    need_bytes: int = 0
    per_gpu: tuple[int, ...] = ()

    @property
    def size(self) -> GpuSize:
        return GpuSize(self.workers_per_gpu, self.need_bytes)


@dataclass(frozen=True)
class Round:
    """One round that ran: how many videos, at what size (the most workers on a GPU, and
    each GPU's), and how many ran out of memory."""

    workers_per_gpu: int
    videos: int
    out_of_memory: int
    profiling: bool = False
    per_gpu: tuple[int, ...] = field(default=(), compare=False)


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


def size_gpus(
    stage: str,
    gpus: Sequence[GpuInfo] | GpuLayout,
    peak_bytes: int,
    settings: PackingSettings,
    caps: Sequence[int] | None = None,
) -> list[MemoryProfile]:
    """Each GPU's sizing for ``peak_bytes``: how many of the stage's workers fit on it, at most
    ``settings.max_workers_per_gpu``, the workers it has and its ``caps`` entry; 0 on a GPU
    whose available memory is below the peak.

    Raises:
        PeakExceedsGpuError: not even one worker fits on any GPU.
    """
    layout = _layout(gpus, settings)
    profiles = []
    for place, gpu in enumerate(layout.gpus):
        most = min(settings.max_workers_per_gpu, len(layout.shares[place]))
        if caps is not None:
            most = min(most, caps[place])
        fits = peak_bytes <= gpu.available_bytes and most > 0
        workers = plan_workers_per_gpu(gpu.available_bytes, peak_bytes, settings.headroom, most) if fits else 0
        profiles.append(MemoryProfile(stage, gpu.index, gpu.available_bytes, peak_bytes, workers))
    if profiles and not any(profile.workers_per_gpu for profile in profiles):
        largest = max(layout.gpus, key=lambda gpu: gpu.available_bytes)
        raise PeakExceedsGpuError(peak_bytes, largest.available_bytes, stage)
    return profiles


def shrink_after(layout: GpuLayout, size: GpuSize, out_of_memory: Sequence[VideoFailure]) -> GpuSize | None:
    """The size to run ``out_of_memory`` videos again at, after they ran out at ``size``;
    None where no GPU has a worker that would hold more (quarantine them).

    A video that ran out on a GPU with ``k`` workers needed more than each of them could hold
    (the share of the ``k``-th, :meth:`~trackset.scheduling.gpu_layout.GpuLayout.share_held`).
    Every GPU keeps only the workers whose share is above that: one fewer on the GPU that ran
    out, none fewer on a GPU whose workers each hold more, and a GPU whose workers hold less
    shrinks too. Videos that ran out on several GPUs go by the largest share they had; a
    failure whose worker is not known goes by the GPUs whose workers hold least.

    Examples:
        >>> from trackset.gpu.inventory import GpuInfo
        >>> gib = 1024**3
        >>> gpus = (GpuInfo(0, "A", 40 * gib, 0, 40 * gib), GpuInfo(1, "B", 80 * gib, 0, 80 * gib))
        >>> layout = GpuLayout.of(gpus, 4, shares=(), workers=(("a0", "a1", "a2", "a3"), ("b0", "b1", "b2", "b3")))
        >>> size = layout.request([3, 4], at_least=10 * gib)  # 3 on the 40 GiB GPU (12 GiB each), 4 on the 80 (18)
        >>> oom = [VideoFailure("00007", "hands", "OutOfMemoryError", "out_of_memory", worker="a2")]
        >>> layout.admitted(shrink_after(layout, size, oom))  # ran out with 12 GiB: the 80 GiB GPU keeps its 4
        (2, 4)
        >>> oom = [VideoFailure("00007", "hands", "OutOfMemoryError", "out_of_memory", worker="b3")]
        >>> layout.admitted(shrink_after(layout, size, oom))  # with 18 GiB: the 40 GiB GPU's 2nd holds 18 too
        (1, 3)
    """
    admitted = layout.admitted(size)
    ran = {layout.gpu_of(failure.worker) for failure in out_of_memory}
    known = [place for place in ran if place is not None and admitted[place]]
    running = [place for place, workers in enumerate(admitted) if workers]
    if not running:
        return None
    shares = [layout.share_held(place, admitted) for place in (known or running)]
    held = max(shares) if known else min(shares)
    targets = [
        sum(share > held for share in shares_[:workers])
        for shares_, workers in zip(layout.shares, admitted, strict=True)
    ]
    if not any(targets):
        return None
    return layout.request(targets, at_least=held + 1)


def _layout(gpus: Sequence[GpuInfo] | GpuLayout, settings: PackingSettings) -> GpuLayout:
    """``gpus`` as a layout: given, or ``max_workers_per_gpu`` workers on each, as a run's own."""
    if isinstance(gpus, GpuLayout):
        return gpus
    return GpuLayout.of(gpus, settings.max_workers_per_gpu, settings.headroom)


def pack_rounds(
    stage: str,
    videos: Sequence[VideoRef],
    gpus: Sequence[GpuInfo] | GpuLayout,
    settings: PackingSettings,
    *,
    prior_peak_bytes: int | None = None,
    known_peak_bytes: int | None = None,
    profile: bool = True,
    resizable: bool = True,
    caps: Sequence[int] | None = None,
) -> PackingSteps:
    """Run a GPU stage's ``videos`` by the out-of-memory policy (module docstring), a round at a time.

    Args:
        stage: the stage's name, for records and messages.
        videos: the videos to process, in order (profiling takes the first ones).
        gpus: the GPUs the stage may use, with what each has available now (and what their
            workers offer, as a :class:`~trackset.scheduling.gpu_layout.GpuLayout`).
        settings: profiling count, headroom and the cap on workers per GPU.
        prior_peak_bytes: the stage's declared peak, used when no peak is measured.
        known_peak_bytes: a peak measured earlier; skips profiling.
        profile: False where an earlier wave profiled and measured no peak: profiling again
            would measure nothing again, so the prior (or one worker per GPU) sizes it at once.
        resizable: False where the cluster cannot be resized (threads, or workers started by
            someone else): everything runs once and out-of-memory videos are quarantined.
        caps: the most workers each GPU may run in the first sized round (one queued behind
            the stage before, at the size that fits beside it).
    """
    result = PackingResult(StageOutcome(stage))
    pending = list(videos)
    if not resizable:
        yield from _round(result, RoundRequest(pending, 1), None)
        _quarantine(result, _take_oom(result.outcome), "out of memory on a cluster trackset cannot resize")
        return result
    layout = _layout(gpus, settings)
    one_each = GpuSize(1)

    if known_peak_bytes is not None:
        result.peak_bytes, result.peak_source = known_peak_bytes, "given"
    elif pending and profile:
        head, pending = pending[: settings.profiling_videos], pending[settings.profiling_videos :]
        profiling = RoundRequest(head, 1, profiling=True, per_gpu=layout.admitted(one_each))
        part = yield from _round(result, profiling, layout)
        _quarantine(result, _take_oom(result.outcome), "out of memory alone on a GPU while profiling")
        peak = measured_peak(part)
        if peak is not None:
            result.peak_bytes, result.peak_source = peak, "profiled"
    if result.peak_bytes is None and prior_peak_bytes is not None:
        result.peak_bytes, result.peak_source = prior_peak_bytes, "prior"

    size = one_each
    if result.peak_bytes is not None:
        try:
            result.profiles = size_gpus(stage, layout, result.peak_bytes, settings, caps)
        except PeakExceedsGpuError as exc:
            # Not even one worker fits: fail the rest now instead of wasting the corpus on it.
            result.error = str(exc)
            result.outcome.failures += [VideoFailure(v.video_id, stage, str(exc)) for v in pending]
            return result
        size = layout.request([profile.workers_per_gpu for profile in result.profiles], at_least=result.peak_bytes)

    while pending:
        by_id = {video.video_id: video for video in pending}
        request = RoundRequest(pending, size.workers_per_gpu, need_bytes=size.need_bytes, per_gpu=layout.admitted(size))
        yield from _round(result, request, layout)
        oom = _take_oom(result.outcome)
        if not oom:
            break
        smaller = shrink_after(layout, size, oom)
        if smaller is None:
            _quarantine(result, oom, "out of memory alone on a GPU")
            break
        pending, size = [by_id[failure.video_id] for failure in oom], smaller
    return result


def measured_peak(outcome: StageOutcome) -> int | None:
    """The largest peak the finished videos of ``outcome`` measured (DECISIONS.md: the maximum), if any."""
    return max((r.peak_bytes for r in outcome.records if r.status == "done" and r.peak_bytes), default=None)


def _round(
    result: PackingResult, request: RoundRequest, layout: GpuLayout | None
) -> Generator[RoundRequest, StageOutcome, StageOutcome]:
    """Have ``request`` run once and fold its outcome into ``result`` (out-of-memory ones
    included); with a ``layout``, note on each record the workers per GPU it ran with."""
    part = yield request
    if layout is not None:
        _note_packing(part.records, request, layout)
    oom = sum(failure.kind == "out_of_memory" for failure in part.failures)
    result.rounds.append(Round(request.workers_per_gpu, len(request.videos), oom, request.profiling, request.per_gpu))
    result.outcome.records += part.records
    result.outcome.failures += part.failures
    return part


def _note_packing(records: list[StageRecord], request: RoundRequest, layout: GpuLayout) -> None:
    """Record on each video the workers its GPU ran (profiled, planned or shrunk): its GPU's
    where the worker is known, else the most any GPU ran."""
    for record in records:
        record.info["workers_per_gpu"] = layout.ran_with(record.worker, request.per_gpu, request.workers_per_gpu)


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
