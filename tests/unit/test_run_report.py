"""Run records stay bounded in memory and in artifacts; every video is in the run report."""

from __future__ import annotations

import json
from html import escape as html_escape

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from trackset.domain import SkippedFiles, StageOutcome, StageRecord, VideoFailure
from trackset.reports.run_report import MAX_FAILURE_ROWS, RunReport, RunSummary, StageTally

WORKERS = 8


def batch(start: int, count: int, failures: int = 0) -> StageOutcome:
    records = [
        StageRecord(
            f"{i:05d}", "depth_camera", "done", 1.5, 2**30, f"gpu{i % 2}-w{i % 4}", str(i % 2), info={"frames": 10}
        )
        for i in range(start, start + count)
    ]
    failed = [
        VideoFailure(f"{i:05d}", "depth_camera", "x" * 80) for i in range(start + count, start + count + failures)
    ]
    return StageOutcome("depth_camera", records, failed)


def test_a_tally_of_2000_videos_makes_a_bounded_table_and_summary(tmp_path):
    tally = StageTally("depth_camera")
    report = RunReport(tmp_path / "runs" / "run.jsonl")
    for wave in range(4):  # 4 waves of 500: 2,000 records and 400 failures
        part = batch(wave * 600, 500, 100)
        tally.add(part)
        report.write(part)
    assert (tally.done, tally.failed, len(tally.workers)) == (2000, 400, 4)
    rows = tally.table()
    assert len(rows) == 4 + MAX_FAILURE_ROWS + 1  # a row per worker, the first failures, "N more"
    assert len(json.dumps(rows)) < 256 * 1024
    summary = RunSummary("dataset", 2400, 2400, [tally], report_path=str(report.path))
    assert len(summary.to_markdown()) < 256 * 1024 and "200 more in the run report" in summary.to_markdown()
    assert len(tally.sample) == 20 and tally.info_totals["frames"] == 20_000
    assert len(tally.slowest) == 10  # the slowest videos are bounded too


def test_the_report_holds_every_video_and_opens_in_pandas(tmp_path):
    report = RunReport(tmp_path / "run.jsonl")
    report.write(batch(0, 30, 5))
    report.write(StageOutcome("h5_build", [StageRecord("00000", "h5_build", "skipped")]))
    frame = pd.read_json(report.path, lines=True)
    assert len(frame) == 36 and set(frame["row"]) == {"record", "failure"}
    assert [r.video_id for r in report.records("depth_camera")] == [f"{i:05d}" for i in range(30)]
    assert report.records("h5_build")[0].status == "skipped"
    summary = RunSummary("dataset", 1, 1, report_path=str(report.path))
    assert summary.records("depth_camera")[0] == batch(0, 1).records[0]


def test_an_empty_run_has_an_empty_report(tmp_path):
    assert RunReport(tmp_path / "none.jsonl").records("hands") == []
    assert RunSummary("d", 0, 0).records("hands") == []


@pytest.mark.parametrize("skipped", [0, 3])
def test_skipped_videos_are_counted_not_listed(skipped):
    tally = StageTally("hands")
    tally.add(StageOutcome("hands", [StageRecord(f"{i:05d}", "hands", "skipped") for i in range(skipped)]))
    assert tally.skipped == skipped and tally.done == 0 and len(tally.table()) == (1 if skipped else 0)


