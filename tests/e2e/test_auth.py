"""A Prefect server with authentication, as README's ``deployments/server.sh`` starts it.

The auth string is made once by ``trackset secrets`` in a 0600 file; the server reads it
there, the CLI, deploy.sh and the worker get it in ``PREFECT_API_AUTH_STRING`` (what
``export PREFECT_API_AUTH_STRING="$(cat .../prefect-auth)"`` gives a shell). Anonymous API
calls are refused; a deployment run completes on the Dask runner; and no task of it carries
the auth string or the database password that the worker's shell also holds (README used to
``export`` the database URL in the shell that then ran the worker).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from tests.e2e import (
    PREFECT,
    REPO,
    TRACKSET,
    DatasetDirs,
    PrefectServer,
    clean_environ,
    describe_state,
    free_port,
    start_in_own_session,
    stop_process_group,
    wait_until_healthy,
)
from tests.e2e.conftest import LEAN_DASK
from trackset.engine.run_cluster import api_credentials_problems
from trackset.engine.task_context import secret_settings

pytestmark = pytest.mark.slow

PRELOAD = Path(__file__).with_name("preload_record_payloads.py")
DATABASE_PASSWORD = "database-password-of-the-e2e-shell"
# What the worker's shell holds besides the auth string: a database URL with its password.
DATABASE_URL = f"postgresql+asyncpg://prefect:{DATABASE_PASSWORD}@127.0.0.1:9/prefect"


class SecuredServer(PrefectServer):
    """A :class:`PrefectServer` whose clients also give the auth string."""

    auth: str = ""

    @contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        updates = {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth}
        with temporary_settings(updates), get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    """``trackset secrets`` then ``deployments/server.sh`` on a free port; deployed with the auth string."""
    root = tmp_path_factory.mktemp("secured")
    (logs := root / "logs").mkdir()
    secrets = root / "secrets"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    base = clean_environ() | {"PREFECT_HOME": str(root / "home"), "COLUMNS": "200"}
    made = PrefectServer(api_url, base, logs)
    made.run([str(TRACKSET), "secrets", str(secrets)], "secrets", timeout_s=60)
    auth = (secrets / "prefect-auth").read_text().strip()

    server_env = base | {
        "TRACKSET_SECRETS": str(secrets),
        "PREFECT": str(PREFECT),
        "PREFECT_UI_STATIC_DIRECTORY": str(root / "ui"),
    }
    log = logs / "server.log"
    process = start_in_own_session([str(REPO / "deployments" / "server.sh"), "127.0.0.1", str(port)], server_env, log)
    try:
        wait_until_healthy(process, api_url, log, timeout_s=180)  # the health probe needs no auth string
        server = SecuredServer(api_url, base | {"PREFECT_API_URL": api_url, "PREFECT_API_AUTH_STRING": auth}, logs)
        server.auth = auth
        server.deploy()
        yield server
    finally:
        stop_process_group(process)


def api_status(url: str, auth: str | None, body: dict[str, Any] | None = None, method: str = "POST") -> int:
    """The HTTP status of a call (by default ``POST url`` with an empty filter), with or without
    the auth string."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = f"Basic {b64encode(auth.encode()).decode()}"
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_anonymous_api_call_is_refused_and_cannot_rewrite_a_pull_step(secured: SecuredServer, tmp_path: Path):
    for path in ("flows/filter", "deployments/filter", "flow_runs/filter"):
        assert api_status(f"{secured.api_url}/{path}", None) == 401
        assert api_status(f"{secured.api_url}/{path}", "trackset:a-guess") == 401
        assert api_status(f"{secured.api_url}/{path}", secured.auth) == 200

    # The UI is told to ask for the auth string (README, step 1).
    with urllib.request.urlopen(f"{secured.ui_url}/ui-settings", timeout=30) as response:
        assert json.loads(response.read())["auth"] == "BASIC"

    # The attack of issue 29: make the worker run a command by rewriting the deployment's pull steps.
    with secured.client() as client:
        deployment = client.read_deployment_by_name("build-dataset/manual")
    mark = tmp_path / "ran"
    evil = {"pull_steps": [{"prefect.deployments.steps.run_shell_script": {"script": f"touch {mark}"}}]}
    assert api_status(f"{secured.api_url}/deployments/{deployment.id}", None, evil, method="PATCH") == 401
    with secured.client() as client:
        assert client.read_deployment(deployment.id).pull_steps == deployment.pull_steps


def test_a_worker_the_api_refuses_is_named_before_any_task(secured: SecuredServer):
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: None}):
        [problem] = api_credentials_problems(secured.api_url)
    assert problem.startswith(f"is refused by the Prefect API at {secured.api_url} (401 Unauthorized)")
    assert "PREFECT_API_AUTH_STRING" in problem
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: secured.auth}):
        assert api_credentials_problems(secured.api_url) == []


def shipped_contexts(folder: Path) -> list[dict[str, Any]]:
    """The Prefect context of every recorded task payload (``run_task_sync(..., context=...)``)."""
    return [cloudpickle.loads(path.read_bytes()).kwargs["context"] for path in sorted(folder.glob("*.pkl"))]


def test_a_deployment_run_with_the_auth_string_completes_and_no_task_carries_a_secret(
    secured: SecuredServer, tmp_path: Path
):
    dirs = DatasetDirs.under(tmp_path)
    secured.run([str(TRACKSET), "make-corpus", str(dirs.videos), "--videos", "2", "--frames", "20"], "corpus", 300)
    overrides: dict[str, Any] = dirs.overrides(**LEAN_DASK)
    overrides["cluster"] = {**overrides["cluster"], "worker_preload": [str(PRELOAD)], "profiling_videos": 1}
    parameters = {"settings_path": "settings.yaml", "overrides": overrides}
    flow_run_id = secured.run_deployment("build-dataset/manual", parameters)
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    worker = [str(PREFECT), "worker", "start", "--pool", "trackset", "--run-once"]
    secured.run(
        worker, "worker", 480, PREFECT_API_DATABASE_CONNECTION_URL=DATABASE_URL, TRACKSET_TEST_PAYLOADS=str(payloads)
    )

    with secured.client() as client:
        run = client.read_flow_run(flow_run_id)
    assert run.state is not None and run.state.is_completed(), describe_state(run)
    assert sorted(path.name for path in dirs.dataset.glob("*.hdf5")) == ["00000.hdf5", "00001.hdf5"]

    files = sorted(payloads.glob("*.pkl"))
    assert len(files) >= 6, "every stage's tasks ran on the Dask workers"
    for path in files:
        payload = path.read_bytes()
        assert secured.auth.encode() not in payload, path
        assert DATABASE_PASSWORD.encode() not in payload, path
    for context in shipped_contexts(payloads):
        settings = context["settings_context"]["settings"]
        assert settings["api"]["url"] == secured.api_url  # the task still finds the server
        for secret in secret_settings():
            section = settings
            for name in secret[:-1]:
                section = section.get(name, {})
            assert secret[-1] not in section, secret
