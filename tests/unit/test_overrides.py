"""The typed ``overrides`` parameter: every setting, with the description settings.yaml shows,
checked by the schema the Prefect API enforces when a run is created."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate
from pydantic import BaseModel

from trackset.config.overrides import NO_OVERRIDES, SettingsOverrides
from trackset.config.settings import Settings, settings_reference
from trackset.config.overrides import resolve_settings
from trackset.flows.build_dataset import build_dataset

REPO_SETTINGS = Path(__file__).resolve().parents[2] / "settings.yaml"
_LINE = re.compile(r"^( *)([A-Za-z0-9_]+):(.*?)(?:\s+#\s(.*))?$")


def yaml_comments(text: str) -> dict[str, str | None]:
    """Dotted key -> the comment on its line (None without one), for every ``key:`` line."""
    stack: list[tuple[int, str]] = []
    found: dict[str, str | None] = {}
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if raw.lstrip().startswith("#") or match is None:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        found[".".join(key for _, key in stack)] = match.group(4)
    return found


def description_of(key: str) -> str | None:
    """The description of a settings.yaml key; a flow-style synthetic section reads depth_camera's."""
    fields = settings_reference()
    if key not in fields:
        key = re.sub(r"^synthetic\.[a-z_0-9]+\.", "synthetic.depth_camera.", key)
        key = re.sub(r"^timeouts\.stages\.[a-z_0-9]+\.", "timeouts.default.", key)
    return fields[key].description


def test_every_setting_has_a_description():
    missing = [key for key, info in settings_reference().items() if not (info.description or "").strip()]
    assert missing == []


def test_settings_yaml_comments_are_the_descriptions():
    """One source: the comment beside each key in settings.yaml is its Field description."""
    comments = yaml_comments(REPO_SETTINGS.read_text())
    uncommented = sorted(key for key, comment in comments.items() if comment is None)
    assert uncommented == [], "every key of settings.yaml carries its description as a comment"
    differing = {key: (c, description_of(key)) for key, c in comments.items() if c != description_of(key)}
    assert differing == {}


def test_the_overrides_model_has_every_setting_with_its_description():
    whole_values = ("cluster.fake_gpus.", "timeouts.stages.")  # lists and maps are given whole

    def described(model: type[BaseModel]) -> dict[str, str | None]:
        return {k: i.description for k, i in settings_reference(model).items() if not k.startswith(whole_values)}

    assert described(SettingsOverrides) == described(Settings)


def test_only_given_settings_count():
    given = SettingsOverrides.model_validate(
        {
            "h5": {"target_size": 128, "compression": None},  # null where null is no value: not overridden
            "metadata": {"csv": None},  # null is a value here: the default metadata.csv
            "synthetic": {"hands": {"load_s": 1}},
            "cluster": {"fake_gpus": [{"memory_gb": 8}]},
        }
    )
    assert given.as_dict() == {
        "metadata": {"csv": None},
        "h5": {"target_size": 128},
        "synthetic": {"hands": {"load_s": 1.0}},
        "cluster": {"fake_gpus": [{"memory_gb": 8.0}]},
    }
    assert list(given.as_dict()) == ["metadata", "h5", "synthetic", "cluster"]  # the settings' order
    assert NO_OVERRIDES.as_dict() == {} and NO_OVERRIDES.model_dump(mode="json") == {}
    settings = resolve_settings(None, given)
    assert settings.h5.target_size == 128 and settings.h5.compression == "none"
    assert settings.cluster.fake_gpus[0].memory_gb == 8 and settings.cluster.fake_gpus[0].name == "FakeGPU"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The parameter schema Prefect stores with the deployments and enforces on new runs."""
    return parameter_schema(build_dataset.fn).model_dump_for_openapi()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"h5": {"target_size": -1}}, "'overrides.h5.target_size'"),
        ({"h5": {"target_sise": 3}}, "'target_sise' was unexpected"),
        ({"tracks_3d": {"backend": "gpu"}}, "'overrides.tracks_3d.backend'"),
        ({"cluster": {"headroom": 1.5}}, "'overrides.cluster.headroom'"),
        ({"timeouts": {"stages": {"hand": {"floor_s": 5}}}}, "'overrides.timeouts.stages'"),
    ],
)
def test_the_schema_rejects_a_wrong_setting_naming_it(schema, overrides, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        validate({"overrides": overrides}, schema, raise_on_error=True)


def test_the_schema_accepts_good_overrides_and_describes_every_field(schema):
    validate({"overrides": {"h5": {"target_size": 128}, "run": {"fail_on_video_error": True}}}, schema, True)
    h5 = schema["definitions"]["SettingsOverridesH5"]["properties"]
    assert (
        h5["target_size"]["description"]
        == Settings.model_fields["h5"].annotation.model_fields["target_size"].description
    )
    assert schema["properties"]["overrides"]["default"] == {}


def test_the_form_offers_null_only_where_it_is_a_value(schema):
    """A form shows a plain field for a setting that cannot be null; unset is left out, not null."""
    definitions = schema["definitions"]
    h5, cluster, metadata = (
        definitions[f"SettingsOverrides{name}"]["properties"] for name in ("H5", "Cluster", "Metadata")
    )
    assert h5["target_size"]["type"] == "integer" and "default" not in h5["target_size"]
    assert {"type": "null"} not in cluster["gpus"]["anyOf"]
    assert {"type": "null"} in metadata["csv"]["anyOf"]
    assert "anyOf" not in definitions["SettingsOverrides"]["properties"]["h5"]  # sections are always there
