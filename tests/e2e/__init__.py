"""End-to-end tests: what a user does with a real Prefect server, its UI and a worker.

The toolkit below drives the ``prefect`` CLI and ``deployments/deploy.sh`` as subprocesses
with explicit environments (never the test process's ``os.environ``), so every test sees
what a user at a shell would. Each process is started in a session of its own and stopped
through that id, so its children (uvicorn, flow-run processes, Dask nannies) go with it and
nothing else is touched.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import Event
from prefect.settings import PREFECT_API_URL, temporary_settings

from trackset.synthetic.corpus import make_corpus, sidecar_path

REPO = Path(__file__).resolve().parents[2]
# The executables of the interpreter running the tests: in CI and in the README, .venv's.
PREFECT = Path(sys.executable).with_name("prefect")
TRACKSET = Path(sys.executable).with_name("trackset")

# Synthetic hands only come into view late in a clip, and a hand window counts only where the
# wrist stays inside the H5's centre crop: at 30 frames, clips 0 and 2-5 of seed 6 and clips
# 0 and 1 of seed 2 keep such windows, so the statistics the nightly test compares include
# the hand statistics.
NUM_FRAMES = 30
BASE_SEED, BASE_VIDEOS = 6, 6
ADDED_SEED, ADDED_VIDEOS = 2, 2

_FLOW_RUN_UUID = re.compile(r"UUID: ([0-9a-f-]{36})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environ() -> dict[str, str]:
    """This environment without ``PREFECT_*`` and ``TRACKSET_*`` variables.

    A developer's own profile, API URL, nightly cron or settings must not leak into the
    server, the deployments or the runs under test.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRACKSET_"))}


