"""A Prefect server with authentication over HTTPS, as README's ``deployments/server.sh`` starts it.

The auth string and the API's certificate are made once by ``trackset secrets`` (0600 files);
the server reads them there, the CLI, deploy.sh and the worker get the auth string in
``PREFECT_API_AUTH_STRING`` (what ``export PREFECT_API_AUTH_STRING="$(cat .../prefect-auth)"``
gives a shell) and trust ``api-tls/ca.pem`` through ``PREFECT_API_SSL_CERT_FILE``. The API
answers nothing in clear and nothing to a client that does not trust its certificate;
anonymous API calls are refused; a deployment run completes on the Dask runner, its tasks'
logs and task runs reach the server from the Dask workers (HTTPS and wss); and no task of it
carries the auth string or the database password that the worker's shell also holds (README
used to ``export`` the database URL in the shell that then ran the worker).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId, TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import Log, TaskRun
from prefect.client.schemas.sorting import LogSort
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

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
    """A :class:`PrefectServer` whose clients also give the auth string and trust its certificate."""

    auth: str = ""
    trust: Path = Path()
    log: Path = Path()

    @property
    def trusted(self) -> ssl.SSLContext:
        """What a client holding the trust file checks the server's certificate against."""
        return ssl.create_default_context(cafile=self.trust)

    @contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        updates = {PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth}
        updates[PREFECT_API_SSL_CERT_FILE] = str(self.trust)
        with temporary_settings(updates), get_client(sync_client=True) as client:
            yield client


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    """``trackset secrets`` then ``deployments/server.sh`` on a free port (HTTPS with the
    certificate trackset secrets made for this host, 127.0.0.1 included); deployed with the
    auth string and the trust file."""
    root = tmp_path_factory.mktemp("secured")
    (logs := root / "logs").mkdir()
    secrets = root / "secrets"
    port = free_port()
    api_url = f"https://127.0.0.1:{port}/api"
    base = clean_environ() | {"PREFECT_HOME": str(root / "home"), "COLUMNS": "200"}
    made = PrefectServer(api_url, base, logs)
    made.run([str(TRACKSET), "secrets", str(secrets)], "secrets", timeout_s=60)
    auth = (secrets / "prefect-auth").read_text().strip()
    trust = secrets / "api-tls" / "ca.pem"

    server_env = base | {
        "TRACKSET_SECRETS": str(secrets),
        "PREFECT": str(PREFECT),
        "PYTHON": sys.executable,
        "PREFECT_UI_STATIC_DIRECTORY": str(root / "ui"),
        "PREFECT_SERVER_LOGGING_LEVEL": "INFO",  # the services say they started
    }
    log = logs / "server.log"
    process = start_in_own_session([str(REPO / "deployments" / "server.sh"), "127.0.0.1", str(port)], server_env, log)
    try:
        # The health probe needs no auth string, but the trust file.
        wait_until_healthy(process, api_url, log, timeout_s=180, context=ssl.create_default_context(cafile=trust))
        env = base | {"PREFECT_API_URL": api_url, "PREFECT_API_SSL_CERT_FILE": str(trust)}
        env["PREFECT_API_AUTH_STRING"] = auth
        server = SecuredServer(api_url, env, logs)
        server.auth, server.trust, server.log = auth, trust, log
        server.deploy()
        yield server
    finally:
        stop_process_group(process)


