"""The wave planner: what runs where and when, decided from facts, as commands.

``process-waves`` streams the pending videos through every stage in waves of
``run.wave_size``. Everything it decides is decided here, from plain facts (the videos, the
stages, the knobs, the cluster's shape, the GPUs and peaks it reads, what each task did),
and said as commands (:mod:`trackset.scheduling.commands`); the engine carries them out on
Prefect and Dask and reports back, a simulator on a clock, a test on a fake. No Prefect, no
Dask: a 50,000-video build plans in seconds on a laptop (``bench/simulate.py``).

**Lanes.** The stages before the first GPU stage (preprocess) and after the last (the H5
build) run on the CPU workers beside the GPU stages: wave i+1 is preprocessed and wave i-1
gets its H5 files while wave i is on the GPUs::

    CPU workers:  [pre 0] [pre 1 | H5 -  ] [pre 2 | H5 0 ] [  -  | H5 1 ] [H5 2]
    GPU stages:           [  wave 0      ] [  wave 1     ] [  wave 2    ]

Once a wave's H5 files are durable its pictures are drawn and its intermediates freed.

**A GPU stage's wave.** The videos whose outputs are current are skipped; those that need
no GPU are written in the flow; the rest go through the packing policy
(:mod:`trackset.scheduling.packing`: profile, size, run, shrink, quarantine), each round in
chunks of ``cluster.gpu_task_videos`` (:mod:`trackset.scheduling.batching`), and the stage's models are
released afterwards. The peak measured on the first wave sizes the later ones, and later
runs (stored per stage), until a round runs out of memory.

**Look-ahead.** Once a stage's peak is known, its first sized round queues the next GPU
stage's first round behind it: for each of its tasks, one ``process-after`` task of the
next stage on the same videos, which Dask starts as soon as that task ends. The last GPU
stage of a wave queues the next wave's first GPU stage (its CPU lane is finished for it).
That happens only where the next stage's peak is known too and both stages' workers fit
one GPU together (:func:`~trackset.gpu.sizing.stages_fit_together`); otherwise the next
stage waits for the GPUs as a whole. A stage between whose videos all need no GPU is
written at once if it does not read this stage's outputs, and the walk goes on past it.

**The queued boundary.** A queued task runs only the videos its upstream task finished
(:func:`~trackset.scheduling.outcomes.reached`); one that fails, or that Prefect never
starts because its upstream task failed, is only logged
(:func:`~trackset.scheduling.outcomes.settle`); a queued round whose videos all failed
upstream is collected apart and runs nothing; the videos its tasks skipped that the stage
before finished after all (in a smaller round, or alone) run as "missed" right after the
round. A smaller round after out-of-memory failures first waits for the round it queued
and frees that stage's models, so it has the GPUs to itself.

**GPUs held.** Before the first wave's GPU stages, and as each wave reaches them, the
planner says how many videos of GPU work the current and the next wave hold, and that none
is left once the last wave is through them (:class:`~trackset.scheduling.commands.GpuWork`):
a run on SLURM holds as many jobs as that work can use, so they queue while the first wave
is preprocessed and are given back while the last one gets its H5 files.

**Progress.** Each stage's count (:class:`~trackset.scheduling.progress.StageProgress`)
grows as its videos become final and jumps to the wave's end when the wave closes, so it
never steps back; :class:`~trackset.scheduling.commands.Publish` says when to show it, with
what the stage spent so far. A video of a GPU round held ``1/k`` of its GPU (``k`` workers
on the GPU it ran on, which differs between GPUs of different sizes; 1 while profiling) for
its seconds: its record notes those GPU-seconds
(``info["gpu_seconds"]``), which the run report, the tallies and the ETA
(:mod:`trackset.scheduling.eta`) add up.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trackset.domain import GPU_SECONDS, StageOutcome, StageRecord, VideoRef
from trackset.gpu.sizing import PeakExceedsGpuError, workers_beside
from trackset.scheduling.batching import chunk_videos, round_parts, split_lanes, waves_of
from trackset.scheduling.commands import (
    Check,
    Checked,
    CloseWave,
    DrawPictures,
    ForgetProfile,
    FreeIntermediates,
    GpuView,
    GpuWork,
    LoadProfile,
    Log,
    NextReport,
    Packed,
    Profile,
    Publish,
    ReadGpus,
    Release,
    SaveProfile,
    Settle,
    Steps,
    Submit,
    SubmitAfter,
    WriteHere,
)
from trackset.scheduling.facts import Knobs, RunShape, StageFacts
from trackset.scheduling.gpu_layout import GpuLayout, GpuSize
from trackset.scheduling.outcomes import TaskReport, final_ids, settle
from trackset.scheduling.packing import (
    PackingResult,
    PackingSettings,
    PackingSteps,
    RoundRequest,
    measured_peak,
    pack_rounds,
    size_gpus,
)
from trackset.scheduling.progress import StageProgress


def _ids(videos: Sequence[VideoRef]) -> set[str]:
    return {video.video_id for video in videos}


@dataclass(frozen=True)
class _Batch:
    """Rounds of a stage collected as one, and their videos in the order their tasks hold them."""

    rounds: tuple[int, ...]
    videos: tuple[VideoRef, ...]

    def joined(self, other: _Batch | None) -> _Batch:
        if other is None:
            return self
        return _Batch(self.rounds + other.rounds, self.videos + other.videos)


@dataclass(frozen=True)
class _Queued:
    """A GPU stage's first round of a wave, queued behind the stage before.

    Attributes:
        batch: its tasks.
        size: what its tasks ask for, from the stage's known peak.
        admitted: the workers that admits on each GPU of ``layout``.
        layout: the GPUs that size was computed from, so the stage's packing sizes alike.
    """

    batch: _Batch
    size: GpuSize
    admitted: tuple[int, ...]
    layout: GpuLayout


@dataclass
class _Book:
    """What the planner keeps of one stage: across the run, and for the wave it is on."""

    facts: StageFacts
    progress: StageProgress
    known_peak: int | None = None  # measured on an earlier wave, or stored by an earlier run
    profiled: bool = False  # an earlier wave profiled the stage (with or without a peak)
    profile_loaded: bool = False  # the stored profile was looked for (once per run)
    wave: StageOutcome = field(init=False)  # this wave's records and failures
    todo: set[str] = field(default_factory=set)  # this wave's videos that were due when it started

    def __post_init__(self) -> None:
        self.wave = StageOutcome(self.facts.name)

    @property
    def name(self) -> str:
        return self.facts.name


@dataclass(frozen=True)
class _Lane:
    """CPU stages of one wave in flight: the first one's tasks run while the flow does other work."""

    stages: tuple[str, ...]
    videos: tuple[VideoRef, ...]
    size: int  # the wave's size, videos dropped by earlier stages included (for progress)
    batch: _Batch | None


