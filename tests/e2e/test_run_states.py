"""What a run's state, its log and the API tell a user who watches builds in the UI.

Checks issue 18 against a real server and worker: a bad override is refused when the run
is created, naming the setting; a run with failed videos ends in a named state that is not
plain Completed; a video over its time budget fails alone; a trackset warning logged on a
Dask worker is in the run's log; a run whose process was killed becomes Crashed once its
heartbeats stop (the automation deploy.sh creates, with its window shortened here).

And issue 32's alerts and recovery: the run with failed videos is notified through the
webhook block deploy.sh made (the receiver gets it, the API shows the automation's action);
the killed run is a nightly refresh, which the rerun automation runs again once, as a manual
build with its parameters, and the rerun says what it resumes and completes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.exceptions import PrefectHTTPStatusError

from tests.e2e import (
    BASE_SEED,
    NUM_FRAMES,
    PREFECT,
    DatasetDirs,
    PrefectServer,
    WebhookReceiver,
    describe_state,
    read_events,
    start_in_own_session,
    stop_process_group,
    tail,
)
from tests.e2e.conftest import LEAN_DASK
from tests.e2e.preload_hang_and_warn import WARNING
from trackset.flows.automations import NOTIFY, RERUN, render
from trackset.synthetic.corpus import make_corpus, sidecar_path

pytestmark = pytest.mark.slow

PRELOAD = Path(__file__).with_name("preload_hang_and_warn.py")
HANG_BUDGET_S = 20


def run_ids(server: PrefectServer, flow_run_id: UUID) -> list[UUID]:
    """The run and its subflow runs at any depth."""
    ids, frontier = [flow_run_id], [flow_run_id]
    with server.client() as client:
        while frontier:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
            )
            frontier = [run.id for run in children]
            ids += frontier
    return ids


def test_a_bad_override_is_refused_when_the_run_is_created_naming_the_setting(deployed: PrefectServer):
    with deployed.client() as client:
        deployment = client.read_deployment_by_name("build-dataset/manual")
        assert deployment.enforce_parameter_schema
        with pytest.raises(PrefectHTTPStatusError) as refused:
            client.create_flow_run_from_deployment(deployment.id, parameters={"overrides": {"h5": {"target_size": -1}}})
    assert refused.value.response.status_code == 409
    assert "overrides.h5.target_size" in refused.value.response.text


@pytest.fixture(scope="module")
def troubled_build(deployed: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[UUID, DatasetDirs]:
    """Three good clips, one whose hands model hangs (``hang_*``) and a file that is no video,
    built by ``build-dataset/manual`` on the Dask runner with the worker preload."""
    dirs = DatasetDirs.under(tmp_path_factory.mktemp("troubled"))
    clips = make_corpus(dirs.videos, 4, seed=BASE_SEED, num_frames=NUM_FRAMES)
    hung = clips[1].with_name(f"hang_{clips[1].name}")
    sidecar_path(clips[1]).rename(sidecar_path(hung))
    clips[1].rename(hung)
    (dirs.videos / "zz_not_a_video.mp4").write_text("not a video")
    overrides: dict[str, Any] = dirs.overrides(**LEAN_DASK)
    overrides["cluster"] = {**overrides["cluster"], "worker_preload": [str(PRELOAD)]}
    overrides |= {
        "retry": {"retries": 0},
        "timeouts": {"stages": {"hands": {"floor_s": HANG_BUDGET_S, "s_per_frame": 0}}},
    }
    flow_run_id = deployed.run_deployment(
        "build-dataset/manual", {"settings_path": "settings.yaml", "overrides": overrides}
    )
    deployed.run_worker_once(timeout_s=480)
    return flow_run_id, dirs


def test_a_run_with_failed_videos_ends_completed_with_failures_and_a_timeout_fails_that_video_only(
    deployed: PrefectServer, troubled_build: tuple[UUID, DatasetDirs]
):
    flow_run_id, dirs = troubled_build
    with deployed.client() as client:
        run = client.read_flow_run(flow_run_id)
    assert run.state is not None and run.state.type == StateType.COMPLETED, describe_state(run)
    assert run.state.name == "CompletedWithFailures"
    assert "2 of 5 video(s) failed" in (run.state.message or "")
    # Every clip but the hung one has its H5; the hung one failed in hands with its budget named.
    h5 = sorted(path.name for path in dirs.dataset.glob("*.hdf5"))
    assert len(h5) == 3, h5
    report = "\n".join(path.read_text() for path in (dirs.dataset / "runs").glob("*.jsonl"))
    assert f"took over {HANG_BUDGET_S} s, its budget" in report
    assert "VideoTimeoutError: hands: video" in report


def test_a_worker_side_trackset_warning_is_in_the_runs_log(
    deployed: PrefectServer, troubled_build: tuple[UUID, DatasetDirs]
):
    flow_run_id, _ = troubled_build
    with deployed.client() as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids(deployed, flow_run_id)))
        )
    ours = [log for log in logs if log.name == "trackset.e2e"]
    assert ours, f"no trackset.e2e log among {sorted({log.name for log in logs})}"
    assert all(log.level == 30 and log.task_run_id is not None for log in ours)
    assert any(WARNING.split("%s")[0] in log.message and "gpu0-w0" in log.message for log in ours)
    # The run's log links the Dask dashboard of the run's cluster (bokeh installed).
    assert any("Dask dashboard of this run: http://127.0.0.1:" in log.message for log in logs)


def automation_id(server: PrefectServer, template: str) -> UUID:
    """The id of the automation deploy.sh made from ``deployments/<template>``."""
    name = render(Path("deployments") / template, PLACEHOLDERS).name
    with server.client() as client:
        [automation] = client.read_automations_by_name(name)
    return automation.id


# Any ids render the templates; only their names are read.
PLACEHOLDERS = {
    "__BLOCK_DOCUMENT_ID__": "00000000-0000-0000-0000-000000000000",
    "__MANUAL_DEPLOYMENT_ID__": "00000000-0000-0000-0000-000000000000",
    "__NIGHTLY_DEPLOYMENT_ID__": "00000000-0000-0000-0000-000000000000",
}


def test_a_run_with_failed_videos_is_notified_through_the_webhook_block(
    deployed: PrefectServer, troubled_build: tuple[UUID, DatasetDirs], webhook: WebhookReceiver
):
    flow_run_id, _ = troubled_build
    with deployed.client() as client:
        run = client.read_flow_run(flow_run_id)
    body = webhook.wait_for(lambda body: run.name in body["subject"], timeout_s=120)
    assert body["subject"] == f"trackset: build-dataset run {run.name} ended CompletedWithFailures"
    assert "2 of 5 video(s) failed" in body["text"] and str(flow_run_id) in body["text"]  # message and UI link

    notify = automation_id(deployed, NOTIFY)
    with deployed.client() as client:
        [ended] = read_events(client, "prefect.flow-run.CompletedWithFailures", f"prefect.flow-run.{flow_run_id}")
        executed = read_events(client, "prefect.automation.action.executed", f"prefect.automation.{notify}")
    # The automation's action on this run's event: at least once, since the server's in-memory
    # broker redelivers an event whose evaluation raised (SQLite busy under load), and the
    # action then runs again (seen: two notifications of one run).
    actions = [event for event in executed if f"prefect.event.{ended.id}" in {r.id for r in event.related}]
    assert actions, f"no action of the automation on {ended.id}: {executed}"
    for action in actions:
        assert action.payload["action_type"] == "send-notification"
        assert "prefect.block-type.custom-webhook" in {r.id for r in action.related}


def flow_run_pids(flow_run_id: UUID) -> list[int]:
    """Processes whose environment names this flow run: the flow-run process (and its children)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_nightly_becomes_crashed_is_notified_and_is_rerun_once_to_completion(
    deployed: PrefectServer, tmp_path: Path, webhook: WebhookReceiver
):
    window_s = 60
    deployed.deploy(TRACKSET_HEARTBEAT_S="30", TRACKSET_HEARTBEAT_WINDOW_S=str(window_s))
    try:
        dirs = DatasetDirs.under(tmp_path)
        make_corpus(dirs.videos, 1, seed=BASE_SEED, num_frames=NUM_FRAMES)
        # The settings file makes depth slow; the rerun reads it again after the fix below.
        settings = tmp_path / "settings.yaml"
        settings.write_text("synthetic:\n  depth_camera:\n    cpu_s_per_frame: 30\n")
        parameters = {"settings_path": str(settings), "overrides": dirs.overrides(cluster={"runner": "threads"})}
        flow_run_id = deployed.run_deployment("build-dataset/nightly-refresh", parameters)
        log = deployed.logs / "crash-worker.log"
        worker = start_in_own_session(
            [str(PREFECT), "worker", "start", "--pool", "trackset", "--run-once"], deployed.env, log
        )
        try:
            deadline = time.monotonic() + 180
            while True:  # running, and past its first heartbeat
                with deployed.client() as client:
                    run = client.read_flow_run(flow_run_id)
                if run.state is not None and run.state.is_running() and flow_run_pids(flow_run_id):
                    break
                assert time.monotonic() < deadline, f"run not running: {describe_state(run)}\n{tail(log)}"
                time.sleep(2)
            time.sleep(10)
            # A lost node: the worker and the run's process die at once, nobody reports the end.
            os.killpg(worker.pid, signal.SIGKILL)
            for pid in flow_run_pids(flow_run_id):
                os.kill(pid, signal.SIGKILL)
        finally:
            stop_process_group(worker)
        settings.write_text("")  # whatever made it slow is fixed before the rerun starts
        deadline = time.monotonic() + window_s + 150
        while True:
            with deployed.client() as client:
                run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.type != StateType.RUNNING:
                break
            assert time.monotonic() < deadline, "the killed run is still Running"
            time.sleep(5)
        assert run.state.type == StateType.CRASHED, describe_state(run)
        assert "No heartbeat" in (run.state.message or "")
        webhook.wait_for(lambda body: body["subject"].endswith(f"{run.name} ended Crashed"), timeout_s=120)

        rerun_id = wait_for_rerun(deployed, automation_id(deployed, RERUN), timeout_s=120)
        deployed.run_worker_once(timeout_s=300)
        with deployed.client() as client:
            rerun = client.read_flow_run(rerun_id)
            manual = client.read_deployment_by_name("build-dataset/manual")
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[rerun_id])))
        assert rerun.state is not None and rerun.state.is_completed(), describe_state(rerun)
        assert rerun.deployment_id == manual.id  # not the nightly: a rerun that crashes is not rerun again
        assert rerun.parameters == {
            **dict.fromkeys(("videos_dir", "work_dir", "dataset_dir", "import_dir")),
            **parameters,
        }
        assert any(
            f"resuming flow run {flow_run_id} " in log.message
            and "0 of 1 videos done in earlier runs; 1 pending" in log.message
            for log in logs
        ), [log.message for log in logs]
        assert (dirs.dataset / "00000.hdf5").is_file()
    finally:
        deployed.deploy()


def wait_for_rerun(server: PrefectServer, automation: UUID, timeout_s: float) -> UUID:
    """The flow run the rerun automation started (its action names the run it created)."""
    with server.client() as client:
        executed = read_events(
            client, "prefect.automation.action.executed", f"prefect.automation.{automation}", timeout_s
        )
        runs = [r.id for event in executed for r in event.related if r.role == "flow-run"]
        if len(runs) != 1:  # what the server did about the automation instead, for whoever reads the failure
            names = ("triggered", "action.triggered", "action.failed")
            others = [
                (event.event, event.occurred.isoformat(), event.payload)
                for name in names
                for event in read_events(client, f"prefect.automation.{name}", f"prefect.automation.{automation}", 0)
            ]
            raise AssertionError(f"expected one rerun, got {runs}; the automation's other events: {others}")
    return UUID(runs[0].removeprefix("prefect.flow-run."))
