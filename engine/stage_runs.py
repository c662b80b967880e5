"""One stage across the waves of a run: what to skip, how to run it, what to publish.

A :class:`StageRun` lives for a whole ``process-waves`` subflow. For each wave it skips the
videos whose outputs are current, runs the rest as tasks on the run's cluster (CPU stages
submitted and collected separately, so they run beside a GPU stage; GPU stages by the
packing policy of :mod:`trackset.scheduling.packing`, held to the first ``k`` workers of each GPU by
Dask resources, their profiling videos in a ``profile-memory`` subflow), frees the stage's
models on every worker, and folds the outcome into the stage's total. A GPU stage's videos
that need no GPU (unprompted clips of the object masks) are written here, without a task.
It keeps the stage's progress count behind ``progress-<stage>``, the GPU peak measured on
the first wave (reused by later waves and stored for later runs,
:mod:`trackset.scheduling.profile_store`), and publishes ``stage-<stage>`` when the run ends.
Quarantines go into the manifest here.

Once a stage's peak is known, its first round of a wave does not wait for the stage before
to end: that stage's first round queues it (:meth:`StageRun._look_ahead`), each task behind
the upstream task of its videos, and the last GPU stage of a wave queues the next wave's
first one. Dask then starts the next stage on each GPU worker as it frees, instead of every
GPU idling through the flow's collection, the models' release, the submission and Prefect's
task start at each stage boundary. Where the two stages' workers do not fit one GPU
together, the next stage waits, as it always did.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prefect import get_run_logger, tags
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.futures import wait

from trackset.cluster.plan import ClusterPlan, gpu_task_resources
from trackset.config.settings import Settings
from trackset.dataset.manifest import Manifest
from trackset.dataset.registration import quarantine_key
from trackset.domain import StageOutcome, StageRecord, VideoRef, stage_slug
from trackset.engine.run_cluster import RunCluster
from trackset.engine.submission import (
    ProgressReport,
    SubmittedStage,
    collect_stage_tasks,
    log_failures,
    submit_after,
    submit_stage_tasks,
)
from trackset.errors import ClusterShapeError
from trackset.flows.profile_memory import profile_memory
from trackset.formats.layout import DatasetLayout
from trackset.gpu.inventory import GpuInfo
from trackset.gpu.sizing import PeakExceedsGpuError, format_gib, plan_workers_per_gpu, stages_fit_together
from trackset.reports.run_report import RunReport, StageTally
from trackset.scheduling.packing import PackingResult, PackingSettings, pack_gpu_stage
from trackset.scheduling.profile_store import ProfileStore
from trackset.scheduling.worklist import WorkList
from trackset.stages.base import worker_name
from trackset.stages.registry import build_stage, prior_peak_bytes, stage_inputs, stage_spec


def chunk_videos(videos: int, slots: int, most: int) -> int:
    """Videos per task of a GPU round or a CPU stage: ``most`` (``cluster.gpu_task_videos``,
    ``cluster.cpu_task_videos``), fewer when the videos would otherwise give some of the
    ``slots`` (workers they may use) fewer than two tasks.

    Two tasks per slot at least leave Dask room to balance: with one chunk per slot, the
    slowest chunk holds up the stage while the other slots idle. A round of 6 videos on
    4 GPU slots went as 3 chunks of 2, so one GPU got 4 videos and the other 2 (BENCHMARKS.md,
    waves); an import of 5 videos on 2 CPU workers went as shards of 4 and 1.

    Examples:
        >>> chunk_videos(500, 16, 8), chunk_videos(100, 16, 8), chunk_videos(20, 16, 8), chunk_videos(6, 4, 8)
        (8, 3, 1, 1)
    """
    return max(1, min(most, videos // (2 * max(slots, 1))))


@dataclass
class StageProgress:
    """How many of a stage's videos are finished, behind its ``progress-<stage>`` artifact."""

    report: ProgressReport
    done: int = 0

    def for_subflow(self) -> ProgressReport:
        """The handle a subflow or a collection reports through, from what is finished now."""
        return ProgressReport(self.report.artifact_id, self.report.total, self.done)


@dataclass(frozen=True)
class QueuedRound:
    """A GPU stage's first round of a wave, submitted behind the previous stage's tasks.

    Attributes:
        submitted: its tasks, each waiting on one task of the previous stage.
        workers_per_gpu: the size it was submitted at, from the stage's known peak.
        gpus: the GPUs that size was computed from, so the stage's own packing sizes alike.
    """

    submitted: SubmittedStage
    workers_per_gpu: int
    gpus: list[GpuInfo]

    @property
    def video_ids(self) -> set[str]:
        return {video.video_id for batch in self.submitted.futures.values() for video in batch}