@dataclass(frozen=True)
class _GpuRound:
    """How a GPU round was spread: ``per_gpu[i]`` workers on GPU ``i`` of ``layout``, at most
    ``most`` on any (where the layout does not name the workers: ``most`` on each)."""

    layout: GpuLayout
    per_gpu: tuple[int, ...]
    most: int

    @classmethod
    def uniform(cls, workers: int) -> _GpuRound:
        """``workers`` on every GPU (the profiling round: 1)."""
        return cls(GpuLayout((), ()), (), workers)

    def workers_beside(self, worker: str) -> int:
        """The workers that shared the GPU of ``worker``, itself included: a video it ran
        held ``1/that`` of the GPU for its seconds."""
        return self.layout.ran_with(worker, self.per_gpu, self.most)


@dataclass
class _StageRounds:
    """One GPU stage's rounds of a wave, as the packing asks for them."""

    layout: GpuLayout
    after: tuple[str, ...]  # the GPU stages after it in the wave
    queued: _Queued | None  # its queued first round, taken by its first sized round
    sized: int = 0
    profiled_peak: int | None = None


class WavePlanner:
    """Plans a run's waves (module docstring); :meth:`run` is the plan, a step at a time."""

    def __init__(self, videos: Sequence[VideoRef], stages: Sequence[StageFacts], knobs: Knobs, shape: RunShape) -> None:
        self.videos = list(videos)
        self.knobs = knobs
        self.shape = shape
        self.books = {facts.name: _Book(facts, StageProgress(len(self.videos))) for facts in stages}
        self._rounds = itertools.count()
        self._layout: GpuLayout | None = None  # the GPUs as last read
        self._queued: dict[str, _Queued] = {}  # a stage's first round of its next wave, queued
        self._early: dict[str, set[str]] = {}  # a stage's videos of its next wave written before it ran
        self._ahead: dict[str, str] = {}  # the stage a GPU stage queued a round of, this wave
        self._next: _Lane | None = None  # the next wave's CPU lane
        self._next_alive: list[VideoRef] | None = None  # its videos that got through, once finished

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Steps[None]:
        """The whole run: every wave through every stage (module docstring)."""
        head, gpu, tail = split_lanes(list(self.books), lambda stage: self.books[stage].facts.uses_gpu)
        waves = waves_of(self.videos, self.knobs.wave_size)
        yield Log("info", f"{len(self.videos)} videos in {len(waves)} waves of up to {self.knobs.wave_size}")
        if waves:
            self._next = yield from self._start_lane(head, waves[0], len(waves[0]))
            if gpu:  # GPUs asked for while the first wave is preprocessed
                yield GpuWork(sum(len(wave) for wave in waves[:2]))
        behind: tuple[list[VideoRef], _Lane] | None = None
        pictures_left = self.knobs.pictures_videos
        for index, wave in enumerate(waves):
            alive = yield from self._next_wave_videos()
            self._next, self._next_alive = None, None
            following = waves[index + 1] if index + 1 < len(waves) else []
            if following:  # preprocess the next wave while this one is on the GPUs
                self._next = yield from self._start_lane(head, following, len(following))
            if gpu:
                yield GpuWork(len(alive) + len(following))
            for position, stage in enumerate(gpu):
                alive = yield from self._gpu_stage(stage, len(wave), alive, tuple(gpu[position + 1 :]), gpu[0])
            if gpu and not following:
                yield GpuWork(0)  # the last H5 files need no GPU
            if behind is not None:  # the previous wave's H5 files were built beside these GPU stages
                pictures_left -= yield from self._land(*behind, pictures_left)
            behind = (wave, (yield from self._start_lane(tail, alive, len(wave))))
            yield Log("info", f"wave {index + 1} of {len(waves)}: {len(alive)} videos through the GPU stages")
        if behind is not None:
            yield from self._land(*behind, pictures_left)

    def _next_wave_videos(self) -> Steps[list[VideoRef]]:
        """The next wave's videos that got through its CPU lane, finishing the lane if not yet.

        Asked at the top of each wave, and earlier by the last GPU stage of the wave before,
        to queue the first GPU stage of this one: the lane is finished once, by whichever asks first.
        """
        if self._next_alive is None:
            self._next_alive = (yield from self._finish_lane(self._next)) if self._next is not None else []
        return self._next_alive

    def _start_lane(self, stages: Sequence[str], videos: Sequence[VideoRef], size: int) -> Steps[_Lane]:
        """Submit the lane's first stage and return at once."""
        batch = (yield from self._submit_cpu(self.books[stages[0]], videos)) if stages else None
        return _Lane(tuple(stages), tuple(videos), size, batch)

    def _finish_lane(self, lane: _Lane) -> Steps[list[VideoRef]]:
        """Wait for the lane's first stage, run the others; return the videos that got through all."""
        alive = list(lane.videos)
        if lane.stages:
            alive = yield from self._collect_cpu(self.books[lane.stages[0]], lane.size, alive, lane.batch)
            for stage in lane.stages[1:]:
                book = self.books[stage]
                alive = yield from self._collect_cpu(book, lane.size, alive, (yield from self._submit_cpu(book, alive)))
        return alive

    def _land(self, wave: list[VideoRef], lane: _Lane, pictures: int) -> Steps[int]:
        """Finish a wave's last CPU stages, draw the pictures of up to ``pictures`` of its videos,
        then free its intermediates (those not kept); return how many videos got pictures."""
        landed = yield from self._finish_lane(lane)
        chosen = tuple(video.video_id for video in landed[: max(pictures, 0)])
        if chosen:
            yield DrawPictures(chosen)
        if self.shape.free_intermediates:
            yield FreeIntermediates(tuple(wave))
        return len(chosen)

    # -- CPU stages ----------------------------------------------------------------------------

    def _submit_cpu(self, book: _Book, videos: Sequence[VideoRef]) -> Steps[_Batch | None]:
        """Start a CPU stage on ``videos`` without waiting; None when all are current."""
        todo, _ = yield from self._split(book, videos)
        if not todo:
            return None
        per_task = 1
        if book.facts.batched:
            per_task = chunk_videos(len(todo), self.shape.cpu_slots, self.knobs.cpu_task_videos)
        return (yield from self._submit(book.name, todo, per_task, None))

    def _collect_cpu(
        self, book: _Book, size: int, videos: list[VideoRef], batch: _Batch | None
    ) -> Steps[list[VideoRef]]:
        """Wait for :meth:`_submit_cpu`'s tasks; return the videos of ``videos`` that got through."""
        if batch is not None:
            self._fold(book, (yield from self._collect(book, batch, None, None)))
        return (yield from self._close_wave(book, size, videos))

    # -- what every stage does with a wave ------------------------------------------------------

    def _split(self, book: _Book, videos: Sequence[VideoRef]) -> Steps[tuple[list[VideoRef], Checked]]:
        """Record the videos already current as skipped; return the rest, to run, and what was checked."""
        if not videos:
            return [], Checked()
        checked: Checked = yield Check(book.name, tuple(videos))
        todo = [video for video in videos if video.video_id not in checked.current]
        book.todo |= _ids(todo)
        book.wave.records += [
            StageRecord(video.video_id, book.name, "skipped", worker=self.shape.here)
            for video in videos
            if video.video_id in checked.current
        ]
        deleted = [video.video_id for video in todo if video.video_id in checked.deleted]
        if deleted:
            yield Log(
                "info",
                f"{book.name}: {len(deleted)} videos recompute from their source (e.g. {', '.join(deleted[:5])}): "
                "their intermediates were deleted (run.keep_intermediates) and a setting changed what depends on them",
            )
        return todo, checked

    def _fold(self, book: _Book, part: StageOutcome) -> None:
        """Add ``part`` to the stage's wave."""
        for record in part.records:
            if record.status == "skipped" and record.video_id in book.todo:
                # Due when the wave started and current when its task ran: an earlier attempt
                # of this run (a worker killed mid-chunk, a retried shard) finished it.
                record.status = "done"
        book.wave.records += part.records
        book.wave.failures += part.failures

    def _close_wave(self, book: _Book, size: int, videos: Sequence[VideoRef]) -> Steps[list[VideoRef]]:
        """Count the wave as finished here and return its videos this stage let through.

        ``size`` is the wave's size: videos an earlier stage dropped count too, so the
        progress of every stage ends at 100 %.
        """
        book.progress.close_wave(size)
        yield from self._publish(book, final=True)
        yield CloseWave(book.name, book.wave)
        succeeded = {record.video_id for record in book.wave.records}
        book.wave, book.todo = StageOutcome(book.name), set()
        return [video for video in videos if video.video_id in succeeded]

    def _submit(self, stage: str, videos: Sequence[VideoRef], per_task: int, size: GpuSize | None) -> Steps[_Batch]:
        batch = _Batch((next(self._rounds),), tuple(videos))
        workers, need = (size.workers_per_gpu, size.need_bytes) if size is not None else (None, 0)
        yield Submit(batch.rounds[0], stage, batch.videos, per_task, workers, need)
        return batch

    def _submit_round(self, stage: str, videos: Sequence[VideoRef], slots: int, size: GpuSize) -> Steps[_Batch]:
        """Submit a GPU round of ``videos`` in the parts of :func:`round_parts`, as one batch."""
        batch, start = None, 0
        for count, per_task in round_parts(len(videos), slots, self.knobs.gpu_task_videos):
            part = yield from self._submit(stage, videos[start : start + count], per_task, size)
            batch, start = batch.joined(part) if batch is not None else part, start + count
        assert batch is not None, "a round of no videos"
        return batch

    def _collect(self, book: _Book, batch: _Batch, size: GpuSize | None, gpus: _GpuRound | None) -> Steps[StageOutcome]:
        """Wait for the tasks of ``batch`` and gather their records and failures (and those of
        the videos of a failed shard, run again one per task), counting progress as they end;
        ``gpus``: how the round of a GPU stage was spread, to tell what each video held (None:
        no GPU share held)."""
        outcome, isolate = StageOutcome(book.name), list[VideoRef]()
        while (report := (yield NextReport(batch.rounds))) is not None:
            yield from self._take(book, report, outcome, isolate, gpus)
        yield from self._log_failures(outcome)
        if isolate:
            single = yield from self._submit(book.name, isolate, 1, size)
            part = yield from self._collect(book, single, size, gpus)
            outcome.records += part.records
            outcome.failures += part.failures
        return outcome

    def _take(
        self,
        book: _Book,
        report: TaskReport,
        outcome: StageOutcome,
        isolate: list[VideoRef],
        gpus: _GpuRound | None,
        *,
        profiling: bool = False,
    ) -> Steps[None]:
        """Fold one task's report into ``outcome`` (:func:`~trackset.scheduling.outcomes.settle`),
        its records' GPU-seconds noted where it ran on the GPUs of ``gpus`` (``profiling``: a
        task of the profiling round)."""
        settled = settle(book.name, report, self.knobs.retries)
        if settled.warning:
            yield Log("warning", settled.warning)
        if gpus is not None:
            for record in settled.outcome.records:
                if record.status == "done":
                    record.info[GPU_SECONDS] = record.seconds / gpus.workers_beside(record.worker)
        outcome.records += settled.outcome.records
        outcome.failures += settled.outcome.failures
        isolate += settled.isolate
        counted = book.progress.finished(final_ids(settled.outcome))
        if book.progress.spend(settled.outcome.records, profiling=profiling) or counted:
            yield from self._publish(book)

    def _publish(self, book: _Book, *, final: bool = False) -> Steps[None]:
        progress = book.progress
        yield Publish(book.name, progress.done, progress.total, final, progress.spent)

    def _log_failures(self, outcome: StageOutcome) -> Steps[None]:
        for failure in outcome.failures:
            yield Log(
                "warning",
                f"{outcome.stage} failed for video {failure.video_id} ({failure.kind}): {failure.reason}",
            )

    # -- GPU stages ----------------------------------------------------------------------------

    def _gpu_stage(
        self, stage: str, size: int, videos: list[VideoRef], after: tuple[str, ...], first: str
    ) -> Steps[list[VideoRef]]:
        """Run a GPU stage on a wave's ``videos``; return those it let through.

        ``after`` are the GPU stages that follow in the wave (the first of them with GPU work
        gets its first round queued behind this stage's); ``first`` is the first GPU stage,
        which the last one queues for the next wave.
        """
        book = self.books[stage]
        queued = self._queued.pop(stage, None)
        early = self._early.pop(stage, set())
        self._ahead.pop(stage, None)
        held = _ids(queued.batch.videos) if queued is not None else set()
        todo, checked = yield from self._split(book, [v for v in videos if v.video_id not in early | held])
        todo = yield from self._without_gpu(book, todo, checked)
        covered = [video for video in videos if video.video_id in held]
        if queued is not None and not covered:
            # Every video of the queued round failed the stage before: its tasks ran nothing.
            gpus = _GpuRound(queued.layout, queued.admitted, queued.size.workers_per_gpu)
            self._fold(book, (yield from self._collect(book, queued.batch, queued.size, gpus)))
            queued = None
        if todo or covered:
            try:
                yield from self._pack(book, todo + covered, after, queued, first)
            except Exception:
                yield Release(stage)
                raise
            yield Release(stage)  # the next stage gets the GPU memory
        return (yield from self._close_wave(book, size, videos))

    def _without_gpu(self, book: _Book, videos: list[VideoRef], checked: Checked) -> Steps[list[VideoRef]]:
        """Have the flow write the videos whose outputs need no GPU; return the others, for GPU tasks."""
        local = [video for video in videos if video.video_id not in checked.needs_gpu]
        if not local:
            return videos
        written: StageOutcome = yield WriteHere(book.name, tuple(local))
        self._fold(book, written)
        if book.progress.spend(written.records):  # counted when the wave closes: it may be the next wave's
            yield from self._publish(book)
        handled = {r.video_id for r in written.records} | {f.video_id for f in written.failures}
        return [video for video in videos if video.video_id not in handled]

    def _pack(
        self, book: _Book, videos: list[VideoRef], after: tuple[str, ...], queued: _Queued | None, first: str
    ) -> Steps[None]:
        """Run the stage's videos through the packing policy, each round as :meth:`_gpu_round` says.

        With a ``queued`` round (its tasks already submitted, sized from the known peak on
        ``queued.layout``), the first sized round collects those tasks and runs only the videos
        they do not hold; each GPU's workers are capped at what the queued round admits there,
        so the packing sizes the round exactly as it was queued.
        """
        knobs = self.knobs
        if self.shape.threads:
            # Threads in one process: nothing to size, nothing to shrink.
            packing = PackingSettings(knobs.profiling_videos, knobs.headroom, knobs.max_workers_per_gpu)
            steps = pack_rounds(book.name, videos, [], packing, resizable=False)
            result = yield from self._drive(steps, lambda request: self._threads_round(book, request))
        else:
            view: GpuView = yield ReadGpus(book.name, measure=queued is None)
            if queued is None:
                self._layout = self._layout_of(view)
            layout = queued.layout if queued is not None else self._layout
            assert layout is not None, "GPUs read"
            if queued is None:
                yield from self._load_profile(book, layout)
            steps = pack_rounds(
                book.name,
                videos,
                layout,
                PackingSettings(knobs.profiling_videos, knobs.headroom, knobs.max_workers_per_gpu),
                prior_peak_bytes=book.facts.prior_peak_bytes,
                known_peak_bytes=book.known_peak,
                profile=not book.profiled,
                caps=queued.admitted if queued is not None else None,
            )
            rounds = _StageRounds(layout, after, queued)
            result = yield from self._drive(steps, lambda request: self._gpu_round(book, request, rounds, first))
            yield from self._remember_peak(book, result, layout)
        yield Packed(book.name, result)
        self._fold(book, result.outcome)

    def _layout_of(self, view: GpuView) -> GpuLayout:
        """The GPUs as the engine read them, with what their workers offer (derived, as a run's
        own workers offer it, where the view does not say)."""
        return GpuLayout.of(view.gpus, view.slots_per_gpu, self.knobs.headroom, view.shares, view.workers)

    def _drive(self, steps: PackingSteps, run: Callable[[RoundRequest], Steps[StageOutcome]]) -> Steps[PackingResult]:
        """The packing policy to its end, each round it asks for run by ``run``."""
        try:
            request = next(steps)
        except StopIteration as done:
            result: PackingResult = done.value
            return result
        while True:
            outcome = yield from run(request)
            try:
                request = steps.send(outcome)
            except StopIteration as done:
                result = done.value
                return result

    def _threads_round(self, book: _Book, request: RoundRequest) -> Steps[StageOutcome]:
        """A round on the thread runner: chunks over the flow's threads, no resources."""
        per_task = chunk_videos(len(request.videos), self.shape.cpu_slots, self.knobs.gpu_task_videos)
        batch = yield from self._submit(book.name, request.videos, per_task, None)
        return (yield from self._collect(book, batch, None, None))

    def _gpu_round(self, book: _Book, request: RoundRequest, rounds: _StageRounds, first: str) -> Steps[StageOutcome]:
        """One round of the packing on the GPUs: profiling, or a sized round (module docstring).

        The first sized round takes the queued round's tasks in and queues the next stage
        behind itself (:meth:`_look_ahead`); a later one (after out-of-memory failures) first
        waits for what it queued, so it has the GPUs to itself. Videos the queued tasks
        skipped that got through the stage before after all run right after the round.
        """
        stage, size, layout = book.name, request.size, rounds.layout
        if request.profiling:
            part = yield from self._profile(book, request.videos)
            rounds.profiled_peak = measured_peak(part)  # the packing's peak, as it takes it
            return part
        rounds.sized += 1
        if rounds.sized > 1:
            yield from self._settle_ahead(stage)
        yield Log("info", f"{stage}: {len(request.videos)} videos on {layout.describe(request.per_gpu)}")
        slots = sum(request.per_gpu)
        waiting, rounds.queued = rounds.queued, None
        held = _ids(waiting.batch.videos) if waiting is not None else set()
        fresh = [video for video in request.videos if video.video_id not in held]
        submitted = (yield from self._submit_round(stage, fresh, slots, size)) if fresh else None
        if waiting is not None:
            submitted = waiting.batch.joined(submitted)
        if submitted is None:
            return StageOutcome(stage)
        peak = book.known_peak if book.known_peak is not None else rounds.profiled_peak
        if rounds.sized == 1 and peak is not None:
            yield from self._look_ahead(stage, submitted, rounds.after, first, layout, (peak, request.per_gpu))
        gpus = _GpuRound(layout, request.per_gpu, request.workers_per_gpu)
        outcome = yield from self._collect(book, submitted, size, gpus)
        # A queued task skips the videos its upstream task failed; those the stage before
        # finished later (a smaller round, a rerun alone) run here now.
        seen = {r.video_id for r in outcome.records} | {f.video_id for f in outcome.failures}
        missed = [video for video in request.videos if video.video_id in held and video.video_id not in seen]
        if missed:
            per_task = chunk_videos(len(missed), slots, self.knobs.gpu_task_videos)
            rerun = yield from self._submit(stage, missed, per_task, size)
            part = yield from self._collect(book, rerun, size, gpus)
            outcome.records += part.records
            outcome.failures += part.failures
        return outcome

    def _profile(self, book: _Book, videos: list[VideoRef]) -> Steps[StageOutcome]:
        """The profiling round: one video per task on one worker per GPU (``profile-memory``)."""
        reports: tuple[TaskReport, ...] = yield Profile(book.name, tuple(videos))
        outcome: StageOutcome = StageOutcome(book.name)
        for report in reports:
            yield from self._take(book, report, outcome, [], _GpuRound.uniform(1), profiling=True)
        yield from self._log_failures(outcome)
        return outcome

    def _load_profile(self, book: _Book, layout: GpuLayout) -> Steps[None]:
        """Once per run: start from the peak an earlier run stored for these GPUs, if any."""
        if book.profile_loaded:
            return
        book.profile_loaded = True
        stored = yield LoadProfile(book.name)
        if stored is not None:
            book.known_peak = stored

    def _remember_peak(self, book: _Book, result: PackingResult, layout: GpuLayout) -> Steps[None]:
        """Reuse the profile for the next wave, unless it under-estimated (a round shrank).

        A profiling round that measured no peak counts too (``profiled``, no ``known_peak``):
        a stage that charges no GPU memory would otherwise profile every wave again and
        measure nothing again.
        """
        if result.shrank:
            book.known_peak, book.profiled = None, False
            yield ForgetProfile(book.name)
            return
        book.profiled = book.profiled or any(r.profiling for r in result.rounds)
        if result.peak_source == "profiled" and result.peak_bytes is not None:
            book.known_peak = result.peak_bytes
            yield SaveProfile(book.name, result.peak_bytes)

    # -- the next stage's first round, queued behind this one ---------------------------------

    def _look_ahead(
        self,
        stage: str,
        upstream: _Batch,
        after: tuple[str, ...],
        first: str,
        layout: GpuLayout,
        sized: tuple[int, tuple[int, ...]],
    ) -> Steps[None]:
        """Queue the next GPU stage's first round behind ``upstream``, this stage ``sized``
        (peak, workers on each GPU of ``layout``).

        Between two GPU stages every GPU would otherwise idle while the flow collects the
        last tasks, frees the models and submits the next stage, and while Prefect starts
        that stage's first tasks on the workers: 1.6-2.1 s per transition within a wave,
        2.4-3.9 s between waves (BENCHMARKS.md, waves). Queued, the next stage's task of a
        chunk starts on a free GPU worker as soon as this stage's task of that chunk ends;
        the next wave's first stage, whose inputs are ready, as soon as a worker is free.

        A stage in between whose videos here all need no GPU (unprompted object masks) is
        written now, in the flow, if it does not read this stage's outputs; the walk then
        goes on to the stage after it. Such a stage may so write a video this stage then
        fails: its record stays in the run report, and the video goes no further.
        """
        if not after:
            if self._next is not None and first != stage:
                videos = yield from self._next_wave_videos()
                yield from self._queue_ready(first, videos, layout, sized, stage)
                self._ahead[stage] = first
            return
        reached = list(upstream.videos)
        for following in after:
            book = self.books[following]
            checked: Checked = (yield Check(following, tuple(reached))) if reached else Checked()
            gpu_work = [v for v in reached if v.video_id not in checked.current and v.video_id in checked.needs_gpu]
            if gpu_work:
                yield from self._queue(following, gpu_work, layout, sized, stage, upstream)
                self._ahead[stage] = following
                return
            if stage in book.facts.inputs:
                return  # its outputs need this stage's: written once this stage is done
            reached = yield from self._write_early(book, reached)

    def _queue_ready(
        self,
        stage: str,
        videos: list[VideoRef],
        layout: GpuLayout,
        earlier: tuple[int, tuple[int, ...]],
        behind: str,
    ) -> Steps[None]:
        """Queue ``stage``'s first round of the next wave, whose videos are ready for it."""
        book = self.books[stage]
        todo, checked = yield from self._split(book, videos)
        todo = yield from self._without_gpu(book, todo, checked)
        self._early.setdefault(stage, set()).update(_ids(videos) - _ids(todo))
        if todo:
            yield from self._queue(stage, todo, layout, earlier, behind)

    def _queue(
        self,
        stage: str,
        videos: list[VideoRef],
        layout: GpuLayout,
        earlier: tuple[int, tuple[int, ...]],
        behind: str,
        upstream: _Batch | None = None,
    ) -> Steps[None]:
        """Submit ``stage``'s first round of the wave for ``videos`` now, each task behind its
        ``upstream`` task if given, if the stage's known peak fits beside the ``earlier``
        (peak, workers on each GPU) of stage ``behind`` still running."""
        book = self.books[stage]
        yield from self._load_profile(book, layout)
        if self.shape.threads or book.known_peak is None:
            return
        knobs = self.knobs
        peak, (earlier_peak, earlier_workers) = book.known_peak, earlier
        try:
            profiles = size_gpus(stage, layout, peak, PackingSettings(0, knobs.headroom, knobs.max_workers_per_gpu))
        except PeakExceedsGpuError:
            return  # its own packing fails the stage with the reason
        # Each GPU's own size, down to what fits beside the earlier stage there.
        beside = [
            workers_beside((earlier_peak, workers), peak, profile.workers_per_gpu, gpu.available_bytes, knobs.headroom)
            if profile.workers_per_gpu
            else 0
            for profile, gpu, workers in zip(profiles, layout.gpus, earlier_workers, strict=True)
        ]
        if None in beside:
            yield Log("info", f"{stage}: waits for the GPUs as a whole: it does not fit beside {behind}")
            return
        size = layout.request([k or 0 for k in beside], at_least=peak)
        admitted = layout.admitted(size)
        ids = _ids(videos)
        if upstream is not None:
            batch = _Batch((next(self._rounds),), tuple(v for v in upstream.videos if v.video_id in ids))
            yield SubmitAfter(
                batch.rounds[0], stage, upstream.rounds, frozenset(ids), size.workers_per_gpu, size.need_bytes
            )
        else:
            batch = yield from self._submit_round(stage, videos, sum(admitted), size)
        self._queued[stage] = _Queued(batch, size, admitted, layout)
        book.todo |= ids
        fewer = max(p.workers_per_gpu - k for p, k in zip(profiles, admitted, strict=True))
        beside_note = f", {fewer} fewer than its own to fit beside" if fewer > 0 else ""
        yield Log(
            "info",
            f"{stage}: {len(ids)} videos queued behind {behind}'s tasks ({layout.per_gpu(admitted)}{beside_note})",
        )

    def _write_early(self, book: _Book, videos: list[VideoRef]) -> Steps[list[VideoRef]]:
        """Have the flow write ``videos`` of ``book``'s stage now (they need no GPU); return
        those that are current there afterwards."""
        todo, checked = yield from self._split(book, videos)
        left = yield from self._without_gpu(book, todo, checked)  # a write that failed in the flow: a task later
        self._early.setdefault(book.name, set()).update(_ids(videos) - _ids(left))
        current = {record.video_id for record in book.wave.records}
        return [video for video in videos if video.video_id in current]

    def _settle_ahead(self, stage: str) -> Steps[None]:
        """Wait for the round queued behind ``stage`` and free its models, so a smaller
        round of ``stage`` after out-of-memory failures has the GPUs to itself."""
        ahead = self._ahead.get(stage)
        if ahead is not None and ahead in self._queued:
            yield Settle(self._queued[ahead].batch.rounds)
            yield Release(ahead)
