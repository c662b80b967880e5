"""How a run ends, so the UI, an automation or a notification can tell what happened.

*Completed* when every video landed; *Completed* named :data:`COMPLETED_WITH_FAILURES` when
some failed and the others landed; *Failed* when a stage failed every video it was given,
not for the videos' own input (a broken model, a GPU too small), when
``run.fail_on_video_error`` is set and any video failed (the nightly deployment sets it), or
when the run exceeded ``timeouts.flow_hours`` (:class:`RunTimeoutError`, raised by
``build-dataset``). A run whose process died is marked *Crashed* by the automation
``deployments/deploy.sh`` creates, once its heartbeats stop.
"""

from __future__ import annotations

from typing import cast

from prefect.states import Completed

from trackset.config.settings import RunSettings
from trackset.domain import VideoFailure
from trackset.errors import TracksetError
from trackset.reports.run_report import RunSummary


class VideosFailedError(TracksetError):
    """Raised at the end of a run with failures when ``run.fail_on_video_error`` is set."""


class StageFailedError(VideosFailedError):
    """Raised at the end of a run when a stage failed every video it was given.

    A kind of :class:`VideosFailedError`, so the CLI reports it the same way (one line, exit 1).
    """


class RunTimeoutError(TimeoutError):
    """The run took longer than ``timeouts.flow_hours``."""


COMPLETED_WITH_FAILURES = "CompletedWithFailures"
"""Name of the final state of a run where some videos failed and the others landed."""


def _listed(failures: list[VideoFailure], shown: int = 10) -> str:
    listed = "\n".join(f"  {f.video_id} {f.stage} ({f.kind}): {f.reason}" for f in failures[:shown])
    more = f"\n  ... and {len(failures) - shown} more" if len(failures) > shown else ""
    return listed + more


def _stage_at_fault(failure: VideoFailure) -> bool:
    """True unless the failure is the video's own: a typed input error (unreadable, unusable,
    bad intermediate) is final at its first attempt; a video that does not fit on the GPU
    (quarantined, out of memory) or an error retries did not cure says the stage is broken."""
    return failure.kind != "error" or failure.attempts > 1


def final_state(summary: RunSummary, run: RunSettings) -> RunSummary:
    """What the run ends as (module docstring): the summary, or it in a named state.

    A stage "failed every video" when none of the videos it was given got through and not
    all of them failed for their own input: a run of one new broken file is not a broken
    stage, a stage that quarantined every video is.

    Returns:
        ``summary`` when nothing failed (plain *Completed*); ``summary`` in a *Completed*
        state named :data:`COMPLETED_WITH_FAILURES` when some videos failed. Prefect hands
        the caller of the flow the summary either way, hence the return type.

    Raises:
        StageFailedError: a stage failed every video it was given, naming it.
        VideosFailedError: videos failed and ``run.fail_on_video_error`` is set.
    """
    failures = summary.failures
    if not failures:
        return summary
    dead = [
        tally
        for tally in summary.stages
        if tally.failed and not (tally.done or tally.skipped) and any(map(_stage_at_fault, tally.failures))
    ]
    if dead:
        names = ", ".join(f"{tally.stage} ({tally.failed})" for tally in dead)
        raise StageFailedError(
            f"every video failed in {names}; the run cannot have built anything past it:\n"
            + _listed([f for tally in dead for f in tally.failures])
        )
    if run.fail_on_video_error:
        raise VideosFailedError(
            f"{len(failures)} video(s) failed (run.fail_on_video_error is set); the others landed:\n"
            + _listed(failures)
        )
    state = Completed(
        name=COMPLETED_WITH_FAILURES,
        message=f"{len(failures)} of {summary.videos_pending} video(s) failed; the others landed (see run-summary)",
        data=summary,
    )
    return cast(RunSummary, state)  # Prefect ends the run in this state and returns its data
