"""The engine's side of a task's end: a Prefect state as the report the planner reads, and
the progress artifacts it publishes (no server, no cluster)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
import torch
from prefect.states import Completed, Failed, Pending

import trackset.engine.submission as submission
from trackset.domain import STAGE_ORDER, StageRecord, VideoFailure, VideoRef, stage_slug
from trackset.engine.submission import RUN_KEY, ProgressBoard, report_of
from trackset.errors import TracksetError
from trackset.scheduling.eta import Estimator
from trackset.scheduling.progress import Spent

A, B = (VideoRef(i, Path(f"{i}.mp4"), "") for i in ("00000", "00001"))


def test_a_completed_task_reports_its_results():
    results = [StageRecord("00000", "hands", "done"), VideoFailure("00001", "hands", "bad")]
    report = report_of(Completed(data=results), [A, B])
    assert report.results == tuple(results) and report.failure is None and not report.queued


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory\nat 2"),
            ("OutOfMemoryError: CUDA out of memory", True, False),
        ),
        (TracksetError("unreadable"), ("TracksetError: unreadable", False, True)),
        (OSError(28, "No space left on device"), ("OSError: [Errno 28] No space left on device", False, False)),
    ],
    ids=["out-of-memory", "typed", "transient"],
)
def test_a_failed_task_reports_why(error, expected):
    report = report_of(Failed(data=error), [A])
    assert report.results is None
    assert (report.failure.reason, report.failure.out_of_memory, report.failure.typed) == expected


def test_a_queued_task_prefect_never_started_reports_that_it_did_not_run():
    skipped = report_of(Pending(name="NotReady", message="upstream failed"), [A], queued=True)
    assert skipped.queued and skipped.results is None and not skipped.failure.ran
    failed = report_of(Failed(message="worker lost"), [A], queued=True)
    assert failed.failure.ran and failed.failure.message == "worker lost"


class Artifacts:
    """Prefect's artifact calls the board makes, faked: each artifact's key and what it shows."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.keys: dict[object, str] = {}
        self.shown: dict[str, dict] = {}
        monkeypatch.setattr(submission, "create_progress_artifact", self.create)
        monkeypatch.setattr(submission, "update_progress_artifact", self.update)
        monkeypatch.setattr(submission, "update_artifact", self.update_with_metadata)

    def create(self, percent, key, description):
        artifact = uuid4()
        self.keys[artifact] = key
        self.calls.append(("create", key, percent))
        self.shown[key] = {"percent": percent, "description": description}
        return artifact

    def update(self, artifact, percent, description):
        key = self.keys[artifact]
        self.calls.append(("update", key, percent))
        self.shown[key] = {"percent": percent, "description": description}

    def update_with_metadata(self, artifact, percent, description, metadata):
        self.update(artifact, percent, description)
        self.shown[self.keys[artifact]]["metadata"] = metadata


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def board(stages=("hands",), total=4, gpu_stages=("hands",)) -> tuple[ProgressBoard, Clock]:
    clock = Clock()
    return ProgressBoard(Estimator(list(stages), total, 0.0, list(gpu_stages)), clock), clock


def test_progress_is_created_on_first_use_rate_limited_and_sent_at_the_end_of_a_wave(monkeypatch):
    artifacts = Artifacts(monkeypatch)
    progress, clock = board()
    progress.publish("hands", 0, 4, final=True)  # nothing published yet: stays silent
    clock.now = 1.0
    progress.publish("hands", 1, 4, spent=Spent(1, 10.0, 10.0))
    clock.now = 1.5
    progress.publish("hands", 2, 4, spent=Spent(2, 20.0, 20.0))  # within a second of the last: not sent
    clock.now = 1.7
    progress.publish("hands", 4, 4, final=True, spent=Spent(4, 40.0, 40.0))
    assert [(kind, key) for kind, key, _ in artifacts.calls] == [
        ("create", "progress-hands"),
        ("create", "progress-run"),
        ("update", "progress-run"),
        ("update", "progress-hands"),
        ("update", "progress-run"),
    ]
    assert [percent for _, key, percent in artifacts.calls if key == "progress-hands"] == [25.0, 100.0]


def test_each_artifact_says_done_rate_eta_and_gpu_hours(monkeypatch):
    artifacts = Artifacts(monkeypatch)
    progress, clock = board(("preprocess", "hands"), total=10, gpu_stages=("hands",))
    clock.now = 60.0
    progress.publish("preprocess", 10, 10, spent=Spent(10, 50.0, 0.0))
    clock.now = 100.0
    # 4 videos on 2 workers per GPU, 90 s each: 180 GPU-seconds, 45 a video.
    progress.publish("hands", 4, 10, spent=Spent(4, 180.0, 180.0))
    hands, run = artifacts.shown["progress-hands"], artifacts.shown["progress-run"]
    assert hands["percent"] == 40.0
    # Nothing was counted before the window (the last half of the 100 s): it opens at the run's
    # start. 4 videos, 180 GPU-seconds in 100 s; 6 videos left at 45 GPU-seconds each.
    assert hands["description"] == "4 of 10 videos · 144 videos/h · ETA 2 min · 0.05 GPU-h so far, 0.12 projected"
    preprocess = artifacts.shown["progress-preprocess"]["description"]  # as of its own update, at 60 s
    assert preprocess == "10 of 10 videos · 600 videos/h · done"
    assert run["description"] == (
        "4 of 10 videos through every stage · 144 videos/h · ETA 2 min · 0.05 GPU-h so far, 0.12 projected"
    )
    assert run["metadata"] == {
        "done": "4",
        "total": "10",
        "percent": "40.0",
        "elapsed_s": "100.0",
        "gpu_hours": "0.05",
        "videos_per_hour": "144.0",
        "eta_s": "150.0",
        "gpu_hours_projected": "0.125",
    }
    clock.now = 130.0
    progress.publish("hands", 10, 10, final=True, spent=Spent(10, 450.0, 450.0))
    progress.finish()
    assert artifacts.shown["progress-run"]["metadata"]["eta_s"] == "0.0"
    assert "· done ·" in artifacts.shown["progress-run"]["description"]


def test_a_50000_video_run_keeps_one_artifact_per_stage_and_one_line_each(monkeypatch):
    artifacts = Artifacts(monkeypatch)
    stages = ("preprocess", "depth_camera", "tracks_3d", "hands", "h5_build")
    progress, clock = board(stages, total=50_000, gpu_stages=stages[1:-1])
    for video in range(10, 50_001, 10):
        clock.now += 0.5  # a task of 10 videos reports every half second
        for stage in stages:
            gpu = 2.0 * video if stage in stages[1:-1] else 0.0
            progress.publish(stage, video, 50_000, spent=Spent(video, 2.0 * video, gpu))
    progress.finish()
    assert len([call for call in artifacts.calls if call[0] == "create"]) == len(stages) + 1
    # 2,500 s: once a second per artifact at most, where a call per report would be 25,000 and more.
    assert len(artifacts.calls) <= (len(stages) + 1) * 2_502
    assert all(len(shown["description"]) < 200 for shown in artifacts.shown.values())
    assert len(artifacts.shown["progress-run"]["metadata"]) == 8


def test_no_stage_is_named_like_the_runs_progress_artifact():
    assert all(f"progress-{stage_slug(stage)}" != RUN_KEY for stage in STAGE_ORDER)
