"""How the ``build-dataset`` flow runs each stage: runners, profiling and out-of-memory policy.

CPU stages run in shards on CPU workers. A GPU stage (DECISIONS.md) first profiles its
first videos with one worker per GPU, sizes the cluster from the measured peak, runs the
rest on that cluster, and re-runs videos that ran out of memory on one fewer worker per
GPU, down to one. A video that still runs out of memory alone on a GPU is quarantined:
recorded with its reason in the manifest and the run summary, and skipped by later runs
until its content or the settings change. Every stage publishes ``progress-<stage>`` as
videos finish and ``stage-<stage>`` (every video, its status and resources) at its end.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.task_runners import TaskRunner

from flows.process_stage import StageProgress, process_stage
from flows.profile_memory import profile_memory
from flows.runners import cpu_runner, gpu_runner
from trackset.fake_device import ledger_dir_for
from trackset.gpu_inventory import detect_inventory
from trackset.layout import DatasetLayout
from trackset.manifest import Manifest
from trackset.registration import quarantine_fingerprint
from trackset.run_report import StageOutcome, VideoFailure, stage_table
from trackset.settings import Settings
from trackset.sizing import PeakExceedsGpuError, shrink
from trackset.stages.base import GPU_STAGES, StageRecord, VideoRef, stage_slug, worker_name
from trackset.worker_cache import release_stages, stage_class
from trackset.worklist import WorkList

# Stages cheap enough per video that several videos share one task.
SHARDED_STAGES = frozenset({"preprocess", "h5_build"})


def run_stage(stage: str, videos: list[VideoRef], settings: Settings) -> StageOutcome:
    """Run one stage over ``videos`` with its artifacts; videos already current are skipped here."""
    checker = stage_class(stage)(settings)
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
        progress = StageProgress(artifact, len(todo))
        try:
            if stage in GPU_STAGES:
                _merge(outcome, _run_gpu_stage(stage, todo, settings, progress))
            else:
                shard_size = settings.h5.shard_size if stage in SHARDED_STAGES else None
                _merge(outcome, _process(stage, todo, settings, cpu_runner(settings), shard_size, progress))
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
    settings: Settings,
    runner: TaskRunner,
    shard_size: int | None,
    progress: StageProgress,
) -> StageOutcome:
    """One ``process-stage`` subflow on ``runner``, its videos handed over as a work list."""
    with WorkList.written(stage, videos) as work:
        return process_stage.with_options(task_runner=runner)(stage, work, settings, shard_size, progress)


def _merge(into: StageOutcome, part: StageOutcome) -> None:
    into.records += part.records
    into.failures += part.failures


def _run_gpu_stage(stage: str, videos: list[VideoRef], settings: Settings, progress: StageProgress) -> StageOutcome:
    """Profile, size, run, and shrink on out-of-memory (DECISIONS.md "Out-of-memory policy")."""
    logger = get_run_logger()
    outcome = StageOutcome(stage)
    if settings.cluster.runner == "threads" or settings.cluster.scheduler_address:
        # One process or a cluster shaped elsewhere: nothing to size, nothing to shrink.
        runner = gpu_runner(settings, [0], settings.cluster.cpu_workers)
        _merge(outcome, _process(stage, videos, settings, runner, None, progress))
        _quarantine(stage, _take_oom(outcome), settings, outcome, "out of memory on a cluster trackset cannot resize")
        return outcome

    inventory = detect_inventory(settings.cluster, ledger_dir_for(settings.paths.work_dir))
    try:
        gpus = inventory.gpus()
    finally:
        inventory.close()
    gpu_ids = [gpu.index for gpu in gpus]
    head, rest = videos[: settings.cluster.profiling_videos], videos[settings.cluster.profiling_videos :]
    try:
        profile = profile_memory.with_options(task_runner=gpu_runner(settings, gpu_ids, 1))(
            stage, head, settings, gpus, progress
        )
    except PeakExceedsGpuError as exc:
        # Not even one worker fits: fail the stage now instead of wasting the corpus.
        logger.error("%s", exc)
        outcome.failures += [VideoFailure(v.video_id, stage, str(exc)) for v in videos]
        return outcome
    progress.done += len(head)
    _note_packing(profile.outcome, 1)
    _merge(outcome, profile.outcome)
    _quarantine(stage, _take_oom(outcome), settings, outcome, "out of memory alone on a GPU while profiling")

    workers = profile.workers_per_gpu or 1
    pending = rest
    while pending:
        logger.info("%s: %d videos on %d GPUs x %d workers", stage, len(pending), len(gpu_ids), workers)
        part = _process(stage, pending, settings, gpu_runner(settings, gpu_ids, workers), None, progress)
        _note_packing(part, workers)
        progress.done += len(pending)
        oom = _take_oom(part)
        _merge(outcome, part)
        if not oom:
            break
        smaller = shrink(workers)
        if smaller is None:
            _quarantine(stage, oom, settings, outcome, "out of memory alone on a GPU")
            break
        logger.warning("%s: %d videos ran out of memory; retrying them with %d workers per GPU", stage, len(oom), smaller)
        by_id = {v.video_id: v for v in pending}
        pending = [by_id[f.video_id] for f in oom]
        progress.done -= len(pending)
        workers = smaller
    return outcome


def _note_packing(outcome: StageOutcome, workers_per_gpu: int) -> None:
    """Record on each video the workers per GPU it ran with (profiled, planned or shrunk)."""
    for record in outcome.records:
        record.info["workers_per_gpu"] = workers_per_gpu


def _take_oom(outcome: StageOutcome) -> list[VideoFailure]:
    """Remove and return the out-of-memory failures of ``outcome``."""
    oom = [f for f in outcome.failures if f.kind == "out_of_memory"]
    outcome.failures = [f for f in outcome.failures if f.kind != "out_of_memory"]
    return oom


def _quarantine(stage: str, failures: list[VideoFailure], settings: Settings, outcome: StageOutcome, why: str) -> None:
    """Record videos that do not fit in the manifest and the outcome, with their reason."""
    if not failures:
        return
    manifest = Manifest.load(DatasetLayout(settings.paths.dataset_dir).manifest)
    hashes = {entry.video_id: entry.sha256 for entry in manifest.entries()}
    for failure in failures:
        reason = f"{why}: {failure.reason}"
        sha = hashes.get(failure.video_id, "")
        manifest.quarantine(failure.video_id, sha, quarantine_fingerprint(settings, sha), stage, reason)
        outcome.failures.append(VideoFailure(failure.video_id, stage, reason, "quarantined", failure.attempts))
        get_run_logger().error("quarantined video %s in %s: %s", failure.video_id, stage, reason)
