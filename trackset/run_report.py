"""What a run did, per video and stage, in forms a terminal, a table artifact and markdown use.

Pure data: the flow fills it, the CLI prints it, Prefect artifacts render it. Nothing is
dropped silently: every video ends a run either done, skipped (already current), failed
with its reason, or quarantined with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trackset.domain import StageRecord, VideoFailure, is_video_id, video_id_order


def stage_table(records: list[StageRecord], failures: list[VideoFailure]) -> list[dict[str, object]]:
    """Rows of the ``stage-<stage>`` table artifact (DECISIONS.md columns), sorted by video."""
    rows: list[dict[str, object]] = [
        {
            "video": r.video_id,
            "status": r.status,
            "seconds": round(r.seconds, 3),
            "peak memory (MiB)": None if r.peak_bytes is None else round(r.peak_bytes / 2**20, 1),
            "worker": r.worker,
            "GPU": r.gpu,
            "attempts": int(r.info.get("attempts", 1)),
        }
        for r in records
    ]
    rows += [
        {
            "video": f.video_id,
            "status": f"{f.kind}: {f.reason}",
            "seconds": None,
            "peak memory (MiB)": None,
            "worker": None,
            "GPU": None,
            "attempts": f.attempts,
        }
        for f in failures
    ]
    return sorted(rows, key=lambda row: _order(str(row["video"])))


@dataclass
class StageOutcome:
    """Records and failures of one stage over the videos it was given."""

    stage: str
    records: list[StageRecord] = field(default_factory=list)
    failures: list[VideoFailure] = field(default_factory=list)

    @property
    def succeeded(self) -> list[str]:
        return sorted((r.video_id for r in self.records), key=video_id_order)

    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)


@dataclass
class RunSummary:
    """The whole run: what was found, what each stage did, failures, statistics, where."""

    dataset_dir: str
    videos_total: int
    videos_pending: int
    stages: list[StageOutcome] = field(default_factory=list)
    statistics: dict[str, object] = field(default_factory=dict)
    extra_failures: list[VideoFailure] = field(default_factory=list)

    @property
    def failures(self) -> list[VideoFailure]:
        return [f for outcome in self.stages for f in outcome.failures] + self.extra_failures

    def hand_windows_out_of_image(self) -> int:
        """Hand windows the H5 builds of this run dropped because the wrist left the image."""
        return sum(
            int(record.info.get("hand_windows_out_of_image", 0))
            for outcome in self.stages
            if outcome.stage == "h5_build"
            for record in outcome.records
        )

    def to_markdown(self) -> str:
        """The ``run-summary`` artifact: counts, failures with reasons, statistics, output."""
        lines = [
            "# trackset run summary",
            "",
            f"- videos in dataset: **{self.videos_total}**",
            f"- videos processed this run: **{self.videos_pending}**",
            f"- failures: **{len(self.failures)}**",
            f"- hand windows dropped, wrist outside the image: **{self.hand_windows_out_of_image()}**",
            f"- output: `{self.dataset_dir}`",
            "",
            "## Stages",
            "",
            "| stage | done | skipped | failed | seconds |",
            "|---|---|---|---|---|",
        ]
        for outcome in self.stages:
            done = sum(r.status == "done" for r in outcome.records)
            skipped = sum(r.status == "skipped" for r in outcome.records)
            failed = len(outcome.failures)
            lines.append(f"| {outcome.stage} | {done} | {skipped} | {failed} | {outcome.seconds():.1f} |")
        if self.failures:
            lines += ["", "## Failures", "", "| video | stage | kind | reason |", "|---|---|---|---|"]
            lines += [f"| {f.video_id} | {f.stage} | {f.kind} | {f.reason.replace('|', '/')} |" for f in self.failures]
        if self.statistics:
            lines += ["", "## Statistics", "", "| key | value |", "|---|---|"]
            for key, value in self.statistics.items():
                if key.endswith("num_samples") or key.endswith("_mean") or key.endswith("_std") or key == "std_floored":
                    lines.append(f"| {key} | {_short(value)} |")
        return "\n".join(lines) + "\n"


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
