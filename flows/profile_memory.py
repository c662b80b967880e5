"""Subflow ``profile-memory``: a GPU stage's first videos, one worker per GPU.

The packing policy (:mod:`trackset.scheduling.packing`) runs its profiling videos through this
subflow, so they show as their own run in the UI, beside the stage's other tasks in
``process-waves``. The caller asks for ``GPU_RANK`` resources that only the first worker of
each GPU offers (:func:`trackset.cluster.plan.gpu_task_resources` with one worker per
GPU); the peak each video held comes back in its record, and the policy sizes from the
largest.
"""

from __future__ import annotations

from prefect import flow

from trackset.config.settings import RetrySettings
from trackset.domain import StageOutcome
from trackset.engine.submission import ProgressReport, run_stage_tasks
from trackset.scheduling.worklist import WorkList
from trackset.stages.config import StageConfig


@flow(name="profile-memory", flow_run_name="profile-{stage}")
def profile_memory(
    stage: str,
    work: WorkList,
    config: StageConfig,
    retry: RetrySettings,
    progress: ProgressReport | None = None,
    resources: dict[str, float] | None = None,
) -> StageOutcome:
    """Run ``stage`` on the videos of ``work``, one task per video, asking for ``resources``.

    The videos come as a work list file, not a parameter: Prefect ships a flow's parameters
    with each of its tasks (trackset.scheduling.worklist). Out-of-memory failures come back as
    ``out_of_memory`` failures, not raised, for the packing policy (DECISIONS.md).
    """
    return run_stage_tasks(stage, work.load(), config, retry, None, progress, resources)