def start_in_own_session(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` with its output in ``log``, leading a process group of its own."""
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process_group(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """SIGTERM the group ``process`` leads, then SIGKILL it if it is still there after ``timeout_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout_s)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, lines: int = 80) -> str:
    """The last ``lines`` lines of a log, to put in a failure message."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until_healthy(
    process: subprocess.Popen[bytes], api_url: str, log: Path, timeout_s: float, context: ssl.SSLContext | None = None
) -> None:
    """Poll ``<api>/health`` until it answers; fail early with the log if the server exits.

    ``context``: what an ``https://`` API's certificate is checked against (its CA's file).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prefect server exited with {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"prefect server not healthy after {timeout_s:.0f} s:\n{tail(log)}")


@dataclass(frozen=True)
class DatasetDirs:
    """Where one dataset's videos, intermediates and outputs live."""

    videos: Path
    work: Path
    dataset: Path

    @classmethod
    def under(cls, root: Path, videos: Path | None = None) -> DatasetDirs:
        """``root/videos`` (or shared ``videos``), ``root/work`` and ``root/dataset``."""
        return cls(videos or root / "videos", root / "work", root / "dataset")

    def overrides(self, **extra: Any) -> dict[str, Any]:
        """The ``overrides`` flow parameter that points a run at these directories."""
        paths = {"videos_dir": str(self.videos), "work_dir": str(self.work), "dataset_dir": str(self.dataset)}
        return {"paths": paths, **extra}


@dataclass(frozen=True)
class Build:
    """A dataset built by a deployment run."""

    flow_run_id: UUID
    dirs: DatasetDirs


@dataclass
class PrefectServer:
    """A running ``prefect server start`` and the environment every CLI call against it uses."""

    api_url: str
    env: dict[str, str]
    logs: Path
    _calls: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def run(self, args: list[str], name: str, timeout_s: float, **extra_env: str) -> str:
        """Run ``args`` to completion in the repository with this server's environment.

        The output goes to ``logs/NN-<name>.log`` and is returned. A non-zero exit or a
        timeout fails the test with the log's tail; on timeout the process group is stopped.
        """
        log = self.logs / f"{next(self._calls):02d}-{name}.log"
        process = start_in_own_session(args, self.env | extra_env, log)
        try:
            returncode = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stop_process_group(process)
            raise AssertionError(f"{name} still running after {timeout_s:.0f} s:\n{tail(log)}") from None
        if returncode != 0:
            raise AssertionError(f"{name} exited with {returncode}:\n{tail(log)}")
        return log.read_text(errors="replace")

    def deploy(self, **env: str) -> str:
        """``deployments/deploy.sh`` as docs/prefect.md runs it; ``env`` sets e.g. TRACKSET_NIGHTLY_CRON."""
        tools = {"PREFECT": str(PREFECT), "PYTHON": sys.executable}
        return self.run(["deployments/deploy.sh"], "deploy", timeout_s=180, **tools, **env)

    def run_deployment(self, name: str, parameters: dict[str, Any]) -> UUID:
        """``prefect deployment run NAME --param key=<json> ...``; returns the new flow run's id."""
        args = [str(PREFECT), "deployment", "run", name]
        # Plain strings go bare (settings_path=settings.yaml), as users type them: the CLI
        # takes a value that is not JSON as a string.
        for key, value in parameters.items():
            args += ["--param", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
        output = self.run(args, f"run-{name.replace('/', '-')}", timeout_s=120)
        match = _FLOW_RUN_UUID.search(output)
        assert match, f"no flow run id in the output of prefect deployment run:\n{output}"
        return UUID(match.group(1))

    def run_worker_once(self, timeout_s: float) -> str:
        """``prefect worker start --pool trackset --run-once``: runs what is due, waits, exits."""
        args = [str(PREFECT), "worker", "start", "--pool", "trackset", "--run-once"]
        return self.run(args, "worker", timeout_s=timeout_s)

    @contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        """A Prefect client for this server; the process's settings are restored afterwards."""
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            yield client


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps the JSON body of every POST (a notification)."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        """The first body ``wanted`` accepts, waiting for it up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [body for body in list(self.received) if wanted(body)]
            if found:
                return found[0]
            time.sleep(1)
        raise AssertionError(f"no such notification within {timeout_s:.0f} s; received: {self.received}")


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A :class:`WebhookReceiver` on a free port for the duration of the block."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            bodies.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads the bodies, not a log on stderr."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebhookReceiver(f"http://127.0.0.1:{server.server_address[1]}/notify", bodies)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def read_events(client: SyncPrefectClient, event: str, resource_id: str, timeout_s: float = 60) -> list[Event]:
    """Events named ``event`` about ``resource_id``, waiting up to ``timeout_s`` for the first
    (the server stores events a little after they are sent).

    The filter is built anew for every poll: its ``occurred.until`` defaults to the moment it
    is made, so one filter reused would never see an event that occurs while we wait."""
    deadline = time.monotonic() + timeout_s
    while True:
        event_filter = EventFilter(event=EventNameFilter(name=[event]), resource=EventResourceFilter(id=[resource_id]))
        events = client.read_events(filter=event_filter, limit=50).events
        if events or time.monotonic() > deadline:
            return events
        time.sleep(2)


def artifacts_by_key(client: SyncPrefectClient, flow_run_id: UUID) -> dict[str, Artifact]:
    """Artifacts of a flow run and its subflows at any depth (``waves``, then ``profile-memory``)."""
    run_ids, frontier = [flow_run_id], [flow_run_id]
    while frontier:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
        )
        frontier = [run.id for run in children]
        run_ids += frontier
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=run_ids)))
    return {artifact.key: artifact for artifact in artifacts if artifact.key}


def upcoming_auto_scheduled_runs(client: SyncPrefectClient, deployment_id: UUID) -> list[FlowRun]:
    """Runs the server's scheduler created for a deployment that have not started yet."""
    scheduled = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=scheduled),
    )
    return [run for run in runs if run.auto_scheduled]


def describe_state(run: FlowRun) -> str:
    """``COMPLETED`` or ``FAILED: <message>``, for assertion messages."""
    if run.state is None:
        return "no state"
    return f"{run.state.type.value}: {run.state.message or ''}".rstrip(": ")


def add_clips(videos_dir: Path, count: int, seed: int, first_index: int) -> list[Path]:
    """Add ``count`` new synthetic clips to ``videos_dir`` as ``clip_<first_index>...``.

    ``make_corpus`` always numbers from ``clip_000``, so the clips are rendered next to
    ``videos_dir`` and moved in under their new names, each with its ``.scene.json`` sidecar.
    """
    added = []
    with tempfile.TemporaryDirectory(dir=videos_dir.parent) as scratch:
        for index, video in enumerate(make_corpus(Path(scratch), count, seed=seed, num_frames=NUM_FRAMES)):
            target = videos_dir / f"clip_{first_index + index:03d}{video.suffix}"
            sidecar_path(video).rename(sidecar_path(target))
            added.append(video.rename(target))
    return added


def video_ids(start: int, stop: int) -> list[str]:
    """Five-digit manifest ids, ``video_ids(0, 2) == ["00000", "00001"]``."""
    return [f"{index:05d}" for index in range(start, stop)]
