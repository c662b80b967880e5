"""The engine: carries out the wave planner's commands on Prefect and Dask, and reports back.

The planner (:mod:`trackset.scheduling.planner`) decides what runs where and when; this
module only does it, one command at a time (:func:`~trackset.scheduling.commands.drive`):
it asks the stages whether a video is current, submits tasks to the run's cluster
(:mod:`trackset.engine.submission`), reports each task as it ends, runs the profiling
videos in their ``profile-memory`` subflow, frees a stage's models on the GPU workers,
reads the GPUs, keeps the memory profiles, and publishes what the planner decided:
``progress-<stage>`` and ``progress-run`` (with the run's rate, ETA and GPU-hours),
``memory-profile-<stage>``, the run report, quarantines in the manifest, and
``stage-<stage>`` when the run ends.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from prefect import get_run_logger, tags
from prefect.artifacts import create_table_artifact
from prefect.futures import wait

from trackset.cluster.plan import ClusterPlan, gpu_task_resources
from trackset.config.settings import RetrySettings, Settings
from trackset.dataset.manifest import Manifest
from trackset.dataset.registration import quarantine_key
from trackset.dataset.retention import release_intermediates
from trackset.domain import StageOutcome, VideoRef, stage_slug
from trackset.engine.run_cluster import RunCluster
from trackset.engine.submission import (
    ProgressBoard,
    SubmittedStage,
    log_failures,
    submit_after,
    submit_stage_tasks,
    task_reports,
)
from trackset.errors import ClusterShapeError
from trackset.formats.layout import DatasetLayout
from trackset.gpu.sizing import format_gib
from trackset.reports.pictures import pictures_dir, write_run_pictures
from trackset.reports.run_report import RunReport, StageTally
from trackset.scheduling import commands as c
from trackset.scheduling.eta import Estimator
from trackset.scheduling.facts import Knobs, RunShape, stage_facts
from trackset.scheduling.outcomes import TaskReport
from trackset.scheduling.packing import Round
from trackset.scheduling.planner import WavePlanner
from trackset.scheduling.profile_store import ProfileStore
from trackset.scheduling.worklist import WorkList
from trackset.stages.base import Stage, worker_name
from trackset.stages.config import StageConfig
from trackset.stages.registry import build_stage, stage_spec

LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _per_gpu(round_: Round) -> str:
    """``k workers per GPU`` where every GPU ran as many, else each GPU's."""
    counts = set(round_.per_gpu) or {round_.workers_per_gpu}
    if len(counts) == 1:
        return f"{counts.pop()} workers per GPU"
    return "workers per GPU " + "/".join(str(k) for k in round_.per_gpu)


class ProfileSubflow(Protocol):
    """The ``profile-memory`` subflow (``trackset.flows.profile_memory``), handed in by the flow
    that runs the engine, so the engine never imports the flows."""

    def with_options(self, *, task_runner: Any) -> Callable[..., list[TaskReport]]: ...


def stream(
    videos: list[VideoRef],
    settings: Settings,
    stages: list[str],
    report: RunReport,
    cluster: RunCluster,
    plan: ClusterPlan | None,
    profile: ProfileSubflow,
    *,
    free_intermediates: bool = True,
) -> list[StageTally]:
    """Run ``stages`` over ``videos`` in waves on the run's ``cluster`` (``plan``: its workers
    as they report themselves, None on threads); return each stage's tally.

    Raises:
        ClusterShapeError: a GPU stage is to run and no worker of the cluster offers a GPU.
    """
    engine = Engine(settings, stages, report, cluster, plan, profile, len(videos))
    uses_gpu = any(stage_spec(stage).resources.uses_gpu for stage in stages)
    if uses_gpu and plan is not None and not plan.gpus and not cluster.elastic:
        raise ClusterShapeError(
            f"no worker of the cluster at {cluster.address} offers a GPU "
            "(start GPU workers pinned with CUDA_VISIBLE_DEVICES and --resources GPU=1)"
        )
    shape = RunShape(
        threads=plan is None,
        cpu_slots=plan.cpu_slots if plan is not None else settings.cluster.cpu_workers,
        free_intermediates=free_intermediates,
        here=worker_name(),
    )
    planner = WavePlanner(videos, stage_facts(stages, settings), Knobs.from_settings(settings), shape)
    c.drive(planner.run(), engine.execute)
    return engine.finish()


