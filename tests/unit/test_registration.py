"""A nightly refresh reads no partials of unchanged videos: the done index and a stat suffice."""

from __future__ import annotations

import os
from pathlib import Path

from trackset.config.settings import Settings
from trackset.dataset.registration import register_videos
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import STATISTIC_DIMS, Moments, VideoPartials
from trackset.stages.registry import stage_config


def build_outputs(settings: Settings, videos) -> None:
    """H5 and partials as the H5 stage leaves them for a current video."""
    dataset = DatasetLayout(settings.paths.dataset_dir)
    config = stage_config("h5_build", settings)
    for video in videos:
        dataset.h5(video.video_id).write_bytes(b"h5 of " + video.video_id.encode())
        moments = {name: Moments.empty(dim) for name, dim in STATISTIC_DIMS.items()}
        partials = VideoPartials(video_id=video.video_id, fingerprint=config.fingerprint(video.content_hash), **moments)
        partials.write(dataset.partials(video.video_id))


def test_unchanged_videos_are_known_current_without_reading_their_partials(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        (videos / f"clip_{i}.mp4").write_bytes(b"video %d" % i)
    settings = Settings(paths={"videos_dir": videos, "work_dir": tmp_path / "work", "dataset_dir": tmp_path / "data"})
    first = register_videos(settings)
    assert len(first.pending) == 4
    build_outputs(settings, first.pending)

    reads: list[Path] = []
    real_read = VideoPartials.read.__func__

    def counting_read(cls, path):
        reads.append(Path(path))
        return real_read(cls, path)

    monkeypatch.setattr(VideoPartials, "read", classmethod(counting_read))
    assert register_videos(settings).pending == []
    assert len(reads) == 4  # each read once, then remembered in the done index
    reads.clear()
    assert register_videos(settings).pending == []
    assert reads == []  # the nightly refresh: a stat per file, no partials read

    rebuilt = DatasetLayout(settings.paths.dataset_dir).h5("00002")
    rebuilt.write_bytes(b"another H5")  # rewritten: its entry is no longer trusted
    os.utime(rebuilt, ns=(1, 1))
    assert register_videos(settings).pending == []
    assert [p.name for p in reads] == ["00002.json"]

    changed = Settings(**{**settings.model_dump(), "h5": {"target_size": 128}})
    reads.clear()
    assert len(register_videos(changed).pending) == 4  # another fingerprint: the index cannot say current
    assert len(reads) == 4


def test_files_that_are_not_videos_are_counted_and_named_but_metadata_csv_is_not(tmp_path):
    videos = tmp_path / "videos"
    (videos / "takes").mkdir(parents=True)
    for name in ("clip.mp4", "takes/a.m4v", "takes/b.M4V", "metadata.csv", ".DS_Store"):
        (videos / name).write_bytes(b"x")
    (videos / "elsewhere.mp4").symlink_to(videos / "clip.mp4")
    settings = Settings(paths={"videos_dir": videos, "work_dir": tmp_path / "work", "dataset_dir": tmp_path / "data"})
    registration = register_videos(settings)
    assert [video.source.name for video in registration.videos] == ["clip.mp4"]
    assert registration.skipped.counts == {"link": 1, "extension": 2}
    assert registration.skipped.examples == {"link": ["elsewhere.mp4"], "extension": ["takes/a.m4v", "takes/b.M4V"]}
    assert "3 other files skipped" in registration.describe()
