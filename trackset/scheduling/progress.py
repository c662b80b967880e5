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

It holds only counts, so a rate and an ETA (issue 32) can be kept beside them from the
times the engine publishes at.

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


class StageProgress:
    """One stage's count of videos it is finished with (module docstring)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._closed = 0  # videos of the waves this stage has closed
        self._wave: set[str] = set()  # videos of the open wave it is final for

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
