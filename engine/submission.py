"""Submitting a stage's tasks to the current flow's runner, and reporting how each one ended.

Submitting and reporting are separate so ``process-waves`` can keep CPU tasks running on the
run's cluster while it waits for a GPU stage, and queue a stage's tasks behind the stage
before (:func:`submit_after`). Tasks ask for the Dask resources the caller gives
(:mod:`trackset.cluster.plan`: which GPU workers a GPU stage may use, or the CPU workers).
Each finished task becomes a :class:`~trackset.scheduling.outcomes.TaskReport`, plain data
for the planner, which decides what it means (:func:`~trackset.scheduling.outcomes.settle`).
Progress goes to the stage's ``progress-<stage>`` artifact and the run's ``progress-run``
(:class:`ProgressBoard`), from the planner's counts and the run's estimator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import dask
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State

from trackset.config.settings import RetrySettings
from trackset.domain import StageOutcome, VideoRef, stage_slug
from trackset.errors import TracksetError
from trackset.scheduling.eta import Estimator, RunEstimate, describe_run, describe_stage, run_metadata
from trackset.scheduling.outcomes import TaskFailure, TaskReport
from trackset.scheduling.progress import Spent
from trackset.stages.config import StageConfig
from trackset.tasks.retry import is_out_of_memory
from trackset.tasks.stage_tasks import configured, process_after, process_shard, process_video


class ProgressBoard:
    """The run's progress artifacts: ``progress-<stage>`` per stage and ``progress-run``.

    Each holds a percentage (all a Prefect progress artifact holds) and, in its description,
    one line from the run's :class:`~trackset.scheduling.eta.Estimator`: done of total,
    videos per hour, ETA, GPU-hours so far and projected. The run's also carries those
    numbers as metadata, for programs (``bench/eta.py``). Each artifact is created once and
    updated in place: a run of any length has one per stage and one for the run.

    A stage's artifact is created when it first publishes, so a stage with nothing to do
    shows none. An update costs an API call (~26 ms on a local server): at one per task a
    50,000-video build would spend an hour on them, so updates go at most once per
    :data:`PROGRESS_INTERVAL_S` per artifact, except the last of a wave (``final``) and the
    run's at its end (:meth:`finish`). The estimator hears every count, sent or not.
    """

    def __init__(self, estimator: Estimator, clock: Callable[[], float] = time.monotonic) -> None:
        self.estimator = estimator
        self.clock = clock
        self._artifacts: dict[str, UUID] = {}
        self._sent: dict[str, float] = {}  # when each artifact was last updated

    def publish(self, stage: str, done: int, total: int, *, final: bool = False, spent: Spent | None = None) -> None:
        """Count ``done`` of ``total`` for ``stage``, which ``spent`` so far, and show it
        (rate-limited unless ``final``; a final update of a stage that never published is
        not sent)."""
        now = self.clock()
        self.estimator.observe(now, stage, done, spent or Spent())
        due = now - self._sent.get(stage, float("-inf")) >= PROGRESS_INTERVAL_S
        if (stage not in self._artifacts and final) or (stage in self._artifacts and not final and not due):
            return
        estimate = self.estimator.estimate(now)
        row = next(row for row in estimate.stages if row.stage == stage)
        self._show(stage, f"progress-{stage_slug(stage)}", row.percent, describe_stage(row), now)
        if final or now - self._sent.get(RUN, float("-inf")) >= PROGRESS_INTERVAL_S:
            self._show_run(estimate, now)

    def finish(self) -> None:
        """Show the run as it ended (if it showed anything)."""
        if RUN in self._artifacts:
            now = self.clock()
            self._show_run(self.estimator.estimate(now), now)

    def _show(self, name: str, key: str, percent: float, line: str, now: float) -> None:
        if name in self._artifacts:
            update_progress_artifact(self._artifacts[name], percent, description=line)
        else:
            self._artifacts[name] = create_progress_artifact(percent, key=key, description=line)
        self._sent[name] = now

    def _show_run(self, estimate: RunEstimate, now: float) -> None:
        line = describe_run(estimate)
        if RUN not in self._artifacts:
            self._artifacts[RUN] = create_progress_artifact(estimate.percent, key=RUN_KEY, description=line)
        update_artifact(self._artifacts[RUN], estimate.percent, line, run_metadata(estimate))
        self._sent[RUN] = now


PROGRESS_INTERVAL_S = 1.0
RUN = "run"
RUN_KEY = "progress-run"
"""The run's progress artifact (its stages' are ``progress-<stage>``; no stage is named "run")."""


def update_artifact(artifact_id: UUID, percent: float, description: str, metadata: dict[str, str]) -> None:
    """Update a progress artifact in place with metadata too (Prefect's
    ``update_progress_artifact`` takes none)."""
    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id, ArtifactUpdate(data=percent, description=description, metadata_=metadata))


def _shards(videos: list[VideoRef], size: int) -> list[list[VideoRef]]:
    return [videos[i : i + size] for i in range(0, len(videos), size)]


@dataclass
class SubmittedStage:
    """Tasks of one stage submitted to the current flow's runner, not yet reported."""

    stage: str
    config: StageConfig
    retry: RetrySettings
    futures: dict[PrefectFuture[Any], list[VideoRef]]
    resources: dict[str, float] | None = None
    after: set[PrefectFuture[Any]] = field(default_factory=set)  # of ``submit_after``: queued tasks

    def joined(self, other: SubmittedStage) -> SubmittedStage:
        """These tasks and ``other``'s (of the same stage), reported as one."""
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
    videos: set[str] | frozenset[str],
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


