"""How many workers of a GPU stage share one GPU: the only home of the sizing formula.

DECISIONS.md ("GPU memory") fixes the rule::

    workers per GPU = clamp(floor(headroom * total / peak), 1, max_workers_per_gpu)

where *peak* is the most GPU memory one worker held on one video (profiled, or, when no
video gave a reading, the real model's prior ``StageResources.gpu_memory_gb`` from the stage
table, see :mod:`trackset.scheduling.packing`) and *total* is what the stage may use on that GPU (its
memory minus what other processes hold, :attr:`trackset.gpu.inventory.GpuInfo.available_bytes`).

The formula floors and never rounds up: packing one worker too many turns a slow run into
out-of-memory failures. The product ``headroom * total`` is computed with exact rationals
from the headroom's decimal spelling, so ``0.7 * 90 / 7`` is 9, not the 8 that binary
floating point would give.

When the result would be 0 (peak above ``headroom * total`` but not above ``total``), one
worker still runs: it has the whole GPU to itself, and the headroom exists to keep *several*
workers from colliding. A peak above the whole ``total`` cannot fit even alone, so the stage
fails at once with :class:`PeakExceedsGpuError` instead of failing every video.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from trackset.config.settings import ClusterSettings
from trackset.errors import TracksetError

GIB = 1024**3
"""Bytes in a GiB; settings' ``*_gb`` values are GiB (1 GB = 1024**3 bytes here)."""

# The defaults come from the settings model so the two can never drift apart.
DEFAULT_HEADROOM: float = ClusterSettings.model_fields["headroom"].default
DEFAULT_MAX_PER_GPU: int = ClusterSettings.model_fields["max_workers_per_gpu"].default


def gib_to_bytes(gib: float) -> int:
    """Convert a settings value in GiB to whole bytes (rounded to the nearest byte).

    Examples:
        >>> gib_to_bytes(1.5)
        1610612736
        >>> gib_to_bytes(0.25) == GIB // 4
        True
    """
    return round(gib * GIB)


def format_gib(nbytes: int) -> str:
    """Bytes as GiB with two decimals, the unit of every message and table.

    Examples:
        >>> format_gib(3 * GIB // 2)
        '1.50 GiB'
    """
    return f"{nbytes / GIB:.2f} GiB"


class PeakExceedsGpuError(TracksetError, ValueError):
    """One worker's peak does not fit the GPU at all; the stage cannot run there.

    Raised before any video is submitted, so the failure names the real cause once instead
    of appearing as an out-of-memory error on every video.
    """

    def __init__(self, peak_bytes: int, total_bytes: int, stage: str | None = None) -> None:
        self.peak_bytes = peak_bytes
        self.total_bytes = total_bytes
        self.stage = stage
        who = f"stage {stage}: " if stage else ""
        super().__init__(
            f"{who}peak GPU memory {format_gib(peak_bytes)} exceeds the "
            f"{format_gib(total_bytes)} available on the GPU; use a larger GPU, free it, "
            "or lower the stage's memory use"
        )

    def __reduce__(self) -> tuple[type, tuple[int, int, str | None]]:
        # Keep the typed fields when Dask or Prefect pickle the exception.
        return (type(self), (self.peak_bytes, self.total_bytes, self.stage))


