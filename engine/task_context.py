"""What a task carries to a Dask worker: Prefect's settings, without a single secret.

prefect-dask pickles the submitting process's Prefect context into every task
(``prefect.context.serialize_context``, called by ``PrefectDaskClient.submit``), and the
worker runs the task inside it (``hydrated_context``). That context holds the whole
settings model with its secrets in clear: ``PREFECT_API_AUTH_STRING``, ``PREFECT_API_KEY``
and, when they are set where the flow runs, the database URL with its password and the
server's own auth string. Every task would carry them to every worker, whoever else can
read its memory, spill files or crash dumps.

:class:`DaskTaskRunnerWithoutSecrets` submits with a settings context that serializes
without them (:func:`without_secrets`): a task still carries the API URL, so its worker
reports to the flow's server with no ``PREFECT_API_URL`` of its own, but not the
credentials. The worker's Prefect settings are rebuilt from the shipped values, and a
value that was not shipped comes from the worker's own environment and Prefect profile:
each worker reads ``PREFECT_API_AUTH_STRING`` from where its user put it (README, "Several
machines"); the local workers of a run inherit the flow's environment.

Before: ``DaskTaskRunner(address=...)``; after: ``DaskTaskRunnerWithoutSecrets(address=...)``,
with the same arguments and behaviour, one difference in what travels.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

from prefect.context import SettingsContext
from prefect.settings import Settings as PrefectSettings
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, SecretStr


@cache
def secret_settings(model: type[BaseModel] = PrefectSettings) -> tuple[tuple[str, ...], ...]:
    """The path of every secret field of Prefect's settings, e.g. ``("api", "auth_string")``.

    A field is secret when Prefect types it ``SecretStr``; read from the model, so a secret
    a later Prefect adds is dropped too.

    Examples:
        >>> paths = secret_settings()
        >>> ("api", "auth_string") in paths, ("server", "database", "connection_url") in paths
        (True, True)
        >>> ("api", "url") in paths
        False
    """
    return tuple(_secret_paths(model))


def _secret_paths(model: type[BaseModel]) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        if SecretStr in kinds:
            yield (name,)
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from ((name, *path) for path in _secret_paths(kind))


def without_secrets(serialized: dict[str, Any], paths: Iterable[tuple[str, ...]] | None = None) -> dict[str, Any]:
    """A copy of a serialized ``SettingsContext`` with every secret setting left out.

    Left out, not blanked: the receiving side's settings fill a missing value from its own
    environment and profile, while a blank would override them. The profile's own settings
    (what ``prefect config set`` wrote, secrets included) are dropped as well: the settings
    model already holds every value in effect.

    Examples:
        >>> shipped = {"profile": {"name": "p", "settings": {"PREFECT_API_KEY": "k"}},
        ...            "settings": {"api": {"url": "http://h/api", "auth_string": "u:pw"}}}
        >>> without_secrets(shipped)
        {'profile': {'name': 'p'}, 'settings': {'api': {'url': 'http://h/api'}}}
    """
    shipped = copy.deepcopy(serialized)
    profile = shipped.get("profile")
    if isinstance(profile, dict):
        profile.pop("settings", None)
    for path in secret_settings() if paths is None else paths:
        section = shipped.get("settings")
        for name in path[:-1]:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(path[-1], None)
    return shipped


class SettingsContextWithoutSecrets(SettingsContext):
    """The current settings context, the same in this process, serialized :func:`without_secrets`."""

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        return without_secrets(super().serialize(include_secrets=include_secrets))


class DaskTaskRunnerWithoutSecrets(DaskTaskRunner):
    """prefect-dask's runner, whose tasks carry Prefect's settings without their secrets."""

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        # serialize_context reads SettingsContext.get() while this context is entered: only what
        # is shipped changes, this process's settings (and its clients) stay as they were.
        current = SettingsContext.get()
        assert current is not None  # Prefect always has a global settings context
        with SettingsContextWithoutSecrets(profile=current.profile, settings=current.settings):
            return super().submit(task, parameters, wait_for, dependencies)
