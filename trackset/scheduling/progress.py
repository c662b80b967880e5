"""How far a stage is through the run's videos: the one count behind ``progress-<stage>``.

A stage finishes its videos in rounds (profiling, the sized round, smaller rounds after
out-of-memory failures, reruns of a failed shard or of videos a queued task skipped), and a
round's tasks report as they end. Counting per round from the wave's start let the bar step
back when a later round began; here the count is a set of the wave's videos the stage is
final for, on top of the waves it has closed, so it can only grow:

- :meth:`StageProgress.finished` adds videos whose result is final (a record, or a failure
  that is not an out-of-memory one still to be retried);
- :meth:`StageProgress.close_wave` counts the whole wave, those an earlier stage dropped
  and those it skipped included, so every stage ends at 100 %.

Beside the count it adds up what the stage spent (:class:`Spent`): the videos it processed
and their seconds, each as a share of what it held (:meth:`StageProgress.spend`). It holds
no clock: the rate, the ETA and the GPU-hours are the estimator's
(:mod:`trackset.scheduling.eta`), from the times the engine publishes at.

Examples:
    >>> progress = StageProgress(total=10)
    >>> progress.finished(["00000", "00001"]), progress.finished(["00001"]), progress.done
    (True, False, 2)
    >>> progress.close_wave(5)
    >>> progress.done, progress.percent
    (5, 50.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import astuple, dataclass

from trackset.domain import GPU_SECONDS, StageRecord


@dataclass(frozen=True)
class Spent:
    """What a stage spent on the videos it processed so far in the run.

    Attributes:
        videos: videos it processed (a ``done`` record; a skipped one cost nothing).
        seconds: their cost: GPU-seconds for those that held a GPU share, else their seconds
            (of a CPU worker, or of the flow).
        gpu_seconds: the part of ``seconds`` that held GPUs.
        profiled: of ``videos``, those of profiling rounds (one worker per GPU, to measure
            the stage's peak): what they cost does not say what the sized rounds will.
        profiled_seconds: their part of ``seconds``.
        profiled_gpu_seconds: their part of ``gpu_seconds``.
    """

    videos: int = 0
    seconds: float = 0.0
    gpu_seconds: float = 0.0
    profiled: int = 0
    profiled_seconds: float = 0.0
    profiled_gpu_seconds: float = 0.0

    def __add__(self, other: Spent) -> Spent:
        return Spent(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class StageProgress:
    """One stage's count of videos it is finished with (module docstring)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._closed = 0  # videos of the waves this stage has closed
        self._wave: set[str] = set()  # videos of the open wave it is final for
        self.spent = Spent()

    @property
    def done(self) -> int:
        """Videos the stage is finished with; never less than before."""
        return min(self._closed + len(self._wave), self.total)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / max(self.total, 1)

    def finished(self, video_ids: Iterable[str]) -> bool:
        """Count ``video_ids`` of the open wave as finished; whether the count grew."""
        before = len(self._wave)
        self._wave.update(video_ids)
        return len(self._wave) > before

    def close_wave(self, size: int) -> None:
        """Count the whole open wave (``size`` videos) as finished and open the next.

        Raises:
            ValueError: ``size`` is below the videos already counted in it.
        """
        if size < len(self._wave):
            raise ValueError(f"a wave of {size} videos cannot have {len(self._wave)} finished")
        self._closed += size
        self._wave.clear()

    def spend(self, records: Iterable[StageRecord], *, profiling: bool = False) -> bool:
        """Add the cost of the ``done`` ones of ``records`` (of a profiling round if
        ``profiling``); whether there was any.

        A record's cost is its ``info["gpu_seconds"]`` where it held a GPU share (the
        planner notes it, :data:`~trackset.domain.GPU_SECONDS`), else its seconds.

        Examples:
            >>> progress = StageProgress(total=4)
            >>> held = StageRecord("00000", "hands", "done", 8.0, info={GPU_SECONDS: 2.0})
            >>> cpu, current = StageRecord("00001", "hands", "done", 3.0), StageRecord("00002", "hands", "skipped")
            >>> progress.spend([held, cpu, current])
            True
            >>> progress.spent
            Spent(videos=2, seconds=5.0, gpu_seconds=2.0, profiled=0, profiled_seconds=0.0, profiled_gpu_seconds=0.0)
        """
        videos, seconds, gpu = 0, 0.0, 0.0
        for record in records:
            if record.status != "done":
                continue
            held = record.info.get(GPU_SECONDS)
            share = float(held) if isinstance(held, int | float) else None
            videos += 1
            seconds += record.seconds if share is None else share
            gpu += share or 0.0
        if not videos:
            return False
        self.spent += Spent(videos, seconds, gpu, *((videos, seconds, gpu) if profiling else (0, 0.0, 0.0)))
        return True
