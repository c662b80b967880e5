"""The automations deploy.sh and ``trackset serve`` create, and ``trackset serve``'s deployments,
read from the files a user edits (no server: tests/e2e runs them against one)."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest
from prefect.server.events.actions import RunDeployment as ServerRunDeployment
from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

from trackset.flows.automations import (
    HEARTBEAT,
    NOTIFY,
    RERUN,
    AutomationSetupError,
    read_url_file,
    render,
)
from trackset.flows.build_dataset import build_dataset
from trackset.flows.serve import DEPLOY_DEFAULTS, resolved_spec, run_environment, served_deployment

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = REPO / "deployments"


def test_failed_crashed_and_partly_failed_build_runs_are_notified_through_the_named_block():
    block = uuid4()
    automation = render(DEPLOYMENTS / NOTIFY, {"__BLOCK_DOCUMENT_ID__": str(block)})
    trigger = automation.trigger
    assert trigger.expect == {
        "prefect.flow-run.CompletedWithFailures",
        "prefect.flow-run.Failed",
        "prefect.flow-run.TimedOut",
        "prefect.flow-run.Crashed",
    }
    assert trigger.posture == "Reactive" and trigger.threshold == 1
    assert trigger.match_related.root == {"prefect.resource.role": "flow", "prefect.resource.name": "build-dataset"}
    [action] = automation.actions
    assert (action.type, action.block_document_id) == ("send-notification", block)
    assert "{{ flow_run.state.name }}" in action.subject and "{{ flow_run|ui_url }}" in action.body


def test_a_crashed_nightly_is_rerun_once_as_a_manual_build_with_every_parameter_it_had():
    nightly, manual = uuid4(), uuid4()
    automation = render(
        DEPLOYMENTS / RERUN, {"__NIGHTLY_DEPLOYMENT_ID__": str(nightly), "__MANUAL_DEPLOYMENT_ID__": str(manual)}
    )
    assert automation.trigger.expect == {"prefect.flow-run.Crashed"}
    assert automation.trigger.match_related.root == {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": f"prefect.deployment.{nightly}",
    }
    [action] = automation.actions
    assert (action.type, action.source, action.deployment_id) == ("run-deployment", "selected", manual)
    assert set(action.parameters) == set(inspect.signature(build_dataset.fn).parameters)

    # What the server makes of the templates for a crashed run (its own hydration code).
    parameters = copy.deepcopy(action.parameters)
    ServerRunDeployment._upgrade_v1_templates(parameters)
    crashed = {"settings_path": "settings.yaml", "overrides": {"run": {"fail_on_video_error": True}}}
    context = {"flow_run": SimpleNamespace(parameters=crashed)}
    rendered = hydrate(parameters, HydrationContext(render_jinja=True, jinja_context=context, raise_on_error=True))
    assert rendered == {**dict.fromkeys(action.parameters), **crashed}


def test_the_heartbeat_window_is_filled_in():
    automation = render(DEPLOYMENTS / HEARTBEAT, {"__WINDOW_S__": "90"})
    assert automation.trigger.within.total_seconds() == 90
    assert [action.type for action in automation.actions] == ["change-flow-run-state"]


def test_a_webhook_url_file_must_be_private_and_not_empty(tmp_path):
    url = tmp_path / "webhook"
    url.write_text("https://hooks.example/T0/B0/secret\n")
    url.chmod(0o644)
    with pytest.raises(AutomationSetupError, match=r"may be read by others \(mode -rw-r--r--\): chmod 600"):
        read_url_file(url)
    url.chmod(0o600)
    assert read_url_file(url) == "https://hooks.example/T0/B0/secret"
    url.write_text("\n")
    with pytest.raises(AutomationSetupError, match="is empty"):
        read_url_file(url)
    with pytest.raises(AutomationSetupError, match="No such file"):
        read_url_file(tmp_path / "absent")


def test_serve_defaults_are_deploy_shs():
    script = (DEPLOYMENTS / "deploy.sh").read_text()
    defaults = dict(re.findall(r'export (TRACKSET_\w+)="\$\{\1:-([^}]*)\}"', script))
    assert {key: defaults[key] for key in DEPLOY_DEFAULTS} == DEPLOY_DEFAULTS


def test_serve_makes_the_deployments_of_prefect_yaml_with_their_schedules_and_limits():
    spec = resolved_spec(DEPLOYMENTS / "prefect.yaml", {"TRACKSET_NIGHTLY_TIMEZONE": "Europe/Berlin"})
    manual, nightly = (served_deployment(entry) for entry in spec["deployments"])
    assert (manual.full_name, nightly.full_name) == ("build-dataset/manual", "build-dataset/nightly-refresh")
    assert manual.schedules in (None, []) and manual.enforce_parameter_schema
    [schedule] = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "Europe/Berlin", True)
    assert nightly.parameters == {
        "settings_path": "settings.yaml",
        "overrides": {"run": {"fail_on_video_error": True}, "timeouts": {"flow_hours": 20}},
    }
    limits = {d.name: (d.concurrency_limit, d.concurrency_options.collision_strategy.value) for d in (manual, nightly)}
    assert limits == {"manual": (1, "ENQUEUE"), "nightly-refresh": (1, "CANCEL_NEW")}
    assert run_environment(spec) == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": DEPLOY_DEFAULTS["TRACKSET_HEARTBEAT_S"]}
    assert manual.work_pool_name is None and manual.entrypoint == "flows/build_dataset.py:build_dataset"
