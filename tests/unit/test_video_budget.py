"""A video that exceeds its stage's time budget is stopped and named; the budget follows its length."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import pytest

from trackset.config.settings import Settings, StageTimeout, load_settings
from trackset.domain import StageName, VideoRef
from trackset.stages.base import Stage
from trackset.stages.config import PreprocessConfig
from trackset.stages.registry import stage_config
from trackset.tasks.stage_tasks import VideoTimeoutError, video_budget


class SlowStage(Stage[PreprocessConfig]):
    """Takes ``seconds`` per video, in Python (as a stage stuck in a retry loop would)."""

    name: ClassVar[StageName] = "preprocess"
    seconds: ClassVar[float] = 0.0
    frames: ClassVar[int | None] = 10

    def outputs(self, video_id: str) -> list[Path]:
        return []

    def frame_count(self, video: VideoRef) -> int | None:
        return self.frames

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return {}


def config(tmp_path: Path, floor_s: float, s_per_frame: float) -> PreprocessConfig:
    paths = {"work_dir": tmp_path / "work", "dataset_dir": tmp_path / "dataset", "videos_dir": tmp_path}
    base = PreprocessConfig.from_settings(load_settings(overrides={"paths": paths}))
    return base.model_copy(update={"timeout": StageTimeout(floor_s=floor_s, s_per_frame=s_per_frame)})


VIDEO = VideoRef("00007", Path("clip.mp4"), "hash")


def test_a_video_over_its_budget_is_stopped_with_the_video_and_budget_named(tmp_path, monkeypatch):
    monkeypatch.setattr(SlowStage, "seconds", 30.0)
    cfg = config(tmp_path, floor_s=0.5, s_per_frame=0.05)  # 0.5 s + 10 frames x 0.05 s = 1 s
    runner = SlowStage(cfg)
    started = time.monotonic()
    with pytest.raises(VideoTimeoutError) as caught, video_budget(runner, VIDEO, cfg):
        runner.process(VIDEO)
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        "preprocess: video 00007 took over 1 s, its budget "
        "(0.5 s + 0.05 s per frame, 10 frames; timeouts in the settings)"
    )
    assert isinstance(caught.value, TimeoutError)  # retried like a transient error (tasks/retry.py)


def test_a_longer_video_gets_a_longer_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(SlowStage, "seconds", 1.0)
    monkeypatch.setattr(SlowStage, "frames", 40)  # 0.5 s + 40 x 0.05 s = 2.5 s: 1 s of work fits
    cfg = config(tmp_path, floor_s=0.5, s_per_frame=0.05)
    runner = SlowStage(cfg)
    with video_budget(runner, VIDEO, cfg):
        runner.process(VIDEO)


def test_timeouts_reach_each_stage_without_changing_what_it_computes():
    slow = Settings(timeouts={"default": {"floor_s": 60}, "stages": {"hands": {"floor_s": 5, "s_per_frame": 1}}})
    assert stage_config("hands", slow).timeout == StageTimeout(floor_s=5, s_per_frame=1)
    assert stage_config("depth_camera", slow).timeout.floor_s == 60
    for stage in ("hands", "depth_camera", "h5_build"):
        assert stage_config(stage, slow).cache_key() == stage_config(stage, Settings()).cache_key()
        assert stage_config(stage, slow).lineage == stage_config(stage, Settings()).lineage


def test_frame_counts_come_from_the_source_before_preprocess_and_from_frames_npy_after(tmp_path):
    from trackset.stages.registry import build_stage
    from trackset.synthetic.corpus import make_corpus

    [clip] = make_corpus(tmp_path / "videos", 1, seed=3, num_frames=25)
    paths = {"videos_dir": tmp_path / "videos", "work_dir": tmp_path / "work", "dataset_dir": tmp_path / "dataset"}
    settings = load_settings(overrides={"paths": paths})
    video = VideoRef("00000", clip, "hash")
    preprocess, hands = build_stage("preprocess", settings), build_stage("hands", settings)
    estimated = preprocess.frame_count(video)
    assert hands.frame_count(video) is None  # not preprocessed yet: the floor alone
    written = preprocess.process(video)["frames"]
    assert estimated == written == hands.frame_count(video)
