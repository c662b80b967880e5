"""The engine's side of a task's end: a Prefect state as the report the planner reads, and
the progress artifacts it publishes (no server, no cluster)."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
import torch
from prefect.states import Completed, Failed, Pending

import trackset.engine.submission as submission
from trackset.domain import StageRecord, VideoFailure, VideoRef
from trackset.engine.submission import ProgressBoard, report_of
from trackset.errors import TracksetError

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


def test_progress_is_created_on_first_use_rate_limited_and_sent_at_the_end_of_a_wave(monkeypatch):
    calls: list[tuple[str, float]] = []
    artifact = uuid4()

    def create(percent, key, description):
        calls.append((f"create {key}", percent))
        return artifact

    monkeypatch.setattr(submission, "create_progress_artifact", create)
    monkeypatch.setattr(submission, "update_progress_artifact", lambda _id, percent: calls.append(("update", percent)))
    board = ProgressBoard()
    board.publish("hands", 0, 4, final=True)  # nothing published yet: stays silent
    board.publish("hands", 1, 4)
    board.publish("hands", 2, 4)  # within a second of the last: not sent
    board.publish("hands", 4, 4, final=True)
    assert calls == [("create progress-hands", 25.0), ("update", 100.0)]