def api_status(
    url: str, auth: str | None, context: ssl.SSLContext, body: dict[str, Any] | None = None, method: str = "POST"
) -> int:
    """The HTTP status of a call (by default ``POST url`` with an empty filter), with or without
    the auth string; ``context`` checks the server's certificate."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = f"Basic {b64encode(auth.encode()).decode()}"
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def eavesdropper(port: int) -> Iterator[tuple[int, bytearray]]:
    """A relay on 127.0.0.1 to ``port`` that keeps every byte it passes, both ways: what
    anyone on the network path reads. Yields its port and the bytes."""
    seen = bytearray()
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                seen.extend(chunk)
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", port))
                for ends in ((client, upstream), (upstream, client)):
                    threading.Thread(target=pump, args=ends, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        listener.close()


def test_the_api_answers_only_over_https_and_only_clients_that_trust_its_certificate(secured: SecuredServer):
    flows = f"{secured.api_url}/flows/filter"
    port = urllib.parse.urlsplit(secured.api_url).port
    assert port is not None
    # What crosses the network: neither the auth string nor the answer, in any form.
    with eavesdropper(port) as (relay, seen):
        relayed = flows.replace(f":{port}/", f":{relay}/")
        assert api_status(relayed, secured.auth, secured.trusted) == 200
    basic = b64encode(secured.auth.encode())
    assert seen and basic not in seen and secured.auth.encode() not in seen and b"/flows/filter" not in seen
    # The control: the relay reads what a client sends in clear (as every client did before
    # server.sh served HTTPS); such a client gets no answer now, but it did send the string.
    no_answer = pytest.raises((http.client.HTTPException, ConnectionError, urllib.error.URLError))
    with eavesdropper(port) as (relay, seen), no_answer:
        api_status(f"http://127.0.0.1:{relay}/api/flows/filter", secured.auth, secured.trusted)
    assert basic in seen
    # A client without the trust file: the system's CAs, certifi's (Prefect's default).
    with pytest.raises(urllib.error.URLError) as caught:
        api_status(flows, secured.auth, ssl.create_default_context())
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)
    updates = {PREFECT_API_URL: secured.api_url, PREFECT_API_AUTH_STRING: secured.auth, PREFECT_API_SSL_CERT_FILE: None}
    with temporary_settings(updates), get_client(sync_client=True) as client:
        refused = client.api_healthcheck()
    assert refused is not None and "CERTIFICATE_VERIFY_FAILED" in str(refused)
    # Plain HTTP to the same port, auth string and all: no answer.
    plain = flows.replace("https://", "http://")
    with pytest.raises((http.client.HTTPException, ConnectionError, urllib.error.URLError)):
        api_status(plain, secured.auth, secured.trusted)
    # What `prefect server start` runs, the server of server.sh runs: its services started
    # (migrations: deploy.sh worked on a fresh database).
    started = secured.log.read_text(errors="replace")
    for service in (
        "Scheduling perpetual service: schedule_deployments",
        "Scheduling perpetual service: evaluate_proactive_triggers_periodic",
        "Scheduling perpetual service: monitor_late_runs",
        "ReactiveTriggers starting",
        "Starting action message handler",
        "Creating TaskRunRecorder consumer",
    ):
        assert service in started, service


def test_an_anonymous_api_call_is_refused_and_cannot_rewrite_a_pull_step(secured: SecuredServer, tmp_path: Path):
    for path in ("flows/filter", "deployments/filter", "flow_runs/filter"):
        assert api_status(f"{secured.api_url}/{path}", None, secured.trusted) == 401
        assert api_status(f"{secured.api_url}/{path}", "trackset:a-guess", secured.trusted) == 401
        assert api_status(f"{secured.api_url}/{path}", secured.auth, secured.trusted) == 200

    # The UI is told to ask for the auth string (README, step 1), at /api of wherever it was
    # loaded from (https://, or through an SSH tunnel).
    with urllib.request.urlopen(f"{secured.ui_url}/ui-settings", timeout=30, context=secured.trusted) as response:
        settings = json.loads(response.read())
    assert (settings["auth"], settings["api_url"]) == ("BASIC", "/api")

    # The attack of issue 29: make the worker run a command by rewriting the deployment's pull steps.
    with secured.client() as client:
        deployment = client.read_deployment_by_name("build-dataset/manual")
    mark = tmp_path / "ran"
    evil = {"pull_steps": [{"prefect.deployments.steps.run_shell_script": {"script": f"touch {mark}"}}]}
    assert api_status(f"{secured.api_url}/deployments/{deployment.id}", None, secured.trusted, evil, "PATCH") == 401
    with secured.client() as client:
        assert client.read_deployment(deployment.id).pull_steps == deployment.pull_steps


def test_a_worker_the_api_refuses_is_named_before_any_task(secured: SecuredServer):
    trusting = {PREFECT_API_SSL_CERT_FILE: str(secured.trust)}
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: None, **trusting}):
        [problem] = api_credentials_problems(secured.api_url)
    assert problem.startswith(f"is refused by the Prefect API at {secured.api_url} (401 Unauthorized)")
    assert "PREFECT_API_AUTH_STRING" in problem
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: secured.auth, **trusting}):
        assert api_credentials_problems(secured.api_url) == []


def task_runs_and_logs_from_dask(
    client: SyncPrefectClient, payloads: Path, timeout_s: float = 60
) -> tuple[list[TaskRun], list[Log]]:
    """The task runs that ran on the Dask workers (the recorded payloads carry their ids), as
    the server knows them, and their logs; waits up to ``timeout_s`` for a first log (a
    worker's log handler sends in batches)."""
    ids = [cloudpickle.loads(path.read_bytes()).kwargs["task_run_id"] for path in payloads.glob("*.pkl")]
    deadline = time.monotonic() + timeout_s
    while True:
        task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)))
        dask_logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=ids)), sort=LogSort.TIMESTAMP_ASC)
        if dask_logs or time.monotonic() > deadline:
            return task_runs, dask_logs
        time.sleep(2)


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
        dask_runs, dask_logs = task_runs_and_logs_from_dask(client, payloads)
    assert sorted(path.name for path in dirs.dataset.glob("*.hdf5")) == ["00000.hdf5", "00001.hdf5"]
    # The Dask workers reached the HTTPS API: their task runs (recorded from the events they
    # send over wss) and those task runs' logs (sent over HTTPS) are on the server.
    assert any(task_run.state is not None and task_run.state.is_completed() for task_run in dask_runs), dask_runs
    assert dask_logs, [task_run.name for task_run in dask_runs]
    assert {log.task_run_id for log in dask_logs} <= {task_run.id for task_run in dask_runs}

    files = sorted(payloads.glob("*.pkl"))
    assert len(files) >= 6, "every stage's tasks ran on the Dask workers"
    for path in files:
        payload = path.read_bytes()
        assert secured.auth.encode() not in payload, path
        assert DATABASE_PASSWORD.encode() not in payload, path
    for context in shipped_contexts(payloads):
        settings = context["settings_context"]["settings"]
        assert settings["api"]["url"] == secured.api_url  # the task still finds the server
        assert settings["api"]["ssl_cert_file"] == str(secured.trust)  # and trusts it
        for secret in secret_settings():
            section = settings
            for name in secret[:-1]:
                section = section.get(name, {})
            assert secret[-1] not in section, secret
