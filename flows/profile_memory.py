"""Subflow ``profile-memory``: a GPU stage's first videos, one worker per GPU.

The packing policy (:mod:`trackset.scheduling.packing`) runs its profiling videos through this
subflow, so they show as their own run in the UI, beside the stage's other tasks in
``process-waves``. The engine asks for ``GPU_RANK`` resources that only the first worker of
each GPU offers (:func:`trackset.cluster.plan.gpu_task_resources` with one worker per
GPU); the peak each video held comes back in its record, and the policy sizes from the
largest. ``process-waves`` hands this subflow to the engine (``trackset.engine.executor``),
which never imports the flows.
"""

from __future__ import annotations

from prefect import flow

from trackset.config.settings import RetrySettings
from trackset.engine.submission import run_and_report
from trackset.scheduling.outcomes import TaskReport
from trackset.scheduling.worklist import WorkList
from trackset.stages.config import StageConfig


@flow(name="profile-memory", flow_run_name="profile-{stage}")
def profile_memory(
    stage: str,
    work: WorkList,
    config: StageConfig,
    retry: RetrySettings,
    resources: dict[str, float] | None = None,
) -> list[TaskReport]:
    """Run ``stage`` on the videos of ``work``, one task per video, asking for ``resources``;
    report each task (the planner reads them: out-of-memory failures are not raised, for the
    packing policy, DECISIONS.md).

    The videos come as a work list file, not a parameter: Prefect ships a flow's parameters
    with each of its tasks (trackset.scheduling.worklist).
    """
    return run_and_report(stage, work.load(), config, retry, resources)
