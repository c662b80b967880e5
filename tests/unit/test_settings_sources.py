"""Settings errors list every wrong key with where its value came from (file line, variable,
override), following the precedence overrides > environment > file > defaults."""

from __future__ import annotations

import pickle

import pytest

from trackset.config.settings import load_settings
from trackset.config.sources import SettingSources, read_settings_file
from trackset.dataset.track_type import TrackTypeMismatchError
from trackset.errors import SettingIssue, SettingOrigin, SettingsError

TEXT = "h5:\n  target_size: 0\n  compression: lzf\ncluster:\n  fake_gpus:\n    - memory_gb: 8\n    - memory_gb: 0\n"


@pytest.fixture
def settings_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TEXT)
    return path


def test_file_lines_of_keys_and_list_items(settings_file):
    _, lines = read_settings_file(settings_file)
    assert lines[("h5", "target_size")] == 2
    assert lines[("cluster", "fake_gpus", 1)] == 7
    assert lines[("cluster", "fake_gpus", 1, "memory_gb")] == 7


@pytest.mark.parametrize(
    ("env", "overrides", "source", "where"),
    [
        ({}, {}, "file", "line 2"),
        ({"TRACKSET_H5__TARGET_SIZE": "-1"}, {}, "env", "TRACKSET_H5__TARGET_SIZE"),
        ({"TRACKSET_H5": '{"target_size": -1}'}, {}, "env", "TRACKSET_H5"),
        ({"TRACKSET_H5__TARGET_SIZE": "-1"}, {"h5": {"target_size": -2}}, "override", "h5.target_size"),
    ],
)
def test_the_origin_is_the_source_that_wins(settings_file, monkeypatch, env, overrides, source, where):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(settings_file, overrides)
    (issue,) = [i for i in caught.value.issues if i.key == "h5.target_size"]
    assert [o.source for o in issue.origins] == [source]
    assert where in issue.line()


def test_every_error_is_listed_with_list_indices_in_the_key(settings_file):
    with pytest.raises(SettingsError) as caught:
        load_settings(settings_file, {"run": {"wave_size": 0}})
    assert [i.key for i in caught.value.issues] == ["h5.target_size", "cluster.fake_gpus.1.memory_gb", "run.wave_size"]
    assert str(caught.value).splitlines()[1] == (
        f"settings: cluster.fake_gpus.1.memory_gb: Input should be greater than 0 (got 0); from {settings_file}, line 7"
    )


def test_a_union_gives_one_line_per_key():
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides={"cluster": {"gpus": "some"}})
    assert str(caught.value) == (
        "settings: cluster.gpus: Input should be 'auto' (got 'some'), or a valid list (got 'some'); "
        "from the overrides (cluster.gpus)"
    )


def test_a_default_has_no_origin_and_a_section_lists_what_was_set():
    sources = SettingSources(overrides={"h5": {"depth_min_m": 3.0}}, env={"TRACKSET_H5__COMPRESSION": "lzf"})
    assert sources.origins(("h5", "depth_max_m")) == ()
    assert sources.origins(("h5",)) == (
        SettingOrigin("env", "h5.compression", "TRACKSET_H5__COMPRESSION"),
        SettingOrigin("override", "h5.depth_min_m"),
    )


def test_issues_survive_pickling_and_plain_messages_still_work():
    error = SettingsError.of([SettingIssue("h5.nope", "unknown key", (SettingOrigin("override", "h5.nope"),))])
    again = pickle.loads(pickle.dumps(error))
    assert again.issues == error.issues and str(again) == str(error)
    assert again.lines(lambda key: f"--set {key}=1") == ["settings: h5.nope: unknown key; from --set h5.nope=1"]
    typed = pickle.loads(pickle.dumps(TrackTypeMismatchError("settings: h5.track_type: mixed\nsecond line")))
    assert isinstance(typed, TrackTypeMismatchError) and typed.lines() == [
        "settings: h5.track_type: mixed",
        "second line",
    ]
