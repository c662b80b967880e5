"""The automations ``deployments/deploy.sh`` and ``trackset serve`` create on the Prefect server.

Each is a YAML file in ``deployments/`` that a user can read (and change) with placeholders
filled in here, since ids exist only on the server:

- ``crashed-without-heartbeat.yaml``: a build-dataset run whose heartbeats stop for
  ``__WINDOW_S__`` seconds is set *Crashed* (its process died);
- ``notify-on-failure.yaml``: a build-dataset run that ends *CompletedWithFailures*,
  *Failed*, *TimedOut* or *Crashed* is sent through the notification block
  ``__BLOCK_DOCUMENT_ID__``;
- ``rerun-crashed-nightly.yaml``: a crashed ``build-dataset/nightly-refresh`` run is rerun
  once, as ``build-dataset/manual`` with its parameters.

Each call replaces them (deleted by name, created again), so a new window, block or
deployment applies, and running it twice leaves one of each. The notification block is
named ``<block type>/<name>`` (``TRACKSET_NOTIFY_BLOCK``, default
``custom-webhook/trackset-alerts``): any Prefect notification block made in the UI or in
Python (Slack, Microsoft Teams, email, ...). Given a URL in a file only its owner can read
(``TRACKSET_NOTIFY_URL_FILE``), the default block is created or updated to POST
``{"subject": ..., "text": ...}`` as JSON to it; the URL (often a token, as Slack's are) is
kept in the block's secrets, never in a setting, a log or this module's output. Without a
block, the notification automation is left out and the output says how to add one.

Run from the repository root (``deploy.sh`` does)::

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m trackset.flows.automations \\
        --heartbeat-window-s 300 --notify-block custom-webhook/trackset-alerts --notify-url-file ~/.trackset-webhook
"""

from __future__ import annotations

import argparse
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import yaml
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectNotFound

DEPLOYMENTS = Path("deployments")
HEARTBEAT = "crashed-without-heartbeat.yaml"
NOTIFY = "notify-on-failure.yaml"
RERUN = "rerun-crashed-nightly.yaml"
DEFAULT_BLOCK = "custom-webhook/trackset-alerts"
DEFAULT_WINDOW_S = 300
MANUAL, NIGHTLY = "build-dataset/manual", "build-dataset/nightly-refresh"


class AutomationSetupError(Exception):
    """A setting of the automations cannot be used (one line naming it and what to do)."""


@dataclass(frozen=True)
class NotifySettings:
    """Where notifications go.

    Attributes:
        block: the notification block, ``<block type slug>/<block name>``.
        url_file: a file holding the webhook URL of the default block, readable only by its owner.
    """

    block: str = DEFAULT_BLOCK
    url_file: Path | None = None


def render(path: Path, values: Mapping[str, str]) -> AutomationCore:
    """The automation in ``path`` with each ``__PLACEHOLDER__`` of ``values`` filled in.

    Examples:
        >>> automation = render(DEPLOYMENTS / HEARTBEAT, {"__WINDOW_S__": "120"})
        >>> automation.trigger.within.total_seconds(), automation.actions[0].type
        (120.0, 'change-flow-run-state')
    """
    text = path.read_text(encoding="utf-8")
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return AutomationCore.model_validate(yaml.safe_load(text))


