"""The flow's ``overrides`` parameter as a typed model, generated from :class:`~trackset.config.settings.Settings`.

A free ``dict`` parameter let the Prefect API accept ``{"h5": {"target_size": -1}}`` when a
run was created; it failed only once a worker picked the run up, and the UI's run form was
one JSON box that explained nothing. :class:`SettingsOverrides` has one optional field per
section and, inside, one optional field per setting, each with the setting's own type,
bounds and ``description`` (the one source of the descriptions is ``trackset/config/settings.py``;
``settings.yaml``'s comments are tested to equal them). Prefect turns it into the
deployment's parameter schema, so the server rejects a wrong value when the run is created,
naming the setting, and the form shows every setting with its description.

The model is generated, not written out, so a new setting appears in the form the day it is
added. Cross-field rules (``h5.depth_min_m`` below ``depth_max_m``) are not expressible in
the schema: :func:`~trackset.config.settings.load_settings` still checks them when the run starts.

Examples:
    >>> SettingsOverrides.model_validate({"h5": {"target_size": 128}}).as_dict()
    {'h5': {'target_size': 128}}
    >>> SettingsOverrides.model_validate({"h5": {"target_size": -1}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for SettingsOverrides
    h5.target_size
      Input should be greater than 0 ...
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, create_model, model_serializer

from trackset.config.settings import Settings, load_settings


class _Overrides(BaseModel):
    """Base of the generated models: unknown keys are errors, as in the settings themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Settings of this section whose type takes null: there, an explicit null is a value
    #: (``metadata.csv: null`` = the default file); elsewhere null means "not overridden".
    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Serialise only what was given: the API, the form's default and a run's page show
        the overrides a run was asked for (``{}`` for none), not every setting as null."""
        data: dict[str, Any] = handler(self)
        return {name: value for name, value in data.items() if name in self.model_fields_set}

    def as_dict(self) -> dict[str, Any]:
        """The settings set here, nested as :func:`~trackset.config.settings.load_settings` takes them.

        Only what was given counts: an unset field, or a null for a setting that cannot be
        null (a form may send one for a field left empty), leaves the file's value alone.
        """
        out: dict[str, Any] = {}
        for name in type(self).model_fields:  # in the settings' order, not the order given
            if name not in self.model_fields_set:
                continue
            value = getattr(self, name)
            if isinstance(value, _Overrides):
                if nested := value.as_dict():
                    out[name] = nested
            elif value is not None or name in self.nullable:
                out[name] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    """A value as the settings take it: models (a list of fake GPUs) as the dicts they were given."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _no_default(schema: dict[str, Any]) -> None:
    """Drop ``default: null`` from a field's schema: unset means "the file's value", not null."""
    schema.pop("default", None)


def _not_null(schema: dict[str, Any]) -> None:
    """Keep null out of the schema of a setting that cannot be null, so the form shows a plain
    number, choice or text; a field left empty is left out of the run's parameters."""
    _no_default(schema)
    if "anyOf" not in schema:
        return
    kept = [member for member in schema.pop("anyOf") if member != {"type": "null"}]
    if len(kept) == 1:
        schema.update(kept[0])
    else:
        schema["anyOf"] = kept


def _takes_none(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def overrides_model(section: type[BaseModel], name: str) -> type[_Overrides]:
    """A model of ``section`` whose every field is optional, keeping its type, bounds and description.

    A field that holds a section becomes that section's overrides model, so a run can change
    one setting of a nested section (``synthetic.hands.load_s``) and keep the others.
    """
    fields: dict[str, Any] = {}
    nullable = set()
    for field_name, info in section.model_fields.items():
        annotation: Any = info.annotation
        if _is_section(annotation):
            # A section is always there (empty: nothing overridden), so the form shows its
            # settings at once instead of asking whether to give the section at all.
            nested = overrides_model(annotation, f"{name}{field_name.title().replace('_', '')}")
            fields[field_name] = (nested, Field(default_factory=nested, description=info.description))
            continue
        if info.metadata:
            parameters = (annotation, *info.metadata)  # Annotated[x, *rest] is Python 3.11+ syntax
            annotation = Annotated[parameters]
        if _takes_none(info.annotation):
            nullable.add(field_name)
            extra = _no_default
        else:
            extra = _not_null
        field = Field(None, description=info.description, json_schema_extra=extra)
        fields[field_name] = (annotation | None, field)
    model = create_model(name, __base__=_Overrides, __doc__=section.__doc__, **fields)
    model.nullable = frozenset(nullable)
    return model


SettingsOverrides = overrides_model(Settings, "SettingsOverrides")
"""The ``overrides`` flow parameter: any setting, by section, highest precedence."""

NO_OVERRIDES = SettingsOverrides()
"""The default of ``overrides``: the settings file and the environment as they are."""


def resolve_settings(
    settings_path: str | None,
    overrides: Mapping[str, Any] | _Overrides | None,
    videos_dir: str | None = None,
    work_dir: str | None = None,
    dataset_dir: str | None = None,
) -> Settings:
    """Settings with a run's parameters on top (they win over env and file), paths made absolute.

    ``overrides`` is the flow's :data:`SettingsOverrides` or a plain mapping of sections.
    Paths are resolved once, here, against this process's working directory: every worker,
    on whatever host and in whatever directory it runs, is handed the same absolute paths
    (they must be on storage the workers share, README "Several machines").
    """
    merged: dict[str, Any] = overrides.as_dict() if isinstance(overrides, _Overrides) else dict(overrides or {})
    paths = {k: v for k, v in (("videos_dir", videos_dir), ("work_dir", work_dir), ("dataset_dir", dataset_dir)) if v}
    if paths:
        merged["paths"] = {**merged.get("paths", {}), **paths}
    settings = load_settings(settings_path, merged)
    folders = {name: getattr(settings.paths, name).resolve() for name in ("videos_dir", "work_dir", "dataset_dir")}
    return settings.model_copy(update={"paths": settings.paths.model_copy(update=folders)})
