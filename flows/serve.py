"""``trackset serve``: the deployments of ``deployments/prefect.yaml`` run by this process.

A box with one GPU and no work pool needs no worker: Prefect's ``serve`` registers each
deployment with its schedule and parameters, polls the server for the runs that are due
(the nightly cron, a manual run from the UI or ``prefect deployment run``) and runs each in
a subprocess of its own, from the current directory. The deployments are the ones
``deploy.sh`` makes for a worker, read from the same file: names, descriptions, tags,
parameters, schedules, parameter schema enforcement, one build at a time per deployment,
and the environment the work pool would give a run (the heartbeat interval). The
``{{ $VAR }}`` values take the environment, with ``deploy.sh``'s defaults
(:data:`DEPLOY_DEFAULTS`). It also creates the automations ``deploy.sh`` creates
(:mod:`trackset.flows.automations`).

A server holds one route: ``trackset serve`` refuses to take over deployments a worker runs
(``deploy.sh`` made them), naming them and how to remove them. Stopping it pauses the
served schedules until it serves again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron

from trackset.flows.automations import DEFAULT_BLOCK, DEFAULT_WINDOW_S, NotifySettings, apply_automations

PREFECT_FILE = Path("deployments/prefect.yaml")

DEPLOY_DEFAULTS = {
    "TRACKSET_NIGHTLY_CRON": "0 2 * * *",
    "TRACKSET_NIGHTLY_TIMEZONE": "UTC",
    "TRACKSET_HEARTBEAT_S": "60",
}
"""``deploy.sh``'s defaults of the ``{{ $VAR }}`` values of prefect.yaml (a test keeps them equal)."""


class ServeSetupError(Exception):
    """prefect.yaml or the environment cannot be served (one line naming what)."""


def resolved_spec(prefect_file: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """prefect.yaml with its ``{{ $VAR }}`` values from ``environ``, else deploy.sh's defaults.

    Raises:
        ServeSetupError: the file is missing or holds no deployments.
    """
    try:
        spec = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServeSetupError(f"{prefect_file}: {exc.strerror}") from None
    if not isinstance(spec, dict) or not spec.get("deployments"):
        raise ServeSetupError(f"{prefect_file}: no deployments in it")
    values = {**DEPLOY_DEFAULTS, "TRACKSET_REPO": str(Path.cwd()), **environ}
    resolved: dict[str, Any] = substitute(spec, values)
    return resolved


_VARIABLE = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


def substitute(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` with every ``{{ $VAR }}`` in its strings replaced from ``values`` (left as is
    when not there, as ``prefect deploy`` does).

    Examples:
        >>> substitute({"cron": "{{ $CRON }}", "tags": ["x-{{ $TAG }}"]}, {"CRON": "0 2 * * *"})
        {'cron': '0 2 * * *', 'tags': ['x-{{ $TAG }}']}
    """
    if isinstance(value, str):
        return _VARIABLE.sub(lambda match: values.get(match.group(1), match.group(0)), value)
    if isinstance(value, dict):
        return {key: substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, values) for item in value]
    return value


def run_environment(spec: Mapping[str, Any]) -> dict[str, str]:
    """The environment the work pool would give each run (``job_variables.env``)."""
    env: dict[str, str] = {}
    for entry in spec["deployments"]:
        pool = entry.get("work_pool") or {}
        env.update({key: str(value) for key, value in (pool.get("job_variables") or {}).get("env", {}).items()})
    return env


def served_deployment(entry: Mapping[str, Any]) -> RunnerDeployment:
    """One deployment of prefect.yaml as a served deployment (no work pool)."""
    flow = load_flow_from_entrypoint(entry["entrypoint"])
    limit = entry.get("concurrency_limit")
    schedules = [
        Cron(item["cron"], timezone=item.get("timezone"), active=item.get("active", True))
        for item in entry.get("schedules") or []
    ]
    return flow.to_deployment(
        name=entry["name"],
        description=entry.get("description"),
        tags=entry.get("tags"),
        parameters=entry.get("parameters"),
        schedules=schedules,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
        enforce_parameter_schema=entry.get("enforce_parameter_schema", True),
    )


def check_no_worker_route(names: list[str]) -> None:
    """Refuse deployments of these names that belong to a work pool on the server.

    Raises:
        ServeSetupError: naming them and the commands that remove them.
    """
    pooled = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if deployment.work_pool_name:
                pooled.append((name, deployment.work_pool_name))
    if pooled:
        which = ", ".join(f"{name} (work pool {pool})" for name, pool in pooled)
        removal = "; ".join(f"prefect deployment delete {name}" for name, _ in pooled)
        raise ServeSetupError(
            f"{which} on this server run through a worker (deploy.sh): serve against another server, "
            f"or remove them first: {removal}"
        )


def prepare(prefect_file: Path = PREFECT_FILE) -> tuple[list[RunnerDeployment], list[str]]:
    """Register the deployments and the automations; what to serve, and what was done.

    Sets the runs' environment (:func:`run_environment`) in this process, which every run's
    subprocess inherits.
    """
    window_text = os.environ.get("TRACKSET_HEARTBEAT_WINDOW_S") or str(DEFAULT_WINDOW_S)
    if not window_text.isdigit() or int(window_text) < 1:
        raise ServeSetupError(f"TRACKSET_HEARTBEAT_WINDOW_S must be a positive number of seconds, got {window_text!r}")
    spec = resolved_spec(prefect_file, os.environ)
    os.environ.update(run_environment(spec))
    deployments = [served_deployment(entry) for entry in spec["deployments"]]
    check_no_worker_route([deployment.full_name for deployment in deployments])
    for deployment in deployments:
        deployment.apply()  # the automations name the deployments by id
    url_file = os.environ.get("TRACKSET_NOTIFY_URL_FILE")
    notify = NotifySettings(
        os.environ.get("TRACKSET_NOTIFY_BLOCK") or DEFAULT_BLOCK, Path(url_file) if url_file else None
    )
    return deployments, apply_automations(int(window_text), notify, prefect_file.parent)


def serve_deployments(deployments: list[RunnerDeployment], limit: int | None = None) -> None:
    """Run what is due until stopped (Ctrl-C); their schedules pause then."""
    serve(*deployments, limit=limit)