def read_url_file(path: Path) -> str:
    """The webhook URL in ``path``, which only its owner may read (a URL is often a token).

    Raises:
        AutomationSetupError: the file is missing, empty, or readable by group or others.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise AutomationSetupError(f"TRACKSET_NOTIFY_URL_FILE {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AutomationSetupError(
            f"TRACKSET_NOTIFY_URL_FILE {path} may be read by others (mode {stat.filemode(mode)}): chmod 600 {path}"
        )
    url = path.read_text(encoding="utf-8").strip()
    if not url:
        raise AutomationSetupError(f"TRACKSET_NOTIFY_URL_FILE {path} is empty: put the webhook's URL in it")
    return url


def notification_block_id(client: SyncPrefectClient, notify: NotifySettings) -> UUID | None:
    """The id of the notification block, created from ``notify.url_file`` when given.

    Returns:
        None when the block does not exist and no URL file makes it.

    Raises:
        AutomationSetupError: the name is not ``type/name``, or a URL file is given for a
            block that is not the default webhook type.
    """
    block_type, _, name = notify.block.partition("/")
    if not block_type or not name:
        raise AutomationSetupError(
            f"TRACKSET_NOTIFY_BLOCK {notify.block!r}: expected <block type>/<name>, e.g. {DEFAULT_BLOCK}"
        )
    if notify.url_file is not None:
        if block_type != CustomWebhookNotificationBlock.get_block_type_slug():
            raise AutomationSetupError(
                f"TRACKSET_NOTIFY_URL_FILE makes a custom-webhook block, but TRACKSET_NOTIFY_BLOCK names a {block_type}"
            )
        webhook = CustomWebhookNotificationBlock(
            name="trackset",
            url="{{url}}",
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
            secrets={"url": read_url_file(notify.url_file)},
        )
        return webhook.save(name, overwrite=True)
    try:
        return client.read_block_document_by_name(name, block_type, include_secrets=False).id
    except ObjectNotFound:
        return None


def replace(client: SyncPrefectClient, automation: AutomationCore) -> UUID:
    """Create ``automation``, deleting those of the same name first."""
    for existing in client.read_automations_by_name(automation.name):
        client.delete_automation(existing.id)
    return client.create_automation(automation)


def delete(client: SyncPrefectClient, name: str) -> int:
    """Delete the automations called ``name``; how many there were."""
    existing = client.read_automations_by_name(name)
    for automation in existing:
        client.delete_automation(automation.id)
    return len(existing)


def apply_automations(
    heartbeat_window_s: int = DEFAULT_WINDOW_S, notify: NotifySettings = NotifySettings(), folder: Path = DEPLOYMENTS
) -> list[str]:
    """Create (or replace) the three automations on the server ``PREFECT_API_URL`` names.

    The deployments ``build-dataset/manual`` and ``build-dataset/nightly-refresh`` must
    exist (``prefect deploy`` or ``trackset serve`` made them).

    Returns:
        One line per automation saying what was done, for the user.
    """
    lines = []
    with get_client(sync_client=True) as client:
        heartbeat = render(folder / HEARTBEAT, {"__WINDOW_S__": str(heartbeat_window_s)})
        replace(client, heartbeat)
        lines.append(f"automation {heartbeat.name!r}: window {heartbeat_window_s} s")
        manual, nightly = client.read_deployment_by_name(MANUAL), client.read_deployment_by_name(NIGHTLY)
        ids = {"__MANUAL_DEPLOYMENT_ID__": str(manual.id), "__NIGHTLY_DEPLOYMENT_ID__": str(nightly.id)}
        rerun = render(folder / RERUN, ids)
        replace(client, rerun)
        lines.append(f"automation {rerun.name!r}: {NIGHTLY} -> {MANUAL}")
        block_id = notification_block_id(client, notify)
        if block_id is None:
            notification = yaml.safe_load((folder / NOTIFY).read_text(encoding="utf-8"))["name"]
            delete(client, notification)
            lines.append(
                f"no notifications: there is no block {notify.block}; make one in the UI (Blocks, any notification "
                "block) and set TRACKSET_NOTIFY_BLOCK=<type>/<name>, or put a webhook URL in a file only you can "
                "read and set TRACKSET_NOTIFY_URL_FILE, then deploy again"
            )
        else:
            notification = render(folder / NOTIFY, {"__BLOCK_DOCUMENT_ID__": str(block_id)})
            replace(client, notification)
            lines.append(f"automation {notification.name!r}: through block {notify.block}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trackset.flows.automations",
        description="Create trackset's automations (crash detection, notifications, rerun of a crashed nightly).",
    )
    parser.add_argument("--heartbeat-window-s", type=int, default=DEFAULT_WINDOW_S, help="seconds without a heartbeat")
    parser.add_argument("--notify-block", default=DEFAULT_BLOCK, help="notification block, <block type>/<name>")
    parser.add_argument("--notify-url-file", type=Path, help="0600 file with the webhook URL of the default block")
    parser.add_argument("--folder", type=Path, default=DEPLOYMENTS, help="where the automation YAML files are")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Apply the automations; 2 with one line on stderr when a setting cannot be used."""
    args = build_parser().parse_args(argv)
    if args.heartbeat_window_s < 1:
        sys.stderr.write(f"error: --heartbeat-window-s must be positive, got {args.heartbeat_window_s}\n")
        return 2
    notify = NotifySettings(args.notify_block, args.notify_url_file)
    try:
        lines = apply_automations(args.heartbeat_window_s, notify, args.folder)
    except AutomationSetupError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
