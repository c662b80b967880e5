"""Submitting a stage's tasks to the current flow's runner, and collecting what they did.

Submitting and collecting are separate so ``process-waves`` can keep CPU tasks running on
the run's cluster while it waits for a GPU stage. Tasks ask for the Dask resources the
caller gives (:mod:`trackset.cluster.plan`: which GPU workers a GPU stage may use, or the
CPU workers). Progress is published as videos finish, into the stage's ``progress-<stage>``
artifact; the count of videos finished before is the caller's (:class:`ProgressReport`
only reports).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import dask
from prefect import get_run_logger
from prefect.artifacts import update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from trackset.config.settings import RetrySettings
from trackset.domain import StageOutcome, VideoFailure, VideoRef
from trackset.errors import TracksetError
from trackset.stages.config import StageConfig
from trackset.tasks.retry import is_out_of_memory
from trackset.tasks.stage_tasks import configured, process_after, process_shard, process_video


@dataclass(frozen=True)
class ProgressReport:
    """Where progress goes: the ``progress-<stage>`` artifact, the stage's total and how many
    of its videos were finished before these tasks started.

    An update costs an API call (~26 ms on a local server): at one per video a 50,000-video
    build would spend over an hour on them. Updates are therefore sent at most once per
    :data:`PROGRESS_INTERVAL_S` per artifact, except the last of a wave (``final``).
    """

    artifact_id: UUID
    total: int
    done_before: int = 0

    def report(self, finished_now: int, *, final: bool = False) -> None:
        """Publish ``done_before + finished_now`` of ``total`` (rate-limited unless ``final``)."""
        now = time.monotonic()
        if not final and now - _last_progress.get(self.artifact_id, float("-inf")) < PROGRESS_INTERVAL_S:
            return
        _last_progress[self.artifact_id] = now
        done = min(self.done_before + finished_now, self.total)
        update_progress_artifact(self.artifact_id, 100.0 * done / max(self.total, 1))


PROGRESS_INTERVAL_S = 1.0
_last_progress: dict[UUID, float] = {}  # when each progress artifact of this process was last updated


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


@dataclass
class SubmittedStage:
    """Tasks of one stage submitted to the current flow's runner, not yet collected.

    Submitting and collecting are separate so a flow can keep CPU tasks running on its own
    runner while it runs a GPU stage in a subflow (``flows/waves.py``).
    """

    stage: str
    config: StageConfig
    retry: RetrySettings
    futures: dict[PrefectFuture[Any], list[VideoRef]]
    resources: dict[str, float] | None = None
    after: set[PrefectFuture[Any]] = field(default_factory=set)  # of ``submit_after``: see collect_stage_tasks

    @property
    def videos(self) -> int:
        return sum(len(batch) for batch in self.futures.values())

    def joined(self, other: SubmittedStage | None) -> SubmittedStage:
        """These tasks and ``other``'s (of the same stage and round), collected as one."""
        if other is None:
            return self
        futures = {**self.futures, **other.futures}
        return SubmittedStage(self.stage, self.config, self.retry, futures, self.resources, self.after | other.after)


def submit_stage_tasks(
    stage: str,
    videos: list[VideoRef],
    config: StageConfig,
    retry: RetrySettings,
    shard_size: int | None = None,
    resources: dict[str, float] | None = None,
) -> SubmittedStage:
    """Submit ``stage`` for ``videos``: one task per video, or per shard of ``shard_size``.

    ``resources`` are the Dask resources each task asks for (:mod:`trackset.cluster.plan`:
    which GPU workers a GPU stage may use, or the CPU workers); the thread runner ignores them.
    """
    futures: dict[PrefectFuture[Any], list[VideoRef]] = {}
    placement = dask.annotate(resources=resources) if resources else nullcontext()
    with placement:
        if shard_size and shard_size > 1:
            shard_task = configured(process_shard, stage, retry)
            for index, shard in enumerate(_shards(videos, shard_size)):
                futures[shard_task.submit(stage, index, shard, config)] = shard
        else:
            video_task = configured(process_video, stage, retry)
            for video in videos:
                futures[video_task.submit(stage, video, config)] = [video]
    return SubmittedStage(stage, config, retry, futures, resources)


def submit_after(
    stage: str,
    upstream: SubmittedStage,
    videos: set[str],
    config: StageConfig,
    retry: RetrySettings,
    resources: dict[str, float] | None = None,
) -> SubmittedStage:
    """Submit ``stage`` for the ``videos`` of each upstream task, to start when that task ends.

    One task per upstream task, holding that task's videos that are in ``videos``; it takes
    the upstream future as a parameter, so Dask runs it as soon as its upstream task has
    finished (``trackset.tasks.stage_tasks.process_after``), whatever the rest of the upstream stage
    is doing. An upstream task with none of ``videos`` gets no task.
    """
    after_task = configured(process_after, stage, retry)
    futures: dict[PrefectFuture[Any], list[VideoRef]] = {}
    placement = dask.annotate(resources=resources) if resources else nullcontext()
    index = 0
    with placement:
        for future, batch in upstream.futures.items():
            chosen = [video for video in batch if video.video_id in videos]
            if chosen:
                futures[after_task.submit(stage, index, chosen, config, future)] = chosen
                index += 1
    return SubmittedStage(stage, config, retry, futures, resources, after=set(futures))


def log_failures(outcome: StageOutcome) -> None:
    """One warning per failed video of ``outcome``, in the flow's log."""
    logger = get_run_logger()
    for failure in outcome.failures:
        logger.warning("%s failed for video %s (%s): %s", outcome.stage, failure.video_id, failure.kind, failure.reason)


def collect_stage_tasks(submitted: SubmittedStage, progress: ProgressReport | None = None) -> StageOutcome:
    """Wait for submitted tasks and gather their records and failures.

    A shard that still fails after its retries, other than by a typed error, is split into
    one task per video, so a transient fault of one video (a full disk, say) fails that
    video alone.
    """
    logger = get_run_logger()
    stage, retry = submitted.stage, submitted.retry
    outcome = StageOutcome(stage)
    finished = 0
    isolate: list[VideoRef] = []
    for future in as_completed(list(submitted.futures)):
        future.wait()  # the future's own final state; the API's copy may still say RUNNING
        state = future.state
        batch = submitted.futures[future]
        if state.is_completed():
            results = state.result()
            for result in results if isinstance(results, list) else [results]:
                outcome.add(result)
        elif future in submitted.after:
            # Its upstream task failed (NotReady), or it failed itself: which of its videos
            # reached this stage is the caller's to tell, and it runs those (StageRun).
            if not state.is_pending():
                logger.warning(
                    "%s: a task of %d videos failed (%s); those that reached it run again",
                    stage,
                    len(batch),
                    state.message,
                )
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

    log_failures(outcome)
    if isolate:
        # Videos the shard finished before failing are current now and come back as skipped.
        single = collect_stage_tasks(
            submit_stage_tasks(stage, isolate, submitted.config, retry, None, submitted.resources)
        )
        outcome.records += single.records
        outcome.failures += single.failures
    return outcome


def run_stage_tasks(
    stage: str,
    videos: list[VideoRef],
    config: StageConfig,
    retry: RetrySettings,
    shard_size: int | None = None,
    progress: ProgressReport | None = None,
    resources: dict[str, float] | None = None,
) -> StageOutcome:
    """Submit ``stage`` for ``videos`` to the current flow's runner and collect the outcome."""
    return collect_stage_tasks(submit_stage_tasks(stage, videos, config, retry, shard_size, resources), progress)
