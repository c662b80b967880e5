"""Subflow ``process-stage``: run one stage over a list of videos on the runner it is given.

The caller picks the task runner with ``process_stage.with_options(task_runner=...)``:
threads or CPU workers for cheap stages, a GPU-pinned Dask cluster sized by the memory
profile for GPU stages; the profiling run of a GPU stage is the same subflow named
``profile-memory``. GPU tasks are submitted under ``dask.annotate(resources={"GPU": 1})``
so they only land on GPU workers. Progress is published as videos finish, into the stage's
``progress-<stage>`` artifact shared by every subflow of that stage; the count of videos
finished before this subflow is the caller's (:class:`ProgressReport` only reports).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from uuid import UUID

import dask
from prefect import flow, get_run_logger
from prefect.artifacts import update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from tasks.retry import is_out_of_memory
from tasks.stage_tasks import configured, process_shard, process_video
from trackset.domain import StageRecord, VideoFailure, VideoRef
from trackset.errors import TracksetError
from trackset.run_report import StageOutcome
from trackset.settings import RetrySettings
from trackset.stages.config import StageConfig
from trackset.stages.registry import GPU_STAGES
from trackset.worklist import WorkList


@dataclass(frozen=True)
class ProgressReport:
    """Where a subflow reports progress: the ``progress-<stage>`` artifact, the stage's total
    and how many of its videos were finished before this subflow started."""

    artifact_id: UUID
    total: int
    done_before: int = 0

    def report(self, finished_now: int) -> None:
        """Publish ``done_before + finished_now`` of ``total``."""
        done = min(self.done_before + finished_now, self.total)
        update_progress_artifact(self.artifact_id, 100.0 * done / max(self.total, 1))


def _shards(videos: list[VideoRef], size: int) -> list[list[VideoRef]]:
    return [videos[i : i + size] for i in range(0, len(videos), size)]


def _failure(stage: str, video: VideoRef, exc: object, message: str | None, retries: int) -> VideoFailure:
    """A failed task as a failure record; out-of-memory is marked so the caller can shrink."""
    if isinstance(exc, BaseException):
        kind = "out_of_memory" if is_out_of_memory(exc) else "error"
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        kind, reason = "error", message or "task failed"
    # Typed errors and out-of-memory are never retried in place (tasks/retry.py): one attempt.
    final_at_once = kind == "out_of_memory" or isinstance(exc, TracksetError)
    return VideoFailure(video.video_id, stage, reason, kind, 1 if final_at_once else retries + 1)


def run_stage_tasks(
    stage: str,
    videos: list[VideoRef],
    config: StageConfig,
    retry: RetrySettings,
    shard_size: int | None = None,
    progress: ProgressReport | None = None,
) -> StageOutcome:
    """Submit ``stage`` for ``videos`` to the current flow's runner and collect the outcome.

    A shard that still fails after its retries, other than by a typed error, is split into
    one task per video, so a transient fault of one video (a full disk, say) fails that
    video alone.
    """
    logger = get_run_logger()
    outcome = StageOutcome(stage)
    futures: dict[PrefectFuture, list[VideoRef]] = {}
    placement = dask.annotate(resources={"GPU": 1}) if stage in GPU_STAGES else nullcontext()
    with placement:
        if shard_size:
            task_ = configured(process_shard, stage, retry)
            for index, shard in enumerate(_shards(videos, shard_size)):
                futures[task_.submit(stage, index, shard, config)] = shard
        else:
            task_ = configured(process_video, stage, retry)
            for video in videos:
                futures[task_.submit(stage, video, config)] = [video]

    finished = 0
    isolate: list[VideoRef] = []
    for future in as_completed(list(futures)):
        future.wait()  # the future's own final state; the API's copy may still say RUNNING
        state = future.state
        batch = futures[future]
        if state.is_completed():
            results = state.result()
            for result in results if isinstance(results, list) else [results]:
                target = outcome.records if isinstance(result, StageRecord) else outcome.failures
                target.append(result)
        else:
            exc = state.result(raise_on_failure=False)
            if len(batch) > 1 and not isinstance(exc, TracksetError):
                # One video's transient error (a full disk, an I/O error) failed the whole
                # shard after its retries; rerun its videos one per task so it fails alone.
                logger.warning(
                    "%s: a shard of %d videos failed (%s); rerunning them one per task", stage, len(batch), exc
                )
                isolate += batch
            else:
                outcome.failures += [_failure(stage, v, exc, state.message, retry.retries) for v in batch]
        finished += len(batch)
        if progress is not None:
            progress.report(finished)

    for failure in outcome.failures:
        logger.warning("%s failed for video %s (%s): %s", stage, failure.video_id, failure.kind, failure.reason)
    if isolate:
        # Videos the shard finished before failing are current now and come back as skipped.
        single = run_stage_tasks(stage, isolate, config, retry)
        outcome.records += single.records
        outcome.failures += single.failures
    return outcome


@flow(name="process-stage", flow_run_name="process-{stage}")
def process_stage(
    stage: str,
    work: WorkList,
    config: StageConfig,
    retry: RetrySettings,
    shard_size: int | None = None,
    progress: ProgressReport | None = None,
) -> StageOutcome:
    """Run ``stage`` on the videos of ``work``: one task per video, or per shard of ``shard_size``.

    The videos come as a work list file, not a parameter: Prefect ships a flow's parameters
    with each of its tasks (trackset.worklist). Out-of-memory failures come back as
    ``out_of_memory`` failures, not raised, so the caller can re-run them on fewer workers
    per GPU (DECISIONS.md).
    """
    return run_stage_tasks(stage, work.load(), config, retry, shard_size, progress)
