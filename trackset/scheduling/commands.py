"""What the wave planner asks of whoever carries it out, and what it is told back.

The planner (:mod:`trackset.scheduling.planner`) is a generator of commands: it yields one,
is sent the reply, and goes on. Each command is plain data, named for what the planner
wants done; the engine (``trackset.engine``) carries it out on Prefect and Dask, the
simulator (``bench/simulate.py``) on simulated GPUs and a clock, and the tests on a fake
in a few lines. :func:`drive` is that loop.

Replies, by command: :class:`Check` -> :class:`Checked`; :class:`WriteHere` ->
:class:`~trackset.domain.StageOutcome` of the videos it wrote; :class:`NextReport` ->
:class:`~trackset.scheduling.outcomes.TaskReport`, or None once every task of its rounds
reported; :class:`Profile` -> a tuple of task reports; :class:`ReadGpus` -> :class:`GpuView`;
:class:`LoadProfile` -> the stored peak in bytes, or None; every other command -> None.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from trackset.domain import StageOutcome, VideoRef
from trackset.gpu.inventory import GpuInfo
from trackset.scheduling.packing import PackingResult
from trackset.scheduling.progress import Spent


@dataclass(frozen=True)
class Check:
    """Which of ``videos`` are current for ``stage`` (skipped), and what the others need."""

    stage: str
    videos: tuple[VideoRef, ...]


@dataclass(frozen=True)
class Checked:
    """The reply to :class:`Check`.

    Attributes:
        current: outputs complete and current: nothing to do.
        deleted: of the others, those whose outputs were deleted on purpose
            (``run.keep_intermediates``): they recompute from their source.
        needs_gpu: of the others, for a GPU stage, those that need a GPU task; the rest
            (an unprompted clip's object masks) are written in the flow.
    """

    current: frozenset[str] = frozenset()
    deleted: frozenset[str] = frozenset()
    needs_gpu: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WriteHere:
    """Run ``videos`` of ``stage`` in the flow, without a task (they need no GPU).

    A video whose write fails other than by its own input is left out of the reply; the
    planner gives it a task, whose retries apply to it as to any other.
    """

    stage: str
    videos: tuple[VideoRef, ...]


@dataclass(frozen=True)
class Submit:
    """Start a round of ``stage``'s tasks for ``videos`` now, without waiting.

    Attributes:
        round: the planner's id for these tasks.
        per_task: videos per task (1: a ``process-video`` task each).
        workers_per_gpu: a GPU round, on the first ``k`` workers of each GPU (task runs
            tagged ``workers-per-gpu-<k>``); None: the CPU workers (any worker on threads).
        need_bytes: of those, only workers whose share of their GPU is at least this
            (:mod:`trackset.scheduling.gpu_layout`; 0: any).
    """

    round: int
    stage: str
    videos: tuple[VideoRef, ...]
    per_task: int
    workers_per_gpu: int | None = None
    need_bytes: int = 0


@dataclass(frozen=True)
class SubmitAfter:
    """Queue ``stage`` behind the tasks of ``upstream``: for each upstream task, one
    ``process-after`` task holding its videos that are in ``videos``, started as soon as
    that task ends (a Dask dependency) and running only the videos it finished."""

    round: int
    stage: str
    upstream: tuple[int, ...]
    videos: frozenset[str]
    workers_per_gpu: int
    need_bytes: int = 0


@dataclass(frozen=True)
class NextReport:
    """Wait for the next task of ``rounds`` to end and report it (None once all have)."""

    rounds: tuple[int, ...]


@dataclass(frozen=True)
class Settle:
    """Wait until every task of ``rounds`` has ended, without collecting them."""

    rounds: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    """Run ``videos`` of ``stage`` one per task on one worker per GPU (``profile-memory``)
    and wait for them."""

    stage: str
    videos: tuple[VideoRef, ...]


@dataclass(frozen=True)
class Release:
    """Free ``stage``'s models on the GPU workers, so the next stage gets the memory."""

    stage: str


@dataclass(frozen=True)
class ReadGpus:
    """The cluster's GPUs as they are now, for ``stage``; ``measure``: also what each has free."""

    stage: str
    measure: bool = True


@dataclass(frozen=True)
class GpuView:
    """The reply to :class:`ReadGpus`: workers every GPU has, and the GPUs (if measured);
    per GPU, its workers' ``GPU_SHARE`` and names, first worker first (where known: without
    shares, ``slots_per_gpu`` workers on each offer their share of what it has available)."""

    slots_per_gpu: int
    gpus: tuple[GpuInfo, ...] = ()
    shares: tuple[tuple[int, ...], ...] = ()
    workers: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class LoadProfile:
    """The peak an earlier run stored for ``stage``, if any (on whichever GPUs it was measured)."""

    stage: str


@dataclass(frozen=True)
class SaveProfile:
    """Store ``stage``'s measured peak for later waves and runs."""

    stage: str
    peak_bytes: int


@dataclass(frozen=True)
class ForgetProfile:
    """Drop ``stage``'s stored peak: it under-estimated (a round ran out of memory)."""

    stage: str


@dataclass(frozen=True)
class GpuWork:
    """``videos`` videos of GPU work are pending in the current wave and the next (0: none is
    left in the run): a cluster whose GPU workers come and go with the work (SLURM jobs)
    holds as many GPUs as they can use; any other takes no notice."""

    videos: int


@dataclass(frozen=True)
class Log:
    """A line for the run's log."""

    level: Literal["info", "warning", "error"]
    message: str


@dataclass(frozen=True)
class Publish:
    """``done`` of ``total`` videos are through ``stage`` (``progress-<stage>``), which
    ``spent`` so far on those it processed; ``final`` at the end of a wave, where a stage
    that published nothing stays silent."""

    stage: str
    done: int
    total: int
    final: bool = False
    spent: Spent = field(default_factory=Spent)


@dataclass(frozen=True)
class Packed:
    """What the packing policy did to ``stage``'s videos of a wave, to record and publish."""

    stage: str
    result: PackingResult


@dataclass(frozen=True)
class CloseWave:
    """``stage`` is done with a wave: every video's record or failure in ``outcome``."""

    stage: str
    outcome: StageOutcome


@dataclass(frozen=True)
class DrawPictures:
    """Draw the pictures of these videos (``run.pictures_videos``)."""

    videos: tuple[str, ...]


@dataclass(frozen=True)
class FreeIntermediates:
    """A wave's H5 files are durable: delete the intermediates of ``videos`` not kept."""

    videos: tuple[VideoRef, ...]


Command = (
    Check
    | WriteHere
    | Submit
    | SubmitAfter
    | NextReport
    | Settle
    | Profile
    | Release
    | ReadGpus
    | LoadProfile
    | SaveProfile
    | ForgetProfile
    | GpuWork
    | Log
    | Publish
    | Packed
    | CloseWave
    | DrawPictures
    | FreeIntermediates
)

T = TypeVar("T")
Steps = Generator[Command, Any, T]
"""A part of the planner: yields commands, is sent their replies, returns a ``T``."""


def drive(steps: Steps[T], execute: Callable[[Command], Any]) -> T:
    """Carry out ``steps`` to the end: each command through ``execute``, its reply sent back.

    An error of ``execute`` is thrown into the planner where it waits, so its cleanup (a
    stage's models released) runs, and then raised here.

    Examples:
        >>> def two_checks() -> Steps[int]:
        ...     first = yield Check("hands", ())
        ...     second = yield Check("hands", ())
        ...     return len(first.current) + len(second.current)
        >>> drive(two_checks(), lambda command: Checked(frozenset({"00000"})))
        2
    """
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            command = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            reply, error = execute(command), None
        except Exception as exc:  # handed to the planner, which re-raises it after its cleanup
            reply, error = None, exc
