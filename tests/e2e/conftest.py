"""One real Prefect server per session, the deployments on it, and one manual build.

``prefect_test_harness`` would be cheaper but never mounts the UI and runs no worker: these
tests check what a user does (PLATFORM-NOTES.md, "Server, deployments, workers"). The
server, the deployments and the first build are shared by every e2e test, as DECISIONS.md
asks of slow tests. Notifications go to a webhook receiver on 127.0.0.1, whose URL deploy.sh
reads from a 0600 file (``TRACKSET_NOTIFY_URL_FILE``) as a user's would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import (
    BASE_SEED,
    BASE_VIDEOS,
    NUM_FRAMES,
    PREFECT,
    TRACKSET,
    Build,
    DatasetDirs,
    PrefectServer,
    WebhookReceiver,
    clean_environ,
    free_port,
    start_in_own_session,
    stop_process_group,
    wait_until_healthy,
    webhook_receiver,
)

# The manual build runs the default Dask runner, shaped to start few processes on 2 cores:
# one fake GPU, one worker per cluster, and every video profiled (so each GPU stage starts
# one cluster, not two). The synthetic models charge the fake GPU, so profiling measures a
# peak and publishes memory-profile-<stage>.
LEAN_DASK: dict[str, Any] = {
    "cluster": {
        "runner": "dask",
        "fake_gpus": [{"name": "FakeGPU", "memory_gb": 32}],
        "max_workers_per_gpu": 1,
        "profiling_videos": BASE_VIDEOS,
        "cpu_workers": 1,
    },
    "synthetic": {
        "depth_camera": {"model_mb": 2000, "per_video_mb": 200, "per_frame_mb": 4},
        "object_masks": {"model_mb": 1000, "per_video_mb": 100, "per_frame_mb": 1},
        "tracks_3d": {"model_mb": 1000, "per_video_mb": 100, "per_frame_mb": 2},
        "hands": {"model_mb": 500, "per_video_mb": 50, "per_frame_mb": 1},
    },
}


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    """Where the notification automation's webhook block posts."""
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, webhook: WebhookReceiver) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port with a database and UI copy of its own."""
    root = tmp_path_factory.mktemp("prefect")
    (logs := root / "logs").mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    url_file = root / "webhook-url"
    url_file.write_text(webhook.url)
    url_file.chmod(0o600)
    env = clean_environ() | {
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_API_URL": api_url,
        # The UI asks the API on this port; without it, "Unable to connect to Prefect server".
        "PREFECT_SERVER_API_PORT": str(port),
        # Prefect copies the UI on first start; site-packages may not be writable.
        "PREFECT_UI_STATIC_DIRECTORY": str(root / "ui"),
        # Rich wraps CLI output at 80 columns when not on a terminal.
        "COLUMNS": "200",
        # deploy.sh makes the notification block from it (trackset/flows/automations.py).
        "TRACKSET_NOTIFY_URL_FILE": str(url_file),
    }
    log = logs / "server.log"
    args = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    process = start_in_own_session(args, env, log)
    try:
        wait_until_healthy(process, api_url, log, timeout_s=180)
        yield PrefectServer(api_url, env, logs)
    finally:
        stop_process_group(process)


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """The server with work pool ``trackset`` and both deployments, made by deploy.sh."""
    prefect_server.deploy()
    return prefect_server


@pytest.fixture(scope="session")
def manual_build(deployed: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """Six synthetic videos built by ``build-dataset/manual`` and one run-once worker.

    The nightly test later adds videos to this corpus and refreshes this dataset: that is
    what the nightly refresh is for.
    """
    dirs = DatasetDirs.under(tmp_path_factory.mktemp("build"))
    make_corpus = [str(TRACKSET), "make-corpus", str(dirs.videos)]
    make_corpus += ["--videos", str(BASE_VIDEOS), "--frames", str(NUM_FRAMES), "--seed", str(BASE_SEED)]
    deployed.run(make_corpus, "make-corpus", timeout_s=300)  # as docs/prefect.md does it
    flow_run_id = deployed.run_deployment(
        "build-dataset/manual", {"settings_path": "settings.yaml", "overrides": dirs.overrides(**LEAN_DASK)}
    )
    deployed.run_worker_once(timeout_s=420)
    return Build(flow_run_id, dirs)
