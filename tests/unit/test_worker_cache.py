"""The worker's stage cache: a model loads once per process, and one GPU stage at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackset.cluster.worker_cache import get_stage, release_stages
from trackset.config.settings import load_settings
from trackset.stages.registry import stage_config


@pytest.fixture
def settings(tmp_path: Path):
    root = {name: str(tmp_path / name) for name in ("videos_dir", "work_dir", "dataset_dir")}
    yield load_settings(overrides={"paths": root})
    release_stages()


def watch_teardown(stage, torn: list[str]) -> None:
    teardown = stage.teardown
    stage.teardown = lambda: (torn.append(stage.name), teardown())[1]


def test_a_stage_is_set_up_once_per_process(settings):
    config = stage_config("depth_camera", settings)
    assert get_stage("depth_camera", config) is get_stage("depth_camera", config)


def test_setting_up_a_gpu_stage_tears_down_the_other_gpu_stages_but_not_the_cpu_ones(settings):
    """A worker may take the next stage's first task before the flow releases the stage
    before (trackset/scheduling/planner.py): it must not hold both models on the GPU."""
    torn: list[str] = []
    depth = get_stage("depth_camera", stage_config("depth_camera", settings))
    h5 = get_stage("h5_build", stage_config("h5_build", settings))
    watch_teardown(depth, torn)
    watch_teardown(h5, torn)

    tracks = get_stage("tracks_3d", stage_config("tracks_3d", settings))
    assert torn == ["depth_camera"]
    assert get_stage("h5_build", stage_config("h5_build", settings)) is h5
    assert get_stage("tracks_3d", stage_config("tracks_3d", settings)) is tracks  # no churn within a stage
    assert get_stage("depth_camera", stage_config("depth_camera", settings)) is not depth  # loaded afresh
