"""3D and 2D videos never share a dataset directory: registration refuses, naming both types."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from trackset.config.settings import Settings
from trackset.dataset.registration import register_videos
from trackset.dataset.track_type import check_track_type, recorded_track_type
from trackset.errors import SettingsError
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import Moments, VideoPartials, statistic_dims, write_stats_yaml


def partials(dataset: DatasetLayout, video_id: str, track_type: str) -> None:
    moments = {name: Moments.empty(dim) for name, dim in statistic_dims(track_type).items()}
    VideoPartials(video_id=video_id, fingerprint="f", **moments).write(dataset.partials(video_id))


def test_an_empty_directory_takes_either_type(tmp_path: Path):
    dataset = DatasetLayout(tmp_path)
    assert recorded_track_type(dataset) is None
    check_track_type(dataset, "2d")
    check_track_type(dataset, "3d")


@pytest.mark.parametrize("source", ["yaml", "partials", "h5"])
def test_the_directory_says_its_type_and_the_other_is_refused(tmp_path: Path, source: str):
    dataset = DatasetLayout(tmp_path)
    if source == "yaml":
        write_stats_yaml(dataset.stats_yaml, {"track_type": "2d", "displacement_num_samples": 10})
    elif source == "partials":
        partials(dataset, "00000", "2d")
    else:
        with h5py.File(dataset.h5("00000"), "w") as f:
            f["root/track_type"] = "2d"
    assert recorded_track_type(dataset)[0] == "2d"
    check_track_type(dataset, "2d")
    with pytest.raises(SettingsError) as caught:
        check_track_type(dataset, "3d")
    message = str(caught.value)
    assert str(tmp_path) in message and "'3d'" in message and "'2d'" in message and "never mix" in message


def test_statistics_of_an_empty_dataset_do_not_pin_its_type(tmp_path: Path):
    dataset = DatasetLayout(tmp_path)
    write_stats_yaml(dataset.stats_yaml, {"track_type": "3d", "displacement_num_samples": 0})
    assert recorded_track_type(dataset) is None


def test_registration_refuses_videos_of_the_other_type(tmp_path: Path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"video")
    dataset = DatasetLayout(tmp_path / "dataset")
    partials(dataset, "00000", "3d")
    paths = {"videos_dir": videos, "work_dir": tmp_path / "work", "dataset_dir": dataset.root}
    with pytest.raises(SettingsError, match="h5.track_type is '2d' but the dataset directory"):
        register_videos(Settings(paths=paths, h5={"track_type": "2d"}))
    assert not dataset.manifest.exists()  # refused before anything was recorded
    assert len(register_videos(Settings(paths=paths)).pending) == 1
