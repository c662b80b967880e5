"""What a task carries to a Dask worker: the flow's API URL, none of Prefect's secrets.

The flow runs with an auth string, an API key and a database URL with a password in its
Prefect settings, as when a user's shell exports them. Its task, on a worker process,
returns the pickled run spec Dask handed that worker, and what the worker's Prefect
settings say; the test unpickles that payload and looks for the secrets in it.
"""

from __future__ import annotations

import cloudpickle
import pytest
from distributed import LocalCluster, get_worker
from prefect import flow, task
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_DATABASE_CONNECTION_URL,
    PREFECT_API_KEY,
    PREFECT_API_URL,
    get_current_settings,
    temporary_settings,
)

from trackset.engine.task_context import DaskTaskRunnerWithoutSecrets

AUTH = "trackset:auth-string-of-the-test"
KEY = "api-key-of-the-test"
PASSWORD = "database-password-of-the-test"
DATABASE = f"postgresql+asyncpg://prefect:{PASSWORD}@127.0.0.1:5433/prefect"


@task
def what_i_carry() -> tuple[bytes, dict[str, str | None]]:
    """Run on a worker: the bytes of this task's run spec, and this worker's Prefect settings."""
    worker = get_worker()
    run_spec = worker.state.tasks[worker.get_current_task()].run_spec
    settings = get_current_settings()
    seen = {
        "url": settings.api.url,
        "auth": settings.api.auth_string.get_secret_value() if settings.api.auth_string else None,
        "database": settings.server.database.connection_url.get_secret_value(),
    }
    return cloudpickle.dumps(run_spec), seen


def context_of(run_spec: object) -> dict:
    """The Prefect context in an unpickled run spec: ``run_task_sync(..., context=...)``."""
    return run_spec.kwargs["context"]  # type: ignore[attr-defined]


@pytest.mark.timeout(180)
def test_a_task_carries_the_api_url_and_no_secret_and_its_worker_uses_its_own():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:

        @flow(task_runner=DaskTaskRunnerWithoutSecrets(address=cluster.scheduler_address))
        def ship() -> tuple[bytes, dict[str, str | None]]:
            return what_i_carry.submit().result()

        secrets = {PREFECT_API_AUTH_STRING: AUTH, PREFECT_API_KEY: KEY, PREFECT_API_DATABASE_CONNECTION_URL: DATABASE}
        with temporary_settings(updates=secrets):
            api_url = PREFECT_API_URL.value()
            payload, seen = ship()

    for secret in (AUTH, KEY, PASSWORD, DATABASE):
        assert secret.encode() not in payload
    shipped = context_of(cloudpickle.loads(payload))["settings_context"]
    assert shipped["settings"]["api"]["url"] == api_url
    assert "auth_string" not in shipped["settings"]["api"] and "key" not in shipped["settings"]["api"]
    assert "connection_url" not in shipped["settings"]["server"]["database"]
    # The worker's settings: the flow's API, its own (here: no) credentials and database.
    assert seen["url"] == api_url
    assert seen["auth"] is None
    assert PASSWORD not in seen["database"]
