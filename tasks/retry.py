"""Retry policy of every stage task: retry transient failures in place, nothing else.

Prefect retries run in the same worker, so retrying an out-of-memory failure in place would
fail again: the stage runner collects those and re-runs them on fewer workers per GPU
instead (DECISIONS.md "Out-of-memory policy"). Typed video errors are final at once.
"""

from __future__ import annotations

from typing import Any

import torch
from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from trackset.errors import TracksetError


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA (or fake-device) out-of-memory errors."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def retry_on_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: False for typed errors and out-of-memory, else True."""
    try:
        state.result()
    except TracksetError:
        return False
    except Exception as exc:
        return not is_out_of_memory(exc)
    return False
