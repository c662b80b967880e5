"""Dask worker preload of the auth test: every task this worker starts is kept, as it came.

Given to the flow as ``cluster.worker_preload``. As each task starts executing, its run spec
(the function, its arguments and the Prefect context prefect-dask pickled into it) is
pickled again into ``$TRACKSET_TEST_PAYLOADS/<pid>-<n>.pkl``, for the test to unpickle and
search for secrets.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Worker
from distributed.diagnostics.plugin import WorkerPlugin


class RecordPayloads(WorkerPlugin):
    """Writes each task's run spec when the task starts executing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = itertools.count()

    def setup(self, worker: Worker) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing":
            return
        run_spec = self.worker.state.tasks[key].run_spec
        path = self.folder / f"{os.getpid()}-{next(self.count)}.pkl"
        path.write_bytes(cloudpickle.dumps(run_spec))


async def dask_setup(worker: Worker) -> None:
    await worker.plugin_add(RecordPayloads(Path(os.environ["TRACKSET_TEST_PAYLOADS"])), name="record-payloads")
