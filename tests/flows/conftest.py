"""One Prefect test server for the whole session (DECISIONS.md test budget)."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(autouse=True, scope="session")
def prefect_server():
    """Every flow test in the session talks to one temporary Prefect server."""
    with prefect_test_harness(server_startup_timeout=120):
        yield
