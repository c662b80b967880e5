"""One Prefect test server for the whole session (DECISIONS.md test budget), set up not to stall.

``prefect_test_harness`` keeps the server's database in a SQLite file, used through a pool of
connections. Each task run first asks the server for its tags' concurrency slots
(``POST /api/v2/concurrency_limits/increment-with-lease``: a read, then an UPDATE, in one
deferred transaction). A stage's tasks start just as the flow creates or updates the stage's
``progress-<stage>`` artifact; when that write commits between the read and the UPDATE, SQLite
refuses the UPDATE ("database is locked": the read's snapshot is stale), the server answers
503 and Prefect's client retries only after 2 s. In the fast flow tests that happened 98 times
(BENCHMARKS.md, "Fast suite"), most of them on the path every other task waited on.

So the database is in memory, which Prefect serves through a single connection: requests
take turns and none is refused. Off, as no test reads them: flow-run heartbeats (the end of
every flow run waits up to 1 s for the heartbeat thread), the event persister, automations
(triggers) and telemetry. Task runs, states, artifacts and logs are recorded as before.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prefect.context import refresh_global_settings_context
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import temporary_settings

# What the test server runs with (Prefect settings, as ``temporary_settings`` keys).
SERVER_SETTINGS: dict[str, Any] = {
    "server.database.connection_url": "sqlite+aiosqlite:///:memory:",
    # Block auto-registration is memoized per database URL; every in-memory database is new.
    "server.memoize_block_auto_registration": False,
    "server.analytics_enabled": False,
    "server.services.event_persister.enabled": False,
    "server.services.triggers.enabled": False,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True, scope="session")
def prefect_server() -> Iterator[str]:
    """Every flow test in the session talks to one temporary Prefect server; yields its API URL."""
    with temporary_settings(updates=SERVER_SETTINGS):
        server = SubprocessASGIServer(port=_free_port())
        server.start(timeout=120)
    try:
        with (
            pytest.MonkeyPatch.context() as env,
            temporary_settings(updates={"api.url": server.api_url, "flows.heartbeat_frequency": None}),
        ):
            # Threads without this context (Prefect's own) and subprocesses find the server too.
            env.setenv("PREFECT_API_URL", server.api_url)
            refresh_global_settings_context()
            yield server.api_url
            # Logs and events still queued go out before the server stops, as prefect_test_harness does.
            APILogWorker.drain_all()
            EventsWorker.drain_all()
    finally:
        server.stop()
        refresh_global_settings_context()
