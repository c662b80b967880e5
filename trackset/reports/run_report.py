"""What a run did, per video and stage, bounded in memory and artifacts whatever the corpus.

A build of 50,000 videos has 250,000 per-video stage records: ~250 MB held in the flow
process, a 6 MiB table per stage in the UI. So a run keeps per video only what it writes
to its **report** (``<dataset_dir>/runs/<run>.jsonl``, one JSON line per video and stage:
``pandas.read_json(path, lines=True)``), and in memory a :class:`StageTally` per stage:
counts, seconds, GPU-hours, a line per worker, the failures, a small sample and the
:data:`SLOWEST_VIDEOS` slowest videos. Artifacts and the terminal show the tallies, the
failures (up to :data:`MAX_FAILURE_ROWS`) and where the report is; the run summary also
what the videos this run did not build would cost at this run's rates.

Nothing is dropped silently: every video ends a run done, skipped (already current),
failed with its reason, or quarantined with its reason, in the report and in the tallies.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trackset.domain import (
    GPU_SECONDS,
    SkippedFiles,
    StageOutcome,
    StageRecord,
    VideoFailure,
    is_video_id,
    video_id_order,
)
from trackset.formats.layout import ensure_file
from trackset.reports import markdown

MAX_FAILURE_ROWS = 200
"""Failures listed in a stage table or the run summary; the report holds every one."""

SAMPLE_RECORDS = 20
"""Done records a tally keeps for the terminal's table of videos built."""

SLOWEST_VIDEOS = 10
"""Slowest videos a tally keeps per stage, with their seconds, for the run summary."""


@dataclass
class WorkerLoad:
    """What one worker did for a stage: videos done, seconds in the stage, highest peak."""

    videos: int = 0
    seconds: float = 0.0
    peak_bytes: int | None = None
    gpu: str | None = None
    attempts: int = 1


@dataclass
class StageTally:
    """One stage over a whole run, in constant memory per worker (failures aside).

    Examples:
        >>> tally = StageTally("hands")
        >>> record = StageRecord("00001", "hands", "done", 2.0, worker="w0", info={"frames": 9})
        >>> tally.add(StageOutcome("hands", [record]))
        >>> tally.done, tally.seconds, tally.info_totals, tally.workers["w0"].videos
        (1, 2.0, {'frames': 9.0}, 1)
        >>> tally.add(StageOutcome("hands", [StageRecord("00002", "hands", "done", 8.0, info={"gpu_seconds": 4.0})]))
        >>> tally.gpu_seconds, tally.slowest_videos()
        (4.0, [('00002', 8.0), ('00001', 2.0)])
    """

    stage: str
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[VideoFailure] = field(default_factory=list)
    workers: dict[str, WorkerLoad] = field(default_factory=dict)
    info_totals: dict[str, float] = field(default_factory=dict)
    sample: list[StageRecord] = field(default_factory=list)
    slowest: list[tuple[float, str]] = field(default_factory=list)  # a heap: the fastest of them first

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def gpu_seconds(self) -> float:
        """GPU-seconds its videos held: seconds x GPU share, summed (:data:`~trackset.domain.GPU_SECONDS`)."""
        return self.info_totals.get(GPU_SECONDS, 0.0)

    def slowest_videos(self) -> list[tuple[str, float]]:
        """Up to :data:`SLOWEST_VIDEOS` (video, seconds), slowest first."""
        return [(video, seconds) for seconds, video in sorted(self.slowest, reverse=True)]

    def add(self, part: StageOutcome) -> None:
        """Fold a batch's records and failures in."""
        for record in part.records:
            if record.status == "skipped":
                self.skipped += 1
                continue
            self.done += 1
            self.seconds += record.seconds
            load = self.workers.setdefault(record.worker, WorkerLoad(gpu=record.gpu))
            load.videos += 1
            load.seconds += record.seconds
            load.attempts = max(load.attempts, int(record.info.get("attempts", 1)))
            if record.peak_bytes is not None:
                load.peak_bytes = max(load.peak_bytes or 0, record.peak_bytes)
            for key, value in record.info.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self.info_totals[key] = self.info_totals.get(key, 0.0) + float(value)
            if len(self.sample) < SAMPLE_RECORDS:
                self.sample.append(record)
            if len(self.slowest) < SLOWEST_VIDEOS:
                heapq.heappush(self.slowest, (record.seconds, record.video_id))
            else:
                heapq.heappushpop(self.slowest, (record.seconds, record.video_id))
        self.failures += part.failures

    def table(self) -> list[dict[str, object]]:
        """Rows of the ``stage-<stage>`` table: one per worker, then the failures (bounded).

        The columns are DECISIONS.md's (video, status, seconds, peak memory, worker, GPU,
        attempts); a worker's row counts its videos in the first two.
        """
        rows: list[dict[str, object]] = [
            {
                "video": f"{load.videos} videos",
                "status": "done",
                "seconds": round(load.seconds, 3),
                "peak memory (MiB)": None if load.peak_bytes is None else round(load.peak_bytes / 2**20, 1),
                "worker": worker,
                "GPU": load.gpu,
                "attempts": load.attempts,
            }
            for worker, load in sorted(self.workers.items())
        ]
        if self.skipped:
            rows.append(_row(f"{self.skipped} videos", "skipped (already current)"))
        for failure in sorted(self.failures, key=lambda f: _order(f.video_id))[:MAX_FAILURE_ROWS]:
            rows.append(_row(failure.video_id, f"{failure.kind}: {failure.reason}", failure.attempts))
        if self.failed > MAX_FAILURE_ROWS:
            rows.append(_row(f"{self.failed - MAX_FAILURE_ROWS} more", "failures: see the run report"))
        return rows


