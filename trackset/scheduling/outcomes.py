"""What one task of a stage did, as the engine reports it, and the rules that read it.

The engine turns each finished Prefect task into a :class:`TaskReport`: plain data, its
videos and either the results it returned or why it did not return any. :func:`settle`
is the one place that decides what such a report means for its videos:

- a task that returned results files each video's record or failure (an out-of-memory
  failure stays one, for the packing policy to shrink);
- a **queued** task (``process-after``, submitted behind the upstream task of its videos)
  that failed, or that Prefect never started because its upstream task failed
  (``NotReady``), files nothing and is only logged: which of its videos reached the stage
  is the planner's to tell, and it runs those again (the "missed" videos,
  :mod:`trackset.scheduling.planner`);
- a shard of several videos that failed as a whole, other than by a typed error, is
  isolated: its videos run again one per task, so a transient fault of one video (a full
  disk) fails that video alone;
- any other failed task fails each of its videos with the task's reason.

:func:`reached` is the rule a queued task applies on its worker: it runs only the videos
its upstream task finished.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from trackset.domain import FailureKind, StageOutcome, StageRecord, VideoFailure, VideoRef


@dataclass(frozen=True)
class TaskFailure:
    """Why a task returned no results.

    Attributes:
        reason: ``"<Error>: <first line>"``, what a failure record says.
        message: the error's whole text, for the log.
        out_of_memory: it ran out of GPU memory (never retried in place: DECISIONS.md).
        typed: a trackset error (the video's own input): final at its first attempt.
        ran: False for a queued task Prefect never started (its upstream task failed).
        worker: the worker it failed on, where known (an out-of-memory failure's).
    """

    reason: str
    message: str = ""
    out_of_memory: bool = False
    typed: bool = False
    ran: bool = True
    worker: str = ""


@dataclass(frozen=True)
class TaskReport:
    """One task of a stage, as it ended: its videos, and its results or its failure.

    Attributes:
        videos: the videos the task was given, in order.
        results: one record or failure per video it ran; None when it returned nothing.
        failure: why it returned nothing (with ``results`` None).
        queued: a ``process-after`` task, submitted behind the upstream task of its videos.
    """

    videos: tuple[VideoRef, ...]
    results: tuple[StageRecord | VideoFailure, ...] | None = None
    failure: TaskFailure | None = None
    queued: bool = False


@dataclass
class Settled:
    """What a :class:`TaskReport` means (:func:`settle`).

    Attributes:
        outcome: the records and failures it files.
        isolate: videos of a failed shard, to run again one per task.
        warning: a line for the run's log, or None.
    """

    outcome: StageOutcome
    isolate: list[VideoRef] = field(default_factory=list)
    warning: str | None = None


def settle(stage: str, report: TaskReport, retries: int) -> Settled:
    """What ``report`` files for its videos, by the rules of the module docstring.

    ``retries`` is how often a transient failure was retried in place: a failure after them
    took ``retries + 1`` attempts; a typed or out-of-memory one took one.

    Examples:
        >>> from pathlib import Path
        >>> a, b = (VideoRef(i, Path(f"{i}.mp4"), "") for i in ("00000", "00001"))
        >>> done = StageRecord("00000", "hands", "done")
        >>> settle("hands", TaskReport((a,), (done,)), 2).outcome.records == [done]
        True
        >>> settle("hands", TaskReport((a, b), failure=TaskFailure("OSError: disk full")), 2).isolate == [a, b]
        True
        >>> alone = settle("hands", TaskReport((a,), failure=TaskFailure("OSError: disk full")), 2)
        >>> [(f.kind, f.attempts) for f in alone.outcome.failures]
        [('error', 3)]
        >>> late = settle("hands", TaskReport((a, b), failure=TaskFailure("", ran=False), queued=True), 2)
        >>> late.outcome.records, late.outcome.failures, late.isolate, late.warning
        ([], [], [], None)
    """
    outcome = StageOutcome(stage)
    if report.results is not None:
        for result in report.results:
            outcome.add(result)
        return Settled(outcome)
    failure = report.failure or TaskFailure("task failed")
    videos = list(report.videos)
    if report.queued:
        if not failure.ran:
            return Settled(outcome)  # NotReady: its upstream task failed, and said so
        return Settled(
            outcome,
            warning=f"{stage}: a task of {len(videos)} videos failed ({failure.message or failure.reason}); "
            "those that reached it run again",
        )
    if len(videos) > 1 and not failure.typed:
        return Settled(
            outcome,
            isolate=videos,
            warning=f"{stage}: a shard of {len(videos)} videos failed ({failure.message or failure.reason}); "
            "rerunning them one per task",
        )
    kind: FailureKind = "out_of_memory" if failure.out_of_memory else "error"
    attempts = 1 if failure.out_of_memory or failure.typed else retries + 1
    outcome.failures += [
        VideoFailure(video.video_id, stage, failure.reason, kind, attempts, failure.worker) for video in videos
    ]
    return Settled(outcome)


def final_ids(outcome: StageOutcome) -> set[str]:
    """The videos ``outcome`` is final for: recorded, or failed other than by running out of
    memory (those run again on fewer workers per GPU, or are quarantined)."""
    return {r.video_id for r in outcome.records} | {f.video_id for f in outcome.failures if f.kind != "out_of_memory"}


def reached(videos: Sequence[VideoRef], upstream: StageRecord | Iterable[StageRecord | VideoFailure]) -> list[VideoRef]:
    """The ``videos`` a queued task runs: those its upstream task finished (a record).

    Examples:
        >>> from pathlib import Path
        >>> a, b = (VideoRef(i, Path(f"{i}.mp4"), "") for i in ("00000", "00001"))
        >>> upstream = [StageRecord("00000", "depth_camera", "done"), VideoFailure("00001", "depth_camera", "bad")]
        >>> [v.video_id for v in reached([a, b], upstream)]
        ['00000']
    """
    results = [upstream] if isinstance(upstream, StageRecord) else list(upstream)
    finished = {result.video_id for result in results if isinstance(result, StageRecord)}
    return [video for video in videos if video.video_id in finished]