@dataclass(frozen=True)
class NextWave:
    """The next wave, for the last GPU stage of a wave to queue the first one's round.

    Attributes:
        first: the wave's first GPU stage.
        videos: the wave's videos that got through its CPU stages (waits for them).
    """

    first: StageRun
    videos: Callable[[], list[VideoRef]]


class StageRun:
    """One stage over every wave of a run (see the module docstring)."""

    def __init__(
        self,
        stage: str,
        settings: Settings,
        total: int,
        cluster: RunCluster,
        plan: ClusterPlan | None,
        report: RunReport,
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.cluster = cluster
        self.plan = plan
        self.checker = build_stage(stage, settings)
        self.config = self.checker.config
        self.tally = StageTally(stage)
        self.report = report
        self._wave = StageOutcome(stage)  # this wave's records: the only per-video state kept
        self._todo: set[str] = set()
        self.total = total
        self.uses_gpu = stage_spec(stage).resources.uses_gpu
        self.batched = stage_spec(stage).batched
        self.known_peak: int | None = None
        self.profiled = False  # an earlier wave of this run profiled the stage (with or without a peak)
        self.profiles = ProfileStore(settings.paths.work_dir)
        self.accounted = 0  # videos of the run this stage is finished with (done, skipped, failed or dropped)
        self._progress: StageProgress | None = None
        self._gpus_checked = False
        self._queued: QueuedRound | None = None  # this wave's first round, queued by the stage before
        self._early: set[str] = set()  # this wave's videos the stage before already wrote here
        self._ahead: StageRun | None = None  # the stage this one queued a round of, this wave

    @property
    def progress(self) -> StageProgress:
        """Created on first use, so a stage with nothing to do publishes no progress."""
        if self._progress is None:
            artifact = create_progress_artifact(
                100.0 * self.accounted / max(self.total, 1),
                key=f"progress-{stage_slug(self.stage)}",
                description=f"Percent of {self.total} videos through {self.stage}",
            )
            self._progress = StageProgress(ProgressReport(artifact, self.total), self.accounted)
        return self._progress

    def split(self, videos: list[VideoRef]) -> list[VideoRef]:
        """Record the videos already current as skipped; return the rest, to run."""
        todo = [video for video in videos if not self.checker.is_done(video)]
        todo_ids = {video.video_id for video in todo}
        self._todo |= todo_ids
        self._wave.records += [
            StageRecord(v.video_id, self.stage, "skipped", worker=worker_name())
            for v in videos
            if v.video_id not in todo_ids
        ]
        deleted = [v.video_id for v in todo if self.checker.was_deleted(v)]
        if deleted:
            get_run_logger().info(
                "%s: %d videos recompute from their source (e.g. %s): their intermediates were deleted "
                "(run.keep_intermediates) and a setting changed what depends on them",
                self.stage,
                len(deleted),
                ", ".join(deleted[:5]),
            )
        return todo

    def submit(self, videos: list[VideoRef]) -> SubmittedStage | None:
        """Start a CPU stage on ``videos`` without waiting; None when all are current."""
        todo = self.split(videos)
        if not todo:
            return None
        resources = self.plan.cpu_task_resources if self.plan is not None else None
        shard = self._cpu_shard(len(todo)) if self.batched else None
        return submit_stage_tasks(self.stage, todo, self.config, self.settings.retry, shard, resources)

    def _cpu_shard(self, videos: int) -> int:
        """Videos per task of a batched CPU stage (:func:`chunk_videos` over the CPU workers)."""
        slots = self.plan.cpu_slots if self.plan is not None else self.settings.cluster.cpu_workers
        return chunk_videos(videos, slots, self.settings.cluster.cpu_task_videos)

    def collect(self, wave: int, videos: list[VideoRef], submitted: SubmittedStage | None) -> list[VideoRef]:
        """Wait for :meth:`submit`'s tasks; return the videos of ``videos`` that got through.

        ``wave`` is how many videos the wave has, those an earlier stage dropped included.
        """
        if submitted is not None:
            self._fold(collect_stage_tasks(submitted, self.progress.for_subflow()))
        return self._advance(wave, videos)

    def run(
        self, wave: int, videos: list[VideoRef], after: Sequence[StageRun] = (), next_wave: NextWave | None = None
    ) -> list[VideoRef]:
        """Run the stage on ``videos`` now (GPU stages through the packing policy).

        ``after`` are the GPU stages that follow in the wave: the first of them with GPU
        work gets its first round queued behind this stage's tasks (:meth:`_look_ahead`).
        The last GPU stage of a wave gets ``next_wave`` instead, and queues its first GPU stage.
        """
        if not self.uses_gpu:
            return self.collect(wave, videos, self.submit(videos))
        queued, self._queued = self._queued, None
        early, self._early = self._early, set()
        self._ahead = None
        handled = early | (queued.video_ids if queued is not None else set())
        todo = self._without_gpu(self.split([video for video in videos if video.video_id not in handled]))
        covered = [video for video in videos if queued is not None and video.video_id in queued.video_ids]
        if queued is not None and not covered:
            # Every video of the queued round failed the stage before: its tasks ran nothing.
            self._fold(collect_stage_tasks(queued.submitted))
            queued = None
        if todo or covered:
            try:
                self._fold(self._run_gpu(todo + covered, after, queued, next_wave))
            finally:
                self.cluster.release(self.stage)  # the next stage gets the GPU memory
        return self._advance(wave, videos)

    def _without_gpu(self, videos: list[VideoRef]) -> list[VideoRef]:
        """Run here the videos whose outputs need no GPU (:meth:`~trackset.stages.base.Stage.needs_gpu`);
        return the others, for GPU tasks.

        A typed video error fails the video here, as in a task. Any other error (a full disk,
        say) must not fail the run from the flow: that video goes to a task, whose retries
        and isolation apply to it as to every other.
        """
        local = [video for video in videos if not self.checker.needs_gpu(video)]
        if not local:
            return videos
        logger = get_run_logger()
        outcome, written = StageOutcome(self.stage), set()
        for video in local:
            try:
                result = self.checker.run_isolated(video)
            except Exception as exc:  # the video's task retries it, as any task's error
                logger.warning("%s: video %s goes to a task after %s", self.stage, video.video_id, repr(exc))
                continue
            outcome.add(result)
            written.add(video.video_id)
        self._fold(outcome)
        logger.info("%s: %d videos need no GPU; written here, without a task", self.stage, len(written))
        log_failures(outcome)
        return [video for video in videos if video.video_id not in written]

    def finish(self) -> StageTally:
        """Publish ``stage-<stage>`` for the whole run and return the stage's tally."""
        create_table_artifact(
            self.tally.table(),
            key=f"stage-{stage_slug(self.stage)}",
            description=(
                f"{self.stage} in this run: each worker's videos, seconds and peak memory, then the failures; "
                f"every video in {self.report.path}"
            ),
        )
        return self.tally

    def _fold(self, part: StageOutcome) -> None:
        for record in part.records:
            if record.status == "skipped" and record.video_id in self._todo:
                # Due when the wave started and current when its task ran: an earlier attempt
                # of this run (a worker killed mid-chunk, a retried shard) finished it.
                record.status = "done"
        self._wave.records += part.records
        self._wave.failures += part.failures

    def _advance(self, wave: int, videos: list[VideoRef]) -> list[VideoRef]:
        """Count the wave as finished here and return its videos this stage let through.

        Videos an earlier stage dropped count too, so the progress of every stage ends at 100 %.
        """
        self.accounted += wave
        if self._progress is not None:
            self._progress.done = self.accounted
            self._progress.for_subflow().report(0, final=True)
        succeeded = {record.video_id for record in self._wave.records}
        self.report.write(self._wave)
        self.tally.add(self._wave)
        self._wave, self._todo = StageOutcome(self.stage), set()
        return [video for video in videos if video.video_id in succeeded]

    # -- GPU stages ------------------------------------------------------------------------

    def _run_gpu(
        self,
        videos: list[VideoRef],
        after: Sequence[StageRun] = (),
        queued: QueuedRound | None = None,
        next_wave: NextWave | None = None,
    ) -> StageOutcome:
        """Give the packing policy its ``run``, then record what it decided.

        With a ``queued`` round (its tasks already submitted, sized from the known peak on
        ``queued.gpus``), the first sized round collects those tasks and runs only the
        videos they do not hold; the cap on workers per GPU is that round's size, so the
        packing sizes the round exactly as it was queued.
        """
        cluster = self.settings.cluster
        if self.plan is None:
            # Threads in one process: nothing to size, nothing to shrink.
            packing = PackingSettings(cluster.profiling_videos, cluster.headroom, cluster.max_workers_per_gpu)
            result = pack_gpu_stage(
                self.stage,
                videos,
                lambda batch, _w, *, profiling: self._tasks(batch, None, cluster.cpu_workers),
                [],
                packing,
                resizable=False,
            )
        else:
            plan = self.cluster.plan() or self.plan  # read again: a restarted worker has a new address
            if not plan.gpus:
                raise ClusterShapeError(
                    f"{self.stage}: no worker of the cluster at {self.cluster.address} offers a GPU "
                    "(start GPU workers pinned with CUDA_VISIBLE_DEVICES and --resources GPU=1)"
                )
            gpus = queued.gpus if queued is not None else self._gpus(plan)
            most = min(cluster.max_workers_per_gpu, plan.slots_per_gpu)
            if queued is not None:
                most = queued.workers_per_gpu
            packing = PackingSettings(cluster.profiling_videos, cluster.headroom, most)
            sized, profiled_peak = 0, None

            def run(batch: list[VideoRef], workers_per_gpu: int, *, profiling: bool) -> StageOutcome:
                nonlocal sized, queued, profiled_peak
                resources = gpu_task_resources(workers_per_gpu)
                if profiling:
                    part = self._profile(batch, resources)
                    peaks = [r.peak_bytes for r in part.records if r.status == "done" and r.peak_bytes]
                    profiled_peak = max(peaks, default=None)  # the packing's peak, as it takes it
                    return part
                sized += 1
                if sized > 1:
                    self._settle_ahead()  # a smaller round after out-of-memory has the GPUs to itself
                get_run_logger().info(
                    "%s: %d videos on %d GPUs x %d workers", self.stage, len(batch), len(gpus), workers_per_gpu
                )
                slots = len(gpus) * workers_per_gpu
                waiting, queued = queued, None
                held = waiting.video_ids if waiting is not None else set()
                fresh = [video for video in batch if video.video_id not in held]
                round_tag = f"workers-per-gpu-{workers_per_gpu}"  # each round's task runs, in the UI and the API
                with tags(round_tag):
                    submitted = self._submit(fresh, resources, slots) if fresh else None
                if waiting is not None:
                    submitted = waiting.submitted.joined(submitted)
                if submitted is None:
                    return StageOutcome(self.stage)
                peak = self.known_peak if self.known_peak is not None else profiled_peak
                if sized == 1 and peak is not None:
                    self._look_ahead(submitted, after, next_wave, gpus, (peak, workers_per_gpu))
                outcome = collect_stage_tasks(submitted, self.progress.for_subflow())
                # A queued task skips the videos its upstream task failed; those the stage
                # before finished later (a smaller round, a rerun alone) run here now.
                seen = {r.video_id for r in outcome.records} | {f.video_id for f in outcome.failures}
                missed = [video for video in batch if video.video_id in held and video.video_id not in seen]
                if missed:
                    with tags(round_tag):
                        part = self._tasks(missed, resources, slots)
                    outcome.records += part.records
                    outcome.failures += part.failures
                return outcome

            result = pack_gpu_stage(
                self.stage,
                videos,
                run,
                gpus,
                packing,
                prior_peak_bytes=prior_peak_bytes(self.stage, self.settings),
                known_peak_bytes=self.known_peak,
                profile=not self.profiled,
            )
            self._remember_peak(result, gpus)
        self._record(result)
        return result.outcome

    def _gpus(self, plan: ClusterPlan) -> list[GpuInfo]:
        """The GPUs as they are now; on the first wave, also a stored profile to start from."""
        gpus = self.cluster.gpu_infos(plan)
        self._load_profile(gpus)
        return gpus

    def _load_profile(self, gpus: list[GpuInfo]) -> None:
        """Once per run: start from the profile an earlier run stored for these GPUs, if any."""
        if not self._gpus_checked:
            self._gpus_checked = True
            stored = self.profiles.load(self.stage, self.config.cache_key(), gpus)
            if stored is not None:
                self.known_peak = stored.peak_bytes
                get_run_logger().info(
                    "%s: starting from the memory profile in %s (peak %s, measured by an earlier run); not profiling",
                    self.stage,
                    self.profiles.path(self.stage),
                    format_gib(stored.peak_bytes),
                )

    def _remember_peak(self, result: PackingResult, gpus: list[GpuInfo]) -> None:
        """Reuse the profile for the next wave, unless it under-estimated (a wave shrank).

        A profiling round that measured no peak counts too (``profiled``, no ``known_peak``):
        a stage that charges no GPU memory would otherwise profile every wave again and
        measure nothing again.
        """
        shrank = any(r.out_of_memory for r in result.rounds if not r.profiling)
        if shrank:
            self.known_peak, self.profiled = None, False
            self.profiles.forget(self.stage)
            return
        self.profiled = self.profiled or any(r.profiling for r in result.rounds)
        if result.peak_source == "profiled" and result.peak_bytes is not None:
            self.known_peak = result.peak_bytes
            self.profiles.save(self.stage, self.config.cache_key(), gpus, result.peak_bytes)

    def _tasks(self, videos: list[VideoRef], resources: dict[str, float] | None, slots: int) -> StageOutcome:
        """One round of the stage's tasks, here in ``process-waves``, asking for ``resources``."""
        return collect_stage_tasks(self._submit(videos, resources, slots), self.progress.for_subflow())

    def _submit(self, videos: list[VideoRef], resources: dict[str, float] | None, slots: int) -> SubmittedStage:
        """Submit a round of the stage's tasks, without waiting.

        Videos go in chunks (:func:`chunk_videos`): a Prefect task per video would cost its
        overhead and a task run in the server's database for each of them.
        """
        chunk = chunk_videos(len(videos), slots, self.settings.cluster.gpu_task_videos)
        return submit_stage_tasks(self.stage, videos, self.config, self.settings.retry, chunk, resources)

    # -- the next stage's first round, queued behind this one --------------------------------

    def _look_ahead(
        self,
        upstream: SubmittedStage,
        after: Sequence[StageRun],
        next_wave: NextWave | None,
        gpus: list[GpuInfo],
        sized: tuple[int, int],
    ) -> None:
        """Queue the next GPU stage's first round behind this round, ``sized`` (peak, workers per GPU).

        Between two GPU stages every GPU would otherwise idle while the flow collects the
        last tasks, frees the models and submits the next stage, and while Prefect starts
        that stage's first tasks on the workers: 1.6-2.1 s per transition within a wave,
        2.4-3.9 s between waves (BENCHMARKS.md, waves). Queued, the next stage's task of a
        chunk starts on a free GPU worker as soon as this stage's task of that chunk ends;
        the next wave's first stage, whose inputs are ready, as soon as a worker is free.
        It is done only where the next stage's peak is known (a later wave, or a stored
        profile) and fits beside this one on every GPU
        (:func:`~trackset.gpu.sizing.stages_fit_together`).

        A stage in between whose videos here all need no GPU (unprompted object masks) is
        written now, in the flow, if it does not read this stage's outputs; the walk then
        goes on to the stage after it. Such a stage may so write a video this stage then
        fails: its record stays in the run report, and the video goes no further.
        """
        if not after:
            if next_wave is not None and next_wave.first is not self:
                next_wave.first._queue_ready(next_wave.videos(), gpus, sized, self.stage)
                self._ahead = next_wave.first
            return
        reached = [video for batch in upstream.futures.values() for video in batch]
        for nxt in after:
            gpu_work = [v for v in reached if not nxt.checker.is_done(v) and nxt.checker.needs_gpu(v)]
            if gpu_work:
                nxt._queue(gpu_work, gpus, sized, self.stage, upstream)
                self._ahead = nxt
                return
            if self.stage in stage_inputs(nxt.stage, self.settings):
                return  # its outputs need this stage's: written once this stage is done
            reached = nxt._write_early(reached)

    def _queue_ready(self, videos: list[VideoRef], gpus: list[GpuInfo], earlier: tuple[int, int], behind: str) -> None:
        """Queue this stage's first round of the next wave, whose videos are ready for it."""
        todo = self._without_gpu(self.split(videos))
        self._early |= {video.video_id for video in videos} - {video.video_id for video in todo}
        if todo:
            self._queue(todo, gpus, earlier, behind)

    def _queue(
        self,
        videos: list[VideoRef],
        gpus: list[GpuInfo],
        earlier: tuple[int, int],
        behind: str,
        upstream: SubmittedStage | None = None,
    ) -> None:
        """Submit this stage's first round of the wave for ``videos`` now, each task behind
        its ``upstream`` task if given, if this stage's known peak fits beside the ``earlier``
        (peak, workers per GPU) of stage ``behind`` still running."""
        self._load_profile(gpus)
        if self.plan is None or self.known_peak is None:
            return
        cluster = self.settings.cluster
        most = min(cluster.max_workers_per_gpu, self.plan.slots_per_gpu)
        try:
            workers = min(
                plan_workers_per_gpu(gpu.available_bytes, self.known_peak, cluster.headroom, most) for gpu in gpus
            )
        except PeakExceedsGpuError:
            return  # its own packing fails the stage with the reason
        if not all(
            stages_fit_together(earlier, (self.known_peak, workers), gpu.available_bytes, cluster.headroom)
            for gpu in gpus
        ):
            get_run_logger().info("%s: waits for the GPUs as a whole: it does not fit beside %s", self.stage, behind)
            return
        resources = gpu_task_resources(workers)
        ids = {video.video_id for video in videos}
        with tags(f"workers-per-gpu-{workers}"):
            if upstream is not None:
                submitted = submit_after(self.stage, upstream, ids, self.config, self.settings.retry, resources)
            else:
                submitted = self._submit(videos, resources, len(gpus) * workers)
        self._queued = QueuedRound(submitted, workers, gpus)
        self._todo |= ids
        get_run_logger().info(
            "%s: %d videos queued behind %s's tasks (%d workers per GPU)", self.stage, len(ids), behind, workers
        )

    def _write_early(self, videos: list[VideoRef]) -> list[VideoRef]:
        """Write ``videos`` in the flow now (they need no GPU, :meth:`_without_gpu`); return
        those that are current here afterwards."""
        todo = self._without_gpu(self.split(videos))
        left = {video.video_id for video in todo}  # its write failed in the flow: its task runs it later
        self._early |= {video.video_id for video in videos} - left
        current = {record.video_id for record in self._wave.records}
        return [video for video in videos if video.video_id in current]

    def _settle_ahead(self) -> None:
        """Wait for the round queued behind this stage and free its models, so a smaller
        round of this stage after out-of-memory failures has the GPUs to itself."""
        ahead = self._ahead
        if ahead is not None and ahead._queued is not None:
            wait(list(ahead._queued.submitted.futures))
            self.cluster.release(ahead.stage)

    def _profile(self, videos: list[VideoRef], resources: dict[str, float]) -> StageOutcome:
        """The profiling round, as its own ``profile-memory`` subflow on the run's cluster."""
        subflow = profile_memory.with_options(task_runner=self.cluster.task_runner())
        with WorkList.written(self.stage, videos) as work:
            return subflow(self.stage, work, self.config, self.settings.retry, self.progress.for_subflow(), resources)

    def _record(self, result: PackingResult) -> None:
        """Log the packing, publish the memory profile and write quarantines into the manifest."""
        logger = get_run_logger()
        stage = self.stage
        if result.error:
            logger.error("%s", result.error)
        profiled = sum(r.videos for r in result.rounds if r.profiling)
        if result.peak_source == "none" and profiled:
            logger.warning("%s: no peak measured on %d profiling videos; keeping one worker per GPU", stage, profiled)
        if result.profiles:
            create_table_artifact(
                [p.to_row() for p in result.profiles],
                key=f"memory-profile-{stage_slug(stage)}",
                description=f"Peak GPU memory of {stage} ({result.peak_source}) and the workers per GPU it allows",
            )
            logger.info(
                "%s: peak %s (%s) -> %d workers per GPU (%s)",
                stage,
                format_gib(result.profiles[0].peak_bytes),
                result.peak_source,
                min(p.workers_per_gpu for p in result.profiles),
                ", ".join(f"GPU {p.gpu_index}: {format_gib(p.total_bytes)} available" for p in result.profiles),
            )
        for previous, current in itertools.pairwise(result.rounds):
            if current.workers_per_gpu < previous.workers_per_gpu:
                logger.warning(
                    "%s: %d videos ran out of memory; retrying them with %d workers per GPU",
                    stage,
                    current.videos,
                    current.workers_per_gpu,
                )
        if not result.quarantined:
            return
        manifest = Manifest.load(DatasetLayout(self.settings.paths.dataset_dir).manifest)
        hashes = {entry.video_id: entry.sha256 for entry in manifest.entries()}
        for failure in result.quarantined:
            sha = hashes.get(failure.video_id, "")
            key = quarantine_key(self.config, self.settings.cluster, sha)
            manifest.quarantine(failure.video_id, sha, key, stage, failure.reason)
            logger.error("quarantined video %s in %s: %s", failure.video_id, stage, failure.reason)