def test_the_summary_gives_gpu_hours_per_stage_the_slowest_videos_and_what_the_rest_would_cost():
    depth, h5 = StageTally("depth_camera"), StageTally("h5_build")
    for i in range(40):  # 40 videos, the i-th taking 10 + i s on workers of 2 per GPU
        seconds = 10.0 + i
        record = StageRecord(f"{i:05d}", "depth_camera", "done", seconds, info={"gpu_seconds": seconds / 2})
        depth.add(StageOutcome("depth_camera", [record]))
        h5.add(StageOutcome("h5_build", [StageRecord(f"{i:05d}", "h5_build", "done", 1.0)]))
    depth.add(StageOutcome("depth_camera", failures=[VideoFailure("00040", "depth_camera", "OOM", "quarantined")]))
    summary = RunSummary(
        "dataset",
        43,
        41,
        [depth, h5],
        extra_failures=[VideoFailure("00041", "register", "unreadable"), VideoFailure("00042", "register", "bad")],
        seconds=3600.0,
    )
    text = summary.to_markdown()
    gpu_seconds = sum(10.0 + i for i in range(40)) / 2  # 590
    assert f"| depth_camera | 40 | 0 | 1 | {2 * gpu_seconds:.1f} | {gpu_seconds / 3600:.3f} |" in text
    assert "| h5_build | 40 | 0 | 0 | 40.0 | 0.000 |" in text
    slowest = [line for line in text.splitlines() if line.startswith("| depth_camera | 000")]
    assert slowest == [f"| depth_camera | {i:05d} | {10.0 + i:.1f} |" for i in range(39, 29, -1)]
    assert len([line for line in text.splitlines() if line.startswith("| h5_build | 000")]) == 10
    # 3 videos without an H5 file, at 590 / 40 GPU-seconds each; 40 built in the hour.
    assert "without an H5 file after this run (failed, quarantined or excluded): **3**" in text
    assert f"**{3 * gpu_seconds / 40 / 3600:.2f} GPU-hours**" in text
    assert "at this run's pace (40.0 videos per hour): **0.07 hours**" in text


def test_a_run_without_failures_projects_nothing():
    tally = StageTally("hands")
    tally.add(StageOutcome("hands", [StageRecord("00000", "hands", "done", 2.0)]))
    assert "projection" not in RunSummary("dataset", 1, 1, [tally]).to_markdown()


HOSTILE = "clip_[a](http://x)*b*|`c`<img src=x onerror=alert(1)>\n# d ~~e~~ &amp; \\f"


def rendered(markdown_text: str) -> str:
    """HTML of the markdown as a CommonMark renderer with GitHub's tables sees it."""
    return MarkdownIt("commonmark").enable("table").render(markdown_text)


def test_user_text_in_the_summary_is_shown_as_written(tmp_path):
    """File names, reasons and paths can neither format, link, inject HTML nor cut their table row."""
    folder = tmp_path / "run `1` | [x]"
    failure = VideoFailure(HOSTILE, "register", f"unreadable: {HOSTILE}")
    skipped = SkippedFiles()
    skipped.add("extension", HOSTILE)
    summary = RunSummary(
        str(folder), 1, 1, extra_failures=[failure], report_path=str(folder / "r.jsonl"), skipped=skipped
    )
    html = rendered(summary.to_markdown())
    for tag in ("<a ", "<em>", "<img", "<s>", "<h1>d", "<code>c</code>"):
        assert tag not in html, tag
    flat = html_escape(" ".join(HOSTILE.splitlines()), quote=False)
    [row] = [line for line in html.split("<tr>") if "<td>register</td>" in line]
    assert row.count("<td>") == 4 and f"<td>{flat}</td>" in row and f"<td>unreadable: {flat}</td>" in row
    assert f"<li>1 file (name not ending in one of paths.video_extensions): {flat}</li>" in html
    assert f"<code>{html_escape(str(folder), quote=False)}</code>" in html


def test_files_not_registered_are_counted_and_the_first_named(tmp_path):
    skipped = SkippedFiles(shown=3)
    for index in range(5):
        skipped.add("extension", f"clip_{index}.m4v")
    skipped.add("link", "elsewhere.mp4")
    text = RunSummary("d", 0, 0, skipped=skipped).to_markdown()
    assert "- files not registered (not videos): **6**" in text
    html = rendered(text)
    assert "<li>5 files (name not ending in one of paths.video_extensions): clip_0.m4v, clip_1.m4v, clip_2.m4v and 2 more</li>" in html
    assert "<li>1 file (symbolic link: only regular files are registered" in html
