"""Settings precedence (overrides > env > file > defaults) and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackset.config.settings import Settings, load_settings
from trackset.errors import SettingsError

REPO_SETTINGS = Path(__file__).resolve().parents[2] / "settings.yaml"


def test_repo_settings_yaml_is_valid_and_matches_defaults():
    assert load_settings(REPO_SETTINGS).model_dump() == Settings().model_dump()


@pytest.fixture
def settings_file(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("h5:\n  target_size: 128\n  compression: lzf\ncluster:\n  gpus: [1]\n")
    return path


def test_file_over_defaults(settings_file):
    settings = load_settings(settings_file)
    assert settings.h5.target_size == 128 and settings.cluster.gpus == [1]
    assert settings.h5.depth_max_m == 2.5  # untouched keys keep defaults


def test_env_over_file_and_overrides_over_env(settings_file, monkeypatch):
    monkeypatch.setenv("TRACKSET_H5__TARGET_SIZE", "64")
    assert load_settings(settings_file).h5.target_size == 64
    assert load_settings(settings_file).h5.compression == "lzf"  # env replaces one key, not the section
    assert load_settings(settings_file, {"h5": {"target_size": 32}}).h5.target_size == 32


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"h5": {"target_size": 0}}, "settings: h5.target_size: Input should be greater than 0 (got 0)"),
        ({"h5": {"target_sise": 3}}, "settings: h5.target_sise: unknown key"),
        ({"h5": {"shard_size": 3}}, "settings: h5.shard_size: unknown key (renamed to cluster.cpu_task_videos)"),
        ({"tracks_3d": {"backend": "gpu"}}, "settings: tracks_3d.backend: Input should be 'synthetic' or 'real'"),
        ({"cluster": {"headroom": 1.5}}, "settings: cluster.headroom: Input should be less than or equal to 1"),
        ({"h5": {"depth_min_m": 3.0}}, "settings: h5: depth_min_m must be below depth_max_m"),
    ],
)
def test_wrong_value_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(SettingsError) as info:
        load_settings(overrides=overrides)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_wrong_value_in_file_and_env_name_the_key(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text("preprocess:\n  fps: -3\n")
    with pytest.raises(SettingsError, match=r"^settings: preprocess\.fps: "):
        load_settings(path)
    monkeypatch.setenv("TRACKSET_STATISTICS__STD_FLOOR", "zero")
    with pytest.raises(SettingsError, match=r"^settings: statistics\.std_floor: "):
        load_settings()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_section_fingerprint_changes_with_values():
    assert Settings().h5.fingerprint() != load_settings(overrides={"h5": {"target_size": 128}}).h5.fingerprint()
    assert Settings().h5.fingerprint() == Settings().h5.fingerprint()


@pytest.mark.parametrize("address", ["tcp://head:8786", "10.0.0.7:8786", "tcp://192.168.1.2:8786", "ucx://10.0.0.7:1"])
def test_an_unencrypted_scheduler_on_another_machine_is_refused_in_one_line(address):
    with pytest.raises(SettingsError) as info:
        load_settings(overrides={"cluster": {"scheduler_address": address}})
    line = str(info.value)
    assert line.startswith("settings: cluster.scheduler_address: an unencrypted address on another machine: ")
    assert "cluster.trusted_network: true" in line and "cluster.tls_dir" in line
    assert "\n" not in line
    trusted = load_settings(overrides={"cluster": {"scheduler_address": address, "trusted_network": True}})
    assert trusted.cluster.scheduler_address == address


@pytest.mark.parametrize(
    "address", ["tls://head:8786", "tls://10.0.0.7:8786", "tcp://127.0.0.1:8786", "tcp://[::1]:8786", "localhost:8786"]
)
def test_an_encrypted_or_local_scheduler_is_accepted(address):
    assert load_settings(overrides={"cluster": {"scheduler_address": address}}).cluster.scheduler_address == address
