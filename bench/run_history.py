"""What a ``build-dataset`` run did, read back from the Prefect API.

The benchmarks and the fault tests ask the API, not the flow's return value, how a stage
was split into subflows (profiling, then one run per packing of the GPUs) and which videos
each one ran: that is what a user sees in the UI. A stage subflow gets its videos as a
work list file (trackset.scheduling.worklist), so they are read from its task runs, which are named
``<stage>-<video id>`` (DECISIONS.md). Benchmarks import it as ``run_history`` (they run
from ``bench/``), tests as ``bench.run_history``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, TaskRun

# Task runs of Dask workers reach the API as events, possibly after the flow returned.
SETTLE_S = 30.0


def stage_subflows(flow_run_id: UUID, stages: list[str] | None = None) -> list[FlowRun]:
    """The ``profile-<stage>`` and ``process-<stage>`` subflows of a run, in start order.

    They are children of the run's ``waves`` subflow (``flows/waves.py``), grandchildren
    of the ``build-dataset`` run.
    """
    names = None if stages is None else [f"{kind}-{stage}" for stage in stages for kind in ("profile", "process")]
    with get_client(sync_client=True) as client:
        waves = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
                name=FlowRunFilterName(any_=["waves"]),
            )
        )
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id for run in waves]),
                name=None if names is None else FlowRunFilterName(any_=names),
            ),
            sort=FlowRunSort.START_TIME_ASC,
        )


def subflow_videos(subflow: FlowRun) -> int:
    """How many videos a stage subflow was given (the size of its work list)."""
    return int(subflow.parameters["work"]["videos"])


def settled_task_runs(subflow: FlowRun, expected: int, settle_s: float = SETTLE_S) -> list[TaskRun]:
    """The subflow's task runs, once at least ``expected`` of them have a start and an end.

    Raises:
        RuntimeError: fewer arrived within ``settle_s`` seconds.
    """
    deadline = time.monotonic() + settle_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[subflow.id])))
            timed = [r for r in runs if r.start_time and r.end_time]
            if len(timed) >= expected:
                return timed
            if time.monotonic() > deadline:
                raise RuntimeError(f"{subflow.name}: {len(timed)} of {expected} task runs timed in the API")
            time.sleep(1.0)


def video_ids(task_runs: list[TaskRun]) -> list[str]:
    """Sorted video ids of per-video task runs (``depth-camera-00042`` -> ``00042``).

    Examples:
        >>> from types import SimpleNamespace
        >>> video_ids([SimpleNamespace(name="depth-camera-00042"), SimpleNamespace(name="hands-00007")])
        ['00007', '00042']
    """
    return sorted(run.name.rsplit("-", 1)[1] for run in task_runs)


def waves_task_runs(flow_run_id: UUID, name_prefix: str, settle_s: float = SETTLE_S) -> list[TaskRun]:
    """Task runs named ``<name_prefix>...`` of the run's ``waves`` subflow, once all have ended.

    Raises:
        RuntimeError: some had no end within ``settle_s`` seconds.
    """
    deadline = time.monotonic() + settle_s
    with get_client(sync_client=True) as client:
        waves = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
                name=FlowRunFilterName(any_=["waves"]),
            )
        )
        while True:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id for run in waves]))
            )
            runs = [run for run in runs if run.name.startswith(name_prefix)]
            if runs and all(run.start_time and run.end_time for run in runs):
                return runs
            if time.monotonic() > deadline:
                raise RuntimeError(f"task runs {name_prefix}* of the waves subflow did not all end in the API")
            time.sleep(1.0)
