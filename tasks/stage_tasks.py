"""The Prefect tasks that run a stage: one video per task (GPU stages) or a shard (cheap ones).

Bodies stay thin: the worker-cached stage does the work and returns a small record. A task
receives the stage's own config (:mod:`trackset.stages.config`), never the whole settings,
so the worker's model cache survives changes to knobs the stage does not read.
Prefect's own cache is off (``NO_CACHE``) on purpose: completion lives in marker and
partials files beside the outputs, so a reset Prefect database or deleted outputs can
never make a run skip work that is not on disk.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from tasks.retry import retry_on_transient
from trackset.domain import StageRecord, VideoFailure, VideoRef, stage_slug
from trackset.settings import RetrySettings
from trackset.stages.config import StageConfig
from trackset.stages.registry import GPU_STAGES
from trackset.worker_cache import get_stage


def _run_name(kind: str) -> str:
    """``<stage>-<video id>`` or ``<stage>-shard-<n>`` (DECISIONS.md), from the run's parameters."""
    params = task_run.parameters
    slug = stage_slug(params["stage"])
    return f"{slug}-{params['video'].video_id}" if kind == "video" else f"{slug}-shard-{params['shard']}"


@task(
    name="process-video",
    task_run_name=lambda: _run_name("video"),
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_on_transient,
)
def process_video(stage: str, video: VideoRef, config: StageConfig) -> StageRecord:
    """Run ``stage`` on one video with this worker's cached model."""
    record = get_stage(stage, config).run(video)
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
    """Run ``stage`` on a batch of videos; a bad video fails alone, transient errors retry the shard."""
    runner = get_stage(stage, config)
    return [runner.run_isolated(video) for video in videos]


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