class Engine:
    """Carries out one run's commands (module docstring); one instance per ``process-waves`` run."""

    def __init__(
        self,
        settings: Settings,
        stages: Sequence[str],
        report: RunReport,
        cluster: RunCluster,
        plan: ClusterPlan | None,
        profile: ProfileSubflow,
        videos: int,
    ) -> None:
        self.settings = settings
        self.report = report
        self.cluster = cluster
        self.plan = plan
        self.profile_subflow = profile
        self.stages: dict[str, Stage[Any]] = {stage: build_stage(stage, settings) for stage in stages}
        self.tallies = {stage: StageTally(stage) for stage in stages}
        # On threads no task holds a GPU share of its own: the ETA then counts every stage's seconds.
        gpu_stages = [stage for stage in stages if stage_spec(stage).resources.uses_gpu] if plan is not None else []
        self.progress = ProgressBoard(Estimator(stages, videos, time.monotonic(), gpu_stages))
        self.profiles = ProfileStore(settings.paths.work_dir)
        self.logger = get_run_logger()
        self._rounds: dict[int, SubmittedStage] = {}  # submitted and not yet reported, by the planner's id
        self._reporting: dict[tuple[int, ...], Iterator[TaskReport]] = {}
        self._handlers: dict[type, Callable[[Any], Any]] = {
            c.Check: self.check,
            c.WriteHere: self.write_here,
            c.Submit: self.submit,
            c.SubmitAfter: self.submit_after,
            c.NextReport: self.next_report,
            c.Settle: self.settle,
            c.Profile: self.run_profile,
            c.Release: lambda command: self.cluster.release(command.stage),
            c.ReadGpus: self.read_gpus,
            c.LoadProfile: self.load_profile,
            c.SaveProfile: self.save_profile,
            c.ForgetProfile: lambda command: self.profiles.forget(command.stage),
            c.GpuWork: lambda command: self.cluster.want(command.videos),
            c.Log: self.log,
            c.Publish: lambda command: self.progress.publish(
                command.stage, command.done, command.total, final=command.final, spent=command.spent
            ),
            c.Packed: self.record_packing,
            c.CloseWave: self.close_wave,
            c.DrawPictures: self.draw_pictures,
            c.FreeIntermediates: self.free_intermediates,
        }

    def execute(self, command: c.Command) -> Any:
        """Carry out ``command``; return its reply (:mod:`trackset.scheduling.commands`)."""
        return self._handlers[type(command)](command)

    def finish(self) -> list[StageTally]:
        """Publish ``stage-<stage>`` for the whole run and the run's progress as it ended;
        return every stage's tally."""
        self.progress.finish()
        for tally in self.tallies.values():
            create_table_artifact(
                tally.table(),
                key=f"stage-{stage_slug(tally.stage)}",
                description=(
                    f"{tally.stage} in this run: each worker's videos, seconds and peak memory, then the failures; "
                    f"every video in {self.report.path}"
                ),
            )
        return list(self.tallies.values())

    def _config(self, stage: str) -> StageConfig:
        return self.stages[stage].config

    @property
    def _retry(self) -> RetrySettings:
        return self.settings.retry

    # -- the stages' own checks and writes ----------------------------------------------------

    def check(self, command: c.Check) -> c.Checked:
        stage = self.stages[command.stage]
        current = {video.video_id for video in command.videos if stage.is_done(video)}
        others = [video for video in command.videos if video.video_id not in current]
        gpu = stage_spec(command.stage).resources.uses_gpu
        return c.Checked(
            frozenset(current),
            frozenset(video.video_id for video in others if stage.was_deleted(video)),
            frozenset(video.video_id for video in others if gpu and stage.needs_gpu(video)),
        )

    def write_here(self, command: c.WriteHere) -> StageOutcome:
        """Write videos that need no GPU in the flow.

        A typed video error fails the video here, as in a task. Any other error (a full disk,
        say) must not fail the run from the flow: that video is left out of the reply, for a
        task, whose retries and isolation apply to it as to every other.
        """
        stage = self.stages[command.stage]
        outcome = StageOutcome(command.stage)
        for video in command.videos:
            try:
                outcome.add(stage.run_isolated(video))
            except Exception as exc:  # the video's task retries it, as any task's error
                self.logger.warning("%s: video %s goes to a task after %s", command.stage, video.video_id, repr(exc))
        written = len(outcome.records) + len(outcome.failures)
        self.logger.info("%s: %d videos need no GPU; written here, without a task", command.stage, written)
        log_failures(outcome)
        return outcome

    # -- tasks ---------------------------------------------------------------------------------

    def _resources(self, stage: str, workers_per_gpu: int | None, need_bytes: int = 0) -> dict[str, float] | None:
        if workers_per_gpu is not None:
            return dict(gpu_task_resources(workers_per_gpu, need_bytes))
        if self.plan is not None and not stage_spec(stage).resources.uses_gpu:
            return dict(self.plan.cpu_task_resources)
        return None

    def _tags(self, workers_per_gpu: int | None) -> Any:
        """Each GPU round's task runs carry its size, in the UI and the API."""
        return tags(f"workers-per-gpu-{workers_per_gpu}") if workers_per_gpu is not None else tags()

    def submit(self, command: c.Submit) -> None:
        resources = self._resources(command.stage, command.workers_per_gpu, command.need_bytes)
        with self._tags(command.workers_per_gpu):
            self._rounds[command.round] = submit_stage_tasks(
                command.stage,
                list(command.videos),
                self._config(command.stage),
                self._retry,
                command.per_task,
                resources,
            )

    def submit_after(self, command: c.SubmitAfter) -> None:
        upstream = self._joined(command.upstream)
        resources = self._resources(command.stage, command.workers_per_gpu, command.need_bytes)
        with self._tags(command.workers_per_gpu):
            self._rounds[command.round] = submit_after(
                command.stage, upstream, command.videos, self._config(command.stage), self._retry, resources
            )

    def _joined(self, rounds: tuple[int, ...]) -> SubmittedStage:
        first, *others = (self._rounds[round_] for round_ in rounds)
        for other in others:
            first = first.joined(other)
        return first

    def next_report(self, command: c.NextReport) -> TaskReport | None:
        """The next task of the command's rounds to end; None once all have, and the rounds
        are forgotten (their futures hold ~43 KiB each in the client and scheduler)."""
        reporting = self._reporting.get(command.rounds)
        if reporting is None:
            reporting = self._reporting[command.rounds] = task_reports(self._joined(command.rounds))
        report = next(reporting, None)
        if report is None:
            del self._reporting[command.rounds]
            for round_ in command.rounds:
                del self._rounds[round_]
        return report

    def settle(self, command: c.Settle) -> None:
        wait([future for round_ in command.rounds for future in self._rounds[round_].futures])

    def run_profile(self, command: c.Profile) -> list[TaskReport]:
        """The profiling round, as its own ``profile-memory`` subflow on the run's cluster."""
        subflow = self.profile_subflow.with_options(task_runner=self.cluster.task_runner())
        with WorkList.written(command.stage, list(command.videos)) as work:
            return subflow(command.stage, work, self._config(command.stage), self._retry, dict(gpu_task_resources(1)))

    # -- the cluster's GPUs and the memory profiles ---------------------------------------------

    def read_gpus(self, command: c.ReadGpus) -> c.GpuView:
        # Read again: a restarted worker has a new address, a SLURM job's workers come and go.
        if command.measure:
            read, infos = self.cluster.measure_gpus()
        else:
            read, infos = self.cluster.wait_for_gpus(), []
        plan = read or self.plan
        if plan is None or not plan.gpus:
            raise ClusterShapeError(
                f"{command.stage}: no worker of the cluster at {self.cluster.address} offers a GPU "
                "(start GPU workers pinned with CUDA_VISIBLE_DEVICES and --resources GPU=1)"
            )
        if not command.measure:
            return c.GpuView(plan.slots_per_gpu)
        shares, names = plan.shares(), plan.names()
        return c.GpuView(
            plan.slots_per_gpu,
            tuple(infos),
            tuple(shares[gpu] for gpu in plan.gpus),
            tuple(names[gpu] for gpu in plan.gpus),
        )

    def load_profile(self, command: c.LoadProfile) -> int | None:
        stored = self.profiles.load(command.stage, self._config(command.stage).cache_key())
        if stored is None:
            return None
        self.logger.info(
            "%s: starting from the memory profile in %s (peak %s, measured by an earlier run); not profiling",
            command.stage,
            self.profiles.path(command.stage),
            format_gib(stored.peak_bytes),
        )
        return stored.peak_bytes

    def save_profile(self, command: c.SaveProfile) -> None:
        self.profiles.save(command.stage, self._config(command.stage).cache_key(), command.peak_bytes)

    # -- what the run publishes -----------------------------------------------------------------

    def log(self, command: c.Log) -> None:
        self.logger.log(LOG_LEVELS[command.level], "%s", command.message)

    def record_packing(self, command: c.Packed) -> None:
        """Log the packing, publish the memory profile and write quarantines into the manifest."""
        stage, result, logger = command.stage, command.result, self.logger
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
                "%s: peak %s (%s) -> %s",
                stage,
                format_gib(result.profiles[0].peak_bytes),
                result.peak_source,
                ", ".join(
                    f"GPU {p.gpu_index}: {p.workers_per_gpu} workers of {format_gib(p.total_bytes)} available"
                    for p in result.profiles
                ),
            )
        for previous, current in itertools.pairwise(result.rounds):
            if previous.out_of_memory and not previous.profiling:
                logger.warning(
                    "%s: %d videos ran out of memory; retrying them with %s",
                    stage,
                    current.videos,
                    _per_gpu(current),
                )
        if not result.quarantined:
            return
        manifest = Manifest.load(DatasetLayout(self.settings.paths.dataset_dir).manifest)
        hashes = {entry.video_id: entry.sha256 for entry in manifest.entries()}
        for failure in result.quarantined:
            sha = hashes.get(failure.video_id, "")
            key = quarantine_key(self._config(stage), self.settings.cluster, sha)
            manifest.quarantine(failure.video_id, sha, key, stage, failure.reason)
            logger.error("quarantined video %s in %s: %s", failure.video_id, stage, failure.reason)

    def close_wave(self, command: c.CloseWave) -> None:
        self.report.write(command.outcome)
        self.tallies[command.stage].add(command.outcome)

    def draw_pictures(self, command: c.DrawPictures) -> None:
        drawn = write_run_pictures(self.settings.paths.dataset_dir, list(command.videos), self.settings.h5)
        self.logger.info("pictures of %d videos in %s", len(drawn), pictures_dir(self.settings.paths.dataset_dir))

    def free_intermediates(self, command: c.FreeIntermediates) -> None:
        freed = release_intermediates(command.videos, self.settings)
        if freed:
            self.logger.info("freed %s of intermediates of %d videos", format_gib(freed), len(command.videos))