def task_reports(submitted: SubmittedStage) -> Iterator[TaskReport]:
    """Each task of ``submitted`` as it ends, as a report (its results, or why it has none)."""
    for future in as_completed(list(submitted.futures)):
        future.wait()  # the future's own final state; the API's copy may still say RUNNING
        yield report_of(future.state, submitted.futures[future], queued=future in submitted.after)


def report_of(state: State[Any], videos: list[VideoRef], *, queued: bool = False) -> TaskReport:
    """What a task's final ``state`` says of its ``videos``."""
    if state.is_completed():
        results = state.result()
        return TaskReport(tuple(videos), tuple(results if isinstance(results, list) else [results]), queued=queued)
    if queued:
        # Its upstream task failed (NotReady, still pending), or it failed itself.
        message = state.message or ""
        return TaskReport(tuple(videos), failure=TaskFailure(message, message, ran=not state.is_pending()), queued=True)
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        failure = TaskFailure(
            f"{type(exc).__name__}: {exc}".splitlines()[0],
            str(exc),
            out_of_memory=is_out_of_memory(exc),
            typed=isinstance(exc, TracksetError),  # typed errors are never retried in place (tasks/retry.py)
            worker=str(getattr(exc, "worker", "")),  # where it ran out of memory (process-video says)
        )
    else:
        reason = state.message or "task failed"
        failure = TaskFailure(reason, reason)
    return TaskReport(tuple(videos), failure=failure)


def log_failures(outcome: StageOutcome) -> None:
    """One warning per failed video of ``outcome``, in the flow's log."""
    logger = get_run_logger()
    for failure in outcome.failures:
        logger.warning("%s failed for video %s (%s): %s", outcome.stage, failure.video_id, failure.kind, failure.reason)


def run_and_report(
    stage: str,
    videos: list[VideoRef],
    config: StageConfig,
    retry: RetrySettings,
    resources: dict[str, float] | None = None,
) -> list[TaskReport]:
    """Run ``stage`` on ``videos``, one task per video, on the current flow's runner; report each task."""
    return list(task_reports(submit_stage_tasks(stage, videos, config, retry, None, resources)))
