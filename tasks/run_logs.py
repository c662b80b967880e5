"""trackset's own log records (``logging.getLogger("trackset...")``) in the run's log in the UI.

Prefect sends only its run loggers to the API; a warning of :mod:`trackset.formats.statistics`
(a std raised to the floor), :mod:`trackset.dataset.manifest` or a stage reached the terminal of
whichever process logged it (a Dask worker's, for a stage) and never the run's page.
``PREFECT_LOGGING_EXTRA_LOGGERS=trackset`` would fix it only in processes started with that
variable, which a worker's flow-run process, a local Dask worker spawned after Prefect set
up logging, and a worker someone else started (``cluster.scheduler_address``) need not be.
So every entry point of trackset code in a run, the flow and each task, calls
:func:`send_trackset_logs_to_prefect` in whatever process it runs: once per process, it
gives the ``trackset`` logger Prefect's API handler.

Records logged outside a flow or task run (the CLI's own commands, a worker's background
thread) are left to the other handlers: the API handler has no run to file them under and
would warn about each.
"""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

TRACKSET_LOGGER = "trackset"


class _InRun(logging.Filter):
    """Passes records logged inside a flow or task run (or carrying a flow run's id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return bool(getattr(record, "flow_run_id", None)) or (
            FlowRunContext.get() is not None or TaskRunContext.get() is not None
        )


def send_trackset_logs_to_prefect() -> None:
    """Give the ``trackset`` logger Prefect's API handler in this process, once.

    A logger already configured by ``PREFECT_LOGGING_EXTRA_LOGGERS`` keeps its handler, so no
    record is sent twice. The level stays the logger's own (warnings, by the root's default).
    """
    logger = logging.getLogger(TRACKSET_LOGGER)
    if any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        return
    handler = APILogHandler()
    handler.addFilter(_InRun())
    logger.addHandler(handler)
