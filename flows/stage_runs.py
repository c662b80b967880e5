"""How the ``build-dataset`` flow runs each stage: runners, subflows, artifacts, the manifest.

CPU stages run in shards on CPU workers. A GPU stage runs by the packing policy of
:mod:`trackset.packing` (profile its first videos with one worker per GPU, size the
cluster from the measured peak, re-run videos that ran out of memory on one fewer worker
per GPU, quarantine what does not fit alone); this module only gives that policy its
``run`` (a ``process-stage`` or ``profile-memory`` subflow on a runner of the asked size)
and writes what it decided: quarantines into the manifest, the ``memory-profile-<stage>``
table, the logs. Every stage publishes ``progress-<stage>`` as videos finish and
``stage-<stage>`` (every video, its status and resources) at its end; the count behind
the progress is kept here, in :class:`StageProgress`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.task_runners import TaskRunner

from flows.process_stage import ProgressReport, process_stage
from flows.runners import cpu_runner, gpu_runner
from trackset.domain import StageRecord, VideoRef, stage_slug
from trackset.fake_device import ledger_dir_for
from trackset.gpu_inventory import detect_inventory
from trackset.layout import DatasetLayout
from trackset.manifest import Manifest
from trackset.packing import PackingResult, PackingSettings, pack_gpu_stage
from trackset.registration import quarantine_key
from trackset.run_report import StageOutcome, stage_table
from trackset.settings import Settings
from trackset.sizing import format_gib
from trackset.stages.base import worker_name
from trackset.stages.config import StageConfig
from trackset.stages.registry import build_stage, prior_peak_bytes, stage_spec
from trackset.worker_cache import release_stages
from trackset.worklist import WorkList


@dataclass
class StageProgress:
    """How many of a stage's videos are finished, behind its ``progress-<stage>`` artifact."""

    report: ProgressReport
    done: int = 0

    def for_subflow(self) -> ProgressReport:
        """The handle a subflow reports through, starting from what is finished now."""
        return ProgressReport(self.report.artifact_id, self.report.total, self.done)


def run_stage(stage: str, videos: list[VideoRef], settings: Settings) -> StageOutcome:
    """Run one stage over ``videos`` with its artifacts; videos already current are skipped here."""
    checker = build_stage(stage, settings)
    config = checker.config
    todo = [video for video in videos if not checker.is_done(video)]
    todo_ids = {video.video_id for video in todo}
    outcome = StageOutcome(stage)
    outcome.records += [
        StageRecord(v.video_id, stage, "skipped", worker=worker_name()) for v in videos if v.video_id not in todo_ids
    ]
    if todo:
        artifact = create_progress_artifact(
            0.0, key=f"progress-{stage_slug(stage)}", description=f"Percent of {len(todo)} videos through {stage}"
        )
        progress = StageProgress(ProgressReport(artifact, len(todo)))
        try:
            if stage_spec(stage).resources.uses_gpu:
                part = _run_gpu_stage(stage, todo, settings, config, progress)
            else:
                shard_size = settings.cluster.cpu_task_videos if stage_spec(stage).batched else None
                part = _process(stage, todo, config, settings, cpu_runner(settings), shard_size, progress)
            outcome.records += part.records
            outcome.failures += part.failures
        finally:
            release_stages(stage)  # models cached in this process (thread runner) free their memory
    create_table_artifact(
        stage_table(outcome.records, outcome.failures),
        key=f"stage-{stage_slug(stage)}",
        description=f"Every video of {stage} in this run: status, seconds, peak memory, worker, GPU, attempts",
    )
    return outcome


def _process(
    stage: str,
    videos: list[VideoRef],
    config: StageConfig,
    settings: Settings,
    runner: TaskRunner,
    shard_size: int | None,
    progress: StageProgress,
    *,
    profiling: bool = False,
) -> StageOutcome:
    """One subflow on ``runner``, its videos handed over as a work list; counts what finished.

    Out-of-memory videos are not counted: the packing policy runs them again.
    """
    options = {"name": "profile-memory", "flow_run_name": f"profile-{stage}"} if profiling else {}
    subflow = process_stage.with_options(task_runner=runner, **options)
    with WorkList.written(stage, videos) as work:
        part = subflow(stage, work, config, settings.retry, shard_size, progress.for_subflow())
    progress.done += len(videos) - sum(f.kind == "out_of_memory" for f in part.failures)
    return part


def _run_gpu_stage(
    stage: str, videos: list[VideoRef], settings: Settings, config: StageConfig, progress: StageProgress
) -> StageOutcome:
    """Give the packing policy its runners, then record what it decided."""
    cluster = settings.cluster
    packing = PackingSettings(cluster.profiling_videos, cluster.headroom, cluster.max_workers_per_gpu)
    prior = prior_peak_bytes(stage, settings)
    if cluster.runner == "threads" or cluster.scheduler_address:
        # One process, or a cluster shaped elsewhere: nothing to size, nothing to shrink.
        runner = gpu_runner(settings, [0], cluster.cpu_workers)
        result = pack_gpu_stage(
            stage,
            videos,
            lambda batch, _workers, *, profiling: _process(stage, batch, config, settings, runner, None, progress),
            [],
            packing,
            resizable=False,
        )
    else:
        inventory = detect_inventory(cluster, ledger_dir_for(settings.paths.work_dir))
        try:
            gpus = inventory.gpus()
        finally:
            inventory.close()
        gpu_ids = [gpu.index for gpu in gpus]

        def run(batch: list[VideoRef], workers_per_gpu: int, *, profiling: bool) -> StageOutcome:
            if not profiling:
                get_run_logger().info(
                    "%s: %d videos on %d GPUs x %d workers", stage, len(batch), len(gpu_ids), workers_per_gpu
                )
            runner = gpu_runner(settings, gpu_ids, workers_per_gpu)
            return _process(stage, batch, config, settings, runner, None, progress, profiling=profiling)

        result = pack_gpu_stage(stage, videos, run, gpus, packing, prior_peak_bytes=prior)
    _record(stage, result, config, settings)
    return result.outcome


def _record(stage: str, result: PackingResult, config: StageConfig, settings: Settings) -> None:
    """Log the packing, publish the memory profile and write quarantines into the manifest."""
    logger = get_run_logger()
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
    manifest = Manifest.load(DatasetLayout(settings.paths.dataset_dir).manifest)
    hashes = {entry.video_id: entry.sha256 for entry in manifest.entries()}
    for failure in result.quarantined:
        sha = hashes.get(failure.video_id, "")
        manifest.quarantine(failure.video_id, sha, quarantine_key(config, settings.cluster, sha), stage, failure.reason)
        logger.error("quarantined video %s in %s: %s", failure.video_id, stage, failure.reason)
