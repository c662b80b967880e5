"""The Prefect tasks that run a stage: one video per task (GPU stages) or a shard (cheap ones).

Bodies stay thin: the worker-cached stage does the work and returns a small record. A task
receives the stage's own config (:mod:`trackset.stages.config`), never the whole settings,
so the worker's model cache survives changes to knobs the stage does not read.
Prefect's own cache is off (``NO_CACHE``) on purpose: completion lives in marker and
partials files beside the outputs, so a reset Prefect database or deleted outputs can
never make a run skip work that is not on disk.

Each video runs within its stage's time budget (``timeouts``: a floor plus seconds per
frame, :func:`within_budget`). A task holds several videos, so one Prefect
``timeout_seconds`` could not name the video that hung, and would either kill a chunk of
long videos or let a short one hang for the whole chunk's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff
from prefect.utilities.timeout import timeout

from trackset.cluster.worker_cache import get_stage
from trackset.config.settings import RetrySettings
from trackset.domain import StageRecord, VideoFailure, VideoRef, stage_slug
from trackset.scheduling.outcomes import reached
from trackset.stages.base import Stage, worker_name
from trackset.stages.config import StageConfig
from trackset.stages.registry import GPU_STAGES
from trackset.tasks.retry import is_out_of_memory, retry_on_transient
from trackset.tasks.run_logs import send_trackset_logs_to_prefect


class VideoTimeoutError(TimeoutError):
    """A video took longer than its stage's budget (``timeouts``).

    Not a :class:`~trackset.errors.TracksetError`: a hang is usually transient (a stuck
    driver call, a stalled network file system), so it is retried like one
    (tasks/retry.py); a video that keeps timing out is reported with this message.
    """


@contextmanager
def video_budget(runner: Stage[Any], video: VideoRef, config: StageConfig) -> Iterator[None]:
    """Stop what runs inside once ``video`` exceeds ``floor_s + s_per_frame x frames`` of
    ``config.timeout``.

    The stop is Prefect's cancel scope: an exception raised in this thread when the time is
    up. It interrupts Python code at once, and a call into C (a CUDA kernel, a read) as soon
    as it returns; a call that never returns keeps its thread (README "Timeouts").

    Raises:
        VideoTimeoutError: naming the stage, the video and its budget.
    """
    budget = config.timeout
    frames = runner.frame_count(video)
    seconds = budget.budget_s(frames)
    try:
        with timeout(seconds, timeout_exc_type=VideoTimeoutError):
            yield
    except VideoTimeoutError:
        length = f"{frames} frames" if frames is not None else "length unknown"
        raise VideoTimeoutError(
            f"{runner.name}: video {video.video_id} took over {seconds:g} s, its budget "
            f"({budget.floor_s:g} s + {budget.s_per_frame:g} s per frame, {length}; timeouts in the settings)"
        ) from None


def _run_name(kind: str) -> str:
    """``<stage>-<video id>`` or ``<stage>-shard-<n>`` (DECISIONS.md), from the run's parameters;
    a queued task of one video (``process-after``) is named for its video too."""
    params = task_run.parameters
    slug = stage_slug(params["stage"])
    if kind == "video":
        return f"{slug}-{params['video'].video_id}"
    if kind == "after" and len(params["videos"]) == 1:
        return f"{slug}-{params['videos'][0].video_id}"
    return f"{slug}-shard-{params['shard']}"


@task(
    name="process-video",
    task_run_name=lambda: _run_name("video"),
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_on_transient,
)
def process_video(stage: str, video: VideoRef, config: StageConfig) -> StageRecord:
    """Run ``stage`` on one video with this worker's cached model, within its time budget.

    An out-of-memory error is raised (never retried in place) with this worker's name on it,
    so the packing shrinks the workers of the GPU that ran out (:mod:`trackset.scheduling.packing`).
    """
    send_trackset_logs_to_prefect()
    runner = get_stage(stage, config)
    with video_budget(runner, video, config):
        try:
            record = runner.run(video)
        except Exception as exc:
            if is_out_of_memory(exc):
                exc.worker = worker_name()  # type: ignore[attr-defined]  # pickled with the exception's __dict__
            raise
    record.info["attempts"] = task_run.run_count
    return record


@task(
    name="process-shard",
    task_run_name=lambda: _run_name("shard"),
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_on_transient,
)
def process_shard(
    stage: str, shard: int, videos: list[VideoRef], config: StageConfig
) -> list[StageRecord | VideoFailure]:
    """Run ``stage`` on a batch of videos: a bad or out-of-memory video fails alone, transient
    errors and timeouts retry the shard (its finished videos are then skipped; one that still
    fails is then run alone, :func:`trackset.scheduling.outcomes.settle`)."""
    return _run_each(stage, videos, config)


@task(
    name="process-after",
    task_run_name=lambda: _run_name("after"),
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_on_transient,
)
def process_after(
    stage: str,
    shard: int,
    videos: list[VideoRef],
    config: StageConfig,
    upstream: StageRecord | list[StageRecord | VideoFailure],
) -> list[StageRecord | VideoFailure]:
    """Run ``stage`` on the videos of ``videos`` that the earlier stage's task finished.

    ``upstream`` is that task's future when submitted, so Dask starts this task on a free
    GPU worker as soon as the earlier one ends, while the flow still waits for the rest of
    the earlier stage (:mod:`trackset.scheduling.planner`). A video the earlier task failed
    is left out (:func:`~trackset.scheduling.outcomes.reached`), as the flow leaves out a
    video an earlier stage failed; when the earlier task failed as a whole, Prefect does not
    run this one at all (``NotReady``).
    """
    ready = reached(videos, upstream)
    return _run_each(stage, ready, config) if ready else []  # no model loaded for nothing


def _run_each(stage: str, videos: list[VideoRef], config: StageConfig) -> list[StageRecord | VideoFailure]:
    """The videos one by one with this worker's cached model; a failing video fails alone."""
    send_trackset_logs_to_prefect()
    runner = get_stage(stage, config)
    results: list[StageRecord | VideoFailure] = []
    for video in videos:
        with video_budget(runner, video, config):
            results.append(runner.run_isolated(video))
    for result in results:
        if isinstance(result, StageRecord):
            result.info["attempts"] = task_run.run_count
    return results


def configured(task_: Task[..., Any], stage: str, retry: RetrySettings) -> Task[..., Any]:
    """The task with this run's retry settings and the stage's tags (``gpu`` for GPU stages)."""
    return task_.with_options(
        retries=retry.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry.retry_delay_s)(retry.retries)
        if retry.retries
        else 0,
        retry_jitter_factor=retry.retry_jitter_factor,
        tags={stage_slug(stage), "gpu"} if stage in GPU_STAGES else {stage_slug(stage)},
    )
