"""How a build ends: plain Completed, Completed named CompletedWithFailures, or Failed."""

from __future__ import annotations

import pytest
from prefect.states import State

from trackset.config.settings import RunSettings
from trackset.domain import FailureKind, StageOutcome, StageRecord, VideoFailure
from trackset.engine.run_outcome import COMPLETED_WITH_FAILURES, StageFailedError, VideosFailedError, final_state
from trackset.reports.run_report import RunSummary, StageTally


def tally(stage: str, done: list[str], failed: list[str], kind: FailureKind = "error", attempts: int = 1) -> StageTally:
    result = StageTally(stage)
    records = [StageRecord(vid, stage, "done") for vid in done]
    failures = [VideoFailure(vid, stage, "boom", kind, attempts) for vid in failed]
    result.add(StageOutcome(stage, records, failures))
    return result


def summary(*tallies: StageTally) -> RunSummary:
    return RunSummary(dataset_dir="", videos_total=3, videos_pending=3, stages=list(tallies))


def test_a_clean_run_returns_its_summary():
    clean = summary(tally("preprocess", ["00000", "00001"], []))
    assert final_state(clean, RunSettings()) is clean


def test_failed_videos_end_in_a_named_completed_state_holding_the_summary():
    partial = summary(tally("preprocess", ["00000", "00001"], ["00002"]), tally("hands", ["00000"], ["00001"]))
    state = final_state(partial, RunSettings())
    assert isinstance(state, State)
    assert state.is_completed() and state.name == COMPLETED_WITH_FAILURES != "Completed"
    assert state.data is partial
    assert "2 of 3 video(s) failed" in (state.message or "")


def test_fail_on_video_error_fails_the_run():
    partial = summary(tally("preprocess", ["00000"], ["00002"]))
    with pytest.raises(VideosFailedError, match=r"1 video\(s\) failed .*\n  00002 preprocess \(error\): boom"):
        final_state(partial, RunSettings(fail_on_video_error=True))


def test_a_stage_that_failed_every_video_fails_the_run_whatever_the_setting():
    # depth quarantined every video (PeakExceedsGpuError); later stages got nothing at all.
    quarantined = tally("depth_camera", [], ["00000", "00001"], "quarantined")
    dead = summary(tally("preprocess", ["00000", "00001", "00002"], []), quarantined, StageTally("hands"))
    with pytest.raises(StageFailedError, match=r"every video failed in depth_camera \(2\)"):
        final_state(dead, RunSettings())
    # An error that its retries did not cure, on every video, is the stage's too.
    with pytest.raises(StageFailedError, match=r"every video failed in hands \(1\)"):
        final_state(summary(tally("hands", [], ["00000"], attempts=3)), RunSettings())


def test_one_new_broken_file_is_not_a_broken_stage():
    """The nightly's only new video is unreadable: a failed video (its input), not a failed stage."""
    state = final_state(summary(tally("preprocess", [], ["00004"])), RunSettings())
    assert isinstance(state, State) and state.name == COMPLETED_WITH_FAILURES


def test_a_stage_whose_videos_were_all_current_has_not_failed_them_all():
    resumed = StageTally("hands")
    resumed.add(
        StageOutcome("hands", [StageRecord("00000", "hands", "skipped")], [VideoFailure("00001", "hands", "x")])
    )
    state = final_state(summary(resumed), RunSettings())
    assert isinstance(state, State) and state.name == COMPLETED_WITH_FAILURES
