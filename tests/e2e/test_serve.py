"""``trackset serve``: the deployments of prefect.yaml run by one process, no work pool.

On the session's server, whose worker deployments are set aside for it (a server holds one
route, and serve refuses to take over a worker's deployments) and made again by deploy.sh
afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect.exceptions import ObjectNotFound

from tests.e2e import (
    BASE_SEED,
    NUM_FRAMES,
    TRACKSET,
    DatasetDirs,
    PrefectServer,
    describe_state,
    read_events,
    start_in_own_session,
    stop_process_group,
    tail,
)
from trackset.synthetic.corpus import make_corpus

pytestmark = pytest.mark.slow

NAMES = ("build-dataset/manual", "build-dataset/nightly-refresh")


def test_serve_registers_the_deployments_on_their_schedules_and_runs_a_manual_build(
    deployed: PrefectServer, tmp_path: Path
):
    log = deployed.logs / "serve.log"
    refused = start_in_own_session([str(TRACKSET), "serve"], deployed.env, log)
    assert refused.wait(120) == 2
    assert "run through a worker (deploy.sh)" in log.read_text()

    delete_deployments(deployed)
    environment = deployed.env | {"TRACKSET_NIGHTLY_CRON": "15 4 * * *", "TRACKSET_HEARTBEAT_S": "30"}
    serving = start_in_own_session([str(TRACKSET), "serve"], environment, log)
    try:
        with deployed.client() as client:
            deadline = time.monotonic() + 120
            while "Your deployments are being served" not in log.read_text():
                assert serving.poll() is None and time.monotonic() < deadline, tail(log)
                time.sleep(2)
            manual, nightly = (client.read_deployment_by_name(name) for name in NAMES)
        assert manual.work_pool_name is None and nightly.work_pool_name is None
        [schedule] = nightly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("15 4 * * *", "UTC", True)
        assert nightly.parameters["overrides"] == {"run": {"fail_on_video_error": True}, "timeouts": {"flow_hours": 20}}
        assert manual.concurrency_options is not None
        assert manual.concurrency_options.collision_strategy.value == "ENQUEUE"
        with deployed.client() as client:
            names = {automation.name for automation in client.read_automations()}
        assert "trackset: rerun a crashed nightly refresh once" in names

        dirs = DatasetDirs.under(tmp_path)
        make_corpus(dirs.videos, 1, seed=BASE_SEED, num_frames=NUM_FRAMES)
        parameters = {"settings_path": "settings.yaml", "overrides": dirs.overrides(cluster={"runner": "threads"})}
        flow_run_id = deployed.run_deployment("build-dataset/manual", parameters)
        deadline = time.monotonic() + 300
        while True:  # the serving process picks the run up and runs it: nothing else is running
            with deployed.client() as client:
                run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                break
            assert serving.poll() is None and time.monotonic() < deadline, f"{describe_state(run)}\n{tail(log)}"
            time.sleep(3)
        assert run.state.is_completed(), f"{describe_state(run)}\n{tail(log)}"
        assert (dirs.dataset / "00000.hdf5").is_file()
        with deployed.client() as client:  # so the heartbeat automation sees a served run die too
            assert read_events(client, "prefect.flow-run.heartbeat", f"prefect.flow-run.{flow_run_id}")
    finally:
        stop_process_group(serving)
        delete_deployments(deployed)
        deployed.deploy()


def delete_deployments(server: PrefectServer) -> None:
    """Remove build-dataset's deployments (a worker's or served), wherever they are."""
    with server.client() as client:
        for name in NAMES:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                continue
