"""trackset's logger gets Prefect's API handler once per process, and only run records pass it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
from prefect.logging.handlers import APILogHandler

from trackset.tasks.run_logs import TRACKSET_LOGGER, send_trackset_logs_to_prefect


@pytest.fixture
def trackset_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(TRACKSET_LOGGER)
    before = list(logger.handlers)
    yield logger
    logger.handlers = before


def api_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [handler for handler in logger.handlers if isinstance(handler, APILogHandler)]


def test_the_handler_is_added_once(trackset_logger):
    trackset_logger.handlers = [h for h in trackset_logger.handlers if not isinstance(h, APILogHandler)]
    send_trackset_logs_to_prefect()
    send_trackset_logs_to_prefect()
    assert len(api_handlers(trackset_logger)) == 1


def test_records_outside_a_run_are_left_to_the_other_handlers(trackset_logger):
    """No 'attempted to send logs to the API without a flow run id' warning per record."""
    send_trackset_logs_to_prefect()
    [handler] = api_handlers(trackset_logger)
    outside = logging.LogRecord("trackset.formats.statistics", logging.WARNING, __file__, 1, "std floored", None, None)
    assert not handler.filter(outside)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logging.getLogger("trackset.formats.statistics").warning("std below std_floor raised to it")
    marked = logging.LogRecord("trackset.x", logging.WARNING, __file__, 1, "m", None, None)
    marked.flow_run_id = "00000000-0000-0000-0000-000000000001"
    assert handler.filter(marked)
