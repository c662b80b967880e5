"""Subflow ``process-stage``: run one stage over a list of videos on the runner it is given.

The caller picks the task runner with ``process_stage.with_options(task_runner=...)``:
threads for cheap CPU stages, a GPU-pinned Dask cluster sized by the memory profile for
GPU stages. Progress is published as videos finish (``progress-<stage>``), and a table
of every video (``stage-<stage>``) when the stage ends.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from tasks.retry import is_out_of_memory
from tasks.stage_tasks import configured, process_shard, process_video
from trackset.run_report import StageOutcome, VideoFailure, stage_table
from trackset.settings import Settings
from trackset.stages.base import StageRecord, VideoRef, stage_slug


def _shards(videos: list[VideoRef], size: int) -> list[list[VideoRef]]:
    return [videos[i : i + size] for i in range(0, len(videos), size)]


@flow(name="process-stage", flow_run_name="process-{stage}")
def process_stage(
    stage: str, videos: list[VideoRef], settings: Settings, shard_size: int | None = None
) -> StageOutcome:
    """Run ``stage`` on ``videos``: one task per video, or per shard when ``shard_size`` is set.

    Out-of-memory failures are returned as ``out_of_memory`` failures, not raised, so the
    caller can re-run them on fewer workers per GPU (DECISIONS.md).
    """
    logger = get_run_logger()
    outcome = StageOutcome(stage)
    if not videos:
        return outcome
    progress = create_progress_artifact(
        0.0, key=f"progress-{stage_slug(stage)}", description=f"Videos through {stage}, percent of {len(videos)}"
    )
    futures: dict[PrefectFuture, list[VideoRef]] = {}
    if shard_size:
        task_ = configured(process_shard, stage, settings)
        for index, shard in enumerate(_shards(videos, shard_size)):
            futures[task_.submit(stage, index, shard, settings)] = shard
    else:
        task_ = configured(process_video, stage, settings)
        for video in videos:
            futures[task_.submit(stage, video, settings)] = [video]

    finished = 0
    for future in as_completed(list(futures)):
        state = future.state
        batch = futures[future]
        if state.is_completed():
            results = state.result()
            for result in results if isinstance(results, list) else [results]:
                if isinstance(result, StageRecord):
                    outcome.records.append(result)
                else:
                    outcome.failures.append(result)
        else:
            exc = state.result(raise_on_failure=False)
            kind = "out_of_memory" if isinstance(exc, BaseException) and is_out_of_memory(exc) else "error"
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0] if isinstance(exc, BaseException) else state.message
            attempts = settings.retry.retries + 1 if kind == "error" else 1
            outcome.failures += [VideoFailure(v.video_id, stage, reason, kind, attempts) for v in batch]
        finished += len(batch)
        update_progress_artifact(progress, 100.0 * finished / len(videos))

    for failure in outcome.failures:
        logger.warning("%s failed for video %s (%s): %s", stage, failure.video_id, failure.kind, failure.reason)
    create_table_artifact(
        stage_table(outcome.records, outcome.failures),
        key=f"stage-{stage_slug(stage)}",
        description=f"Every video of stage {stage} in this run: status, time, peak memory, worker, GPU",
    )
    logger.info(
        "%s: %d done, %d skipped, %d failed",
        stage,
        sum(r.status == "done" for r in outcome.records),
        sum(r.status == "skipped" for r in outcome.records),
        len(outcome.failures),
    )
    return outcome