def plan_workers_per_gpu(
    total_bytes: int,
    peak_bytes: int,
    headroom: float = DEFAULT_HEADROOM,
    max_per_gpu: int = DEFAULT_MAX_PER_GPU,
    *,
    stage: str | None = None,
) -> int:
    """Workers of one stage that fit on one GPU: clamp(floor(headroom*total/peak), 1, max).

    Args:
        total_bytes: memory the stage may use on the GPU (total minus other processes' use).
        peak_bytes: the most one worker holds while processing one video, model included.
        headroom: fraction of ``total_bytes`` the workers may fill together, in (0, 1].
        max_per_gpu: upper bound on workers per GPU (``cluster.max_workers_per_gpu``).
        stage: stage name, only used to make the error message self-explanatory.

    Returns:
        The number of workers to start per GPU, between 1 and ``max_per_gpu``.

    Raises:
        PeakExceedsGpuError: ``peak_bytes > total_bytes``: not even one worker fits.
        ValueError: a non-positive size or count, or a headroom outside (0, 1].

    Examples:
        >>> plan_workers_per_gpu(total_bytes=80 * GIB, peak_bytes=10 * GIB)
        4
        >>> plan_workers_per_gpu(80 * GIB, 10 * GIB, max_per_gpu=16)  # floor(7.2)
        7
        >>> plan_workers_per_gpu(90, 7, headroom=0.7, max_per_gpu=16)  # exactly 9, not 8.999...
        9
        >>> plan_workers_per_gpu(10 * GIB, 10 * GIB)  # 0.9 rounds down to 0, clamped to 1
        1
        >>> plan_workers_per_gpu(8 * GIB, 9 * GIB, stage="hands")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        trackset.gpu.sizing.PeakExceedsGpuError: stage hands: peak GPU memory 9.00 GiB exceeds the 8.00 GiB available...
    """
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    if peak_bytes <= 0:
        raise ValueError(f"peak_bytes must be positive, got {peak_bytes}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom}")
    if max_per_gpu < 1:
        raise ValueError(f"max_per_gpu must be at least 1, got {max_per_gpu}")
    if peak_bytes > total_bytes:
        raise PeakExceedsGpuError(peak_bytes, total_bytes, stage)
    # str() gives the decimal the user wrote (0.7, not 0.6999999999999999556): exact floor.
    fits = int(Fraction(str(headroom)) * total_bytes // peak_bytes)
    return max(1, min(fits, max_per_gpu))


def worker_share(available_bytes: int, place: int, headroom: float = DEFAULT_HEADROOM) -> int:
    """GPU memory one worker may hold when it is the ``place``-th (from 0) of its GPU to run:
    the whole GPU for the first, ``floor(headroom * available / (place + 1))`` for the others.

    Each GPU worker offers its share as the Dask resource ``GPU_SHARE`` and a sized task
    asks for the stage's peak (:func:`trackset.cluster.plan.gpu_task_resources`). The
    workers of a GPU whose share is at least the peak are then exactly the first
    :func:`plan_workers_per_gpu` of them, on every GPU by its own memory: one request sizes
    a 40 GB and an 80 GB card from the same peak. The first worker's share is the whole GPU
    because one worker alone may fill it (the headroom keeps *several* apart); a GPU whose
    memory is below the peak offers no worker for it.

    Examples:
        >>> [worker_share(80 * GIB, place) // GIB for place in range(4)]  # 72 / 2, 72 / 3, 72 / 4
        [80, 36, 24, 18]
        >>> peak = 10 * GIB  # the first 7 of 80 GiB, the first 3 of 40 GiB, as the formula says
        >>> [sum(worker_share(total * GIB, k) >= peak for k in range(16)) for total in (80, 40)]
        [7, 3]
        >>> [plan_workers_per_gpu(total * GIB, peak, max_per_gpu=16) for total in (80, 40)]
        [7, 3]
    """
    if place < 0:
        raise ValueError(f"place must be at least 0, got {place}")
    if place == 0:
        return available_bytes
    return int(Fraction(str(headroom)) * available_bytes // (place + 1))


def stages_fit_together(first: tuple[int, int], second: tuple[int, int], total_bytes: int, headroom: float) -> bool:
    """Whether two GPU stages may have tasks in flight on one GPU at once.

    Each stage is ``(peak_bytes, workers_per_gpu)``: a stage sized to ``k`` workers runs on
    the first ``k`` workers of every GPU (:func:`trackset.cluster.plan.gpu_task_resources`),
    and a worker holds one GPU stage's model at a time (:mod:`trackset.cluster.worker_cache`). While
    one stage's last tasks run and the next one's first tasks start, worker ``i`` may hold
    either stage, so the GPU may hold, per worker, the larger peak of the stages it serves.
    That sum must stay within ``headroom * total`` as each stage's own sizing does; where it
    does not (a stage of large peak after one of many workers), the next stage waits for the
    GPU as a whole.

    Examples:
        >>> stages_fit_together((10 * GIB, 2), (10 * GIB, 2), 24 * GIB, 0.9)  # 2 x 10 of 21.6
        True
        >>> stages_fit_together((5 * GIB, 4), (20 * GIB, 1), 24 * GIB, 0.9)  # 20 + 3 x 5 = 35
        False
    """
    (peak_a, k_a), (peak_b, k_b) = first, second
    held = sum(max(peak_a if i < k_a else 0, peak_b if i < k_b else 0) for i in range(max(k_a, k_b)))
    return held <= Fraction(str(headroom)) * total_bytes


def workers_beside(
    earlier: tuple[int, int], peak_bytes: int, most: int, total_bytes: int, headroom: float
) -> int | None:
    """The most workers of a stage of ``peak_bytes``, up to ``most``, that fit on a GPU beside
    the ``earlier`` stage's (peak, workers per GPU) (:func:`stages_fit_together`); None when
    not even one does.

    Queued at that size, the next stage starts on each worker as it frees instead of every
    GPU idling through the earlier stage's last tasks; a stage bound by its GPU loses little
    to a worker fewer.

    Examples:
        >>> workers_beside((8 * GIB, 3), 6 * GIB, 4, 31 * GIB, 0.9)  # 4 x 8 > 27.9; 3 x 8 fits
        3
        >>> workers_beside((10 * GIB, 2), 12 * GIB, 2, 24 * GIB, 0.9) is None  # 12 + 10 > 21.6
        True
    """
    for workers in range(most, 0, -1):
        if stages_fit_together(earlier, (peak_bytes, workers), total_bytes, headroom):
            return workers
    return None


@dataclass(frozen=True)
class MemoryProfile:
    """Outcome of profiling one stage on one GPU: one row of ``memory-profile-<stage>``
    (``workers_per_gpu`` 0: the GPU is smaller than the peak and takes none of the stage's tasks)."""

    stage: str
    gpu_index: int
    total_bytes: int
    peak_bytes: int
    workers_per_gpu: int

    def to_row(self) -> dict[str, int | float]:
        """Row for a Prefect table artifact, sizes in GiB rounded to 0.01.

        Examples:
            >>> MemoryProfile("hands", 1, 24 * GIB, 5 * GIB, 4).to_row()
            {'GPU': 1, 'total GiB': 24.0, 'peak GiB': 5.0, 'workers per GPU': 4}
        """
        return {
            "GPU": self.gpu_index,
            "total GiB": round(self.total_bytes / GIB, 2),
            "peak GiB": round(self.peak_bytes / GIB, 2),
            "workers per GPU": self.workers_per_gpu,
        }