def _row(video: str, status: str, attempts: int | None = None) -> dict[str, object]:
    return {
        "video": video,
        "status": status,
        "seconds": None,
        "peak memory (MiB)": None,
        "worker": None,
        "GPU": None,
        "attempts": attempts,
    }


class RunReport:
    """The per-video report of a run: one JSON line per video and stage, appended as waves finish.

    ``row`` says what a line is: ``"record"`` (a :class:`StageRecord`: done or skipped) or
    ``"failure"`` (a :class:`VideoFailure`, whose ``kind`` is error, out_of_memory or quarantined).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, part: StageOutcome) -> None:
        """Append a batch's records and failures (flushed, so a crash keeps what finished)."""
        lines = [json.dumps({"row": "record", **asdict(r)}, sort_keys=True) for r in part.records]
        lines += [json.dumps({"row": "failure", **asdict(f)}, sort_keys=True) for f in part.failures]
        if not lines:
            return
        ensure_file(self.path)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every line, in the order written (none when the run processed nothing)."""
        if not self.path.is_file():
            return
        with open(self.path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def records(self, stage: str) -> list[StageRecord]:
        """The stage's records of the run (done and skipped), in the order written."""
        keep = ("video_id", "stage", "status", "seconds", "peak_bytes", "worker", "gpu", "outputs", "info")
        return [
            StageRecord(**{key: row[key] for key in keep})
            for row in self.rows()
            if row["row"] == "record" and row["stage"] == stage
        ]


@dataclass
class RunSummary:
    """The whole run: what was found, what each stage did, failures, statistics, where."""

    dataset_dir: str
    videos_total: int
    videos_pending: int
    stages: list[StageTally] = field(default_factory=list)
    statistics: dict[str, object] = field(default_factory=dict)
    extra_failures: list[VideoFailure] = field(default_factory=list)
    report_path: str = ""
    skipped: SkippedFiles = field(default_factory=SkippedFiles)
    dataset_version: str = ""
    seconds: float = 0.0  # the stages' wall time: process-waves, start to end

    @property
    def failures(self) -> list[VideoFailure]:
        return [f for tally in self.stages for f in tally.failures] + self.extra_failures

    def stage(self, name: str) -> StageTally:
        """The tally of stage ``name`` (an empty one if the run did not include it)."""
        return next((tally for tally in self.stages if tally.stage == name), StageTally(name))

    def records(self, stage: str) -> list[StageRecord]:
        """Every record of ``stage`` in this run, read back from the run report."""
        return RunReport(Path(self.report_path)).records(stage) if self.report_path else []

    def hand_windows_out_of_image(self) -> int:
        """Hand windows the H5 builds of this run dropped because the wrist left the image."""
        return int(self.stage("h5_build").info_totals.get("hand_windows_out_of_image", 0))

    def to_markdown(self) -> str:
        """The ``run-summary`` artifact: counts, failures with reasons, files not registered,
        statistics, output. Every file name, path and reason is escaped
        (:mod:`trackset.reports.markdown`): they come from users' files."""
        lines = [
            "# trackset run summary",
            "",
            f"- videos in dataset: **{self.videos_total}**",
            f"- videos processed this run: **{self.videos_pending}**",
            f"- failures: **{len(self.failures)}**",
            f"- files not registered (not videos): **{self.skipped.total}**",
            f"- hand windows dropped, wrist outside the image: **{self.hand_windows_out_of_image()}**",
            f"- output: {markdown.code(self.dataset_dir)}",
        ]
        if self.dataset_version:
            lines.append(f"- dataset version: `{self.dataset_version}` (`dataset.json`)")
        if self.report_path:
            read = "`pandas.read_json(path, lines=True)`"
            lines.append(f"- every video of this run: {markdown.code(self.report_path)} (JSON lines: {read})")
        lines += [
            "",
            "## Stages",
            "",
            "| stage | done | skipped | failed | seconds | GPU-hours |",
            "|---|---|---|---|---|---|",
        ]
        for tally in self.stages:
            lines.append(
                f"| {tally.stage} | {tally.done} | {tally.skipped} | {tally.failed} | {tally.seconds:.1f} "
                f"| {tally.gpu_seconds / 3600:.3f} |"
            )
        lines += self._slowest_markdown() + self._projection_markdown()
        failures = self.failures
        if failures:
            lines += ["", "## Failures", "", "| video | stage | kind | reason |", "|---|---|---|---|"]
            lines += [
                f"| {markdown.text(f.video_id)} | {f.stage} | {f.kind} | {markdown.text(f.reason)} |"
                for f in failures[:MAX_FAILURE_ROWS]
            ]
            if len(failures) > MAX_FAILURE_ROWS:
                lines.append(f"\n... and {len(failures) - MAX_FAILURE_ROWS} more in the run report.")
        if self.skipped.total:
            lines += ["", "## Files not registered", ""]
            lines += [f"- {markdown.text(line)}" for line in self.skipped.lines()]
        built = [record.video_id for record in self.stage("h5_build").sample]  # pictures go to the first ones
        if built and self.dataset_dir:
            from trackset.reports.pictures import (  # lazy: cv2, PyAV and h5py are slow to import
                pictures_markdown,
                run_pictures,
            )

            lines += pictures_markdown(run_pictures(Path(self.dataset_dir), built))
        if self.statistics:
            lines += ["", "## Statistics", "", "| key | value |", "|---|---|"]
            for key, value in self.statistics.items():
                if key.endswith("num_samples") or key.endswith("_mean") or key.endswith("_std") or key == "std_floored":
                    lines.append(f"| {key} | {_short(value)} |")
        return "\n".join(lines) + "\n"

    def _slowest_markdown(self) -> list[str]:
        rows = [
            f"| {tally.stage} | {video} | {seconds:.1f} |"
            for tally in self.stages
            for video, seconds in tally.slowest_videos()
        ]
        if not rows:
            return []
        title = f"## Slowest videos (up to {SLOWEST_VIDEOS} per stage)"
        return ["", title, "", "| stage | video | seconds |", "|---|---|---|", *rows]

    def _projection_markdown(self) -> list[str]:
        """What the videos without an H5 file after this run (failed, quarantined, excluded)
        would cost at this run's GPU-seconds per video, and take at its pace."""
        left = len({failure.video_id for failure in self.failures})
        if not left:
            return []
        per_stage = [(t.stage, t.gpu_seconds / t.done) for t in self.stages if t.done and t.gpu_seconds]
        gpu_hours = left * sum(seconds for _, seconds in per_stage) / 3600
        built = self.stage("h5_build").done
        lines = [
            "",
            "## Videos not built: projection",
            "",
            f"- videos without an H5 file after this run (failed, quarantined or excluded): **{left}**",
        ]
        if per_stage:
            each = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in per_stage)
            lines.append(
                f"- at this run's GPU-seconds per video ({each}): **{gpu_hours:.2f} GPU-hours** "
                "(a quarantined video ran out of memory alone on a GPU: it needs a larger one)"
            )
        if built and self.seconds > 0:
            rate = 3600 * built / self.seconds
            lines.append(f"- at this run's pace ({rate:.1f} videos per hour): **{left / rate:.2f} hours**")
        return lines


def _short(value: object) -> str:
    """Compact rendering of a statistic for markdown."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _order(video: str) -> tuple[int, int | str]:
    """Rows by video id in the reader's order; rows of unregistered files (a path) last, by name."""
    return (0, video_id_order(video)) if is_video_id(video) else (1, video)
