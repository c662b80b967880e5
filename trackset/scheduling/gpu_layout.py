"""The cluster's GPUs as a GPU round is sized on them: each GPU by its own memory.

A GPU stage's tasks ask for two things (:mod:`trackset.cluster.plan`): a ``GPU_RANK`` that
only the first ``workers_per_gpu`` workers of a GPU have, and a ``GPU_SHARE`` each worker
offers: the memory it may hold when it and the workers before it on its GPU run
(:func:`~trackset.gpu.sizing.worker_share`). One request so admits a different number of
workers on GPUs of different sizes, and :class:`GpuLayout` tells how many on each
(:meth:`GpuLayout.admitted`), and which request admits at most a given number on each
(:meth:`GpuLayout.request`): the packing (:mod:`trackset.scheduling.packing`) decides per GPU,
the request carries it to Dask.

Examples:
    >>> from trackset.gpu.inventory import GpuInfo
    >>> gib = 1024**3
    >>> layout = GpuLayout.of((GpuInfo(0, "A40", 40 * gib, 0, 40 * gib), GpuInfo(1, "A80", 80 * gib, 0, 80 * gib)), 4)
    >>> size = layout.request([3, 4], at_least=10 * gib)  # a peak of 10 GiB: 3 fit 40 GiB, 7 (at most 4) 80 GiB
    >>> size.workers_per_gpu, size.need_bytes // gib, layout.admitted(size)
    (4, 10, (3, 4))
    >>> layout.describe(layout.admitted(size))
    '1 A40 (40 GiB) x 3 + 1 A80 (80 GiB) x 4 workers'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trackset.gpu.inventory import GpuInfo
from trackset.gpu.sizing import DEFAULT_HEADROOM, GIB, worker_share


@dataclass(frozen=True)
class GpuSize:
    """What a GPU round's tasks ask for: the first ``workers_per_gpu`` workers of a GPU
    (``GPU_RANK``), and of those the ones whose share is at least ``need_bytes`` (``GPU_SHARE``,
    0: any)."""

    workers_per_gpu: int
    need_bytes: int = 0


@dataclass(frozen=True)
class GpuLayout:
    """The GPUs of the cluster, each with what its workers offer.

    Attributes:
        gpus: each GPU as last measured (what it has available now).
        shares: per GPU, its workers' ``GPU_SHARE``, first worker first.
        workers: per GPU, its workers' names in the same order (empty where unknown), to
            tell on which GPU a video ran.
    """

    gpus: tuple[GpuInfo, ...]
    shares: tuple[tuple[int, ...], ...]
    workers: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(
        cls,
        gpus: Sequence[GpuInfo],
        slots_per_gpu: int,
        headroom: float = DEFAULT_HEADROOM,
        shares: Sequence[Sequence[int]] = (),
        workers: Sequence[Sequence[str]] = (),
    ) -> GpuLayout:
        """A layout of ``gpus``; without ``shares``, ``slots_per_gpu`` workers on each that
        offer their share of what the GPU has available (as the run's own workers do)."""
        if not shares:
            shares = [[worker_share(gpu.available_bytes, k, headroom) for k in range(slots_per_gpu)] for gpu in gpus]
        return cls(tuple(gpus), tuple(tuple(s) for s in shares), tuple(tuple(w) for w in workers))

    def admitted(self, size: GpuSize) -> tuple[int, ...]:
        """Workers ``size`` admits on each GPU (shares fall with the place, so they are the first ones)."""
        return tuple(
            min(size.workers_per_gpu, sum(share >= size.need_bytes for share in shares)) for shares in self.shares
        )

    def request(self, targets: Sequence[int], at_least: int = 0) -> GpuSize:
        """The request that admits at most ``targets[i]`` workers on GPU ``i``, as many as it
        can, and only workers whose share is ``at_least`` (a stage's peak).

        The share asked for rises just above the share of the first worker a GPU must go
        without; on another GPU that may leave out workers its target allowed (a GPU whose
        workers hold less each), never more. ``targets`` of all 0: a request that admits none.

        Examples:
            >>> layout = GpuLayout((GpuInfo(0, "G", 100, 0, 100),) * 2, ((100, 45, 30), (100, 45, 30)))
            >>> layout.request([2, 1]), layout.admitted(layout.request([2, 1]))
            (GpuSize(workers_per_gpu=2, need_bytes=46), (1, 1))
        """
        most = max(max(targets, default=0), 1)
        need = at_least
        for shares, target in zip(self.shares, targets, strict=True):
            if target < min(most, len(shares)):
                need = max(need, shares[target] + 1)
        return GpuSize(most, need)

    def gpu_of(self, worker: str) -> int | None:
        """The place in :attr:`gpus` of the GPU ``worker`` serves, if known."""
        for place, names in enumerate(self.workers):
            if worker and worker in names:
                return place
        return None

    def ran_with(self, worker: str, per_gpu: Sequence[int], most: int) -> int:
        """The workers the GPU of ``worker`` ran in a round of ``per_gpu[i]`` workers on GPU
        ``i``; ``most`` (the most any GPU ran) where the worker is not known, as one that
        joined after the GPUs were read.

        Examples:
            >>> layout = GpuLayout((), (), (("gpu0-w0",), ("gpu1-w0", "gpu1-w1")))
            >>> [layout.ran_with(worker, (1, 2), 2) for worker in ("gpu0-w0", "gpu1-w1", "late")]
            [1, 2, 2]
        """
        place = self.gpu_of(worker)
        if place is None or place >= len(per_gpu) or not per_gpu[place]:
            return most
        return per_gpu[place]

    def share_held(self, place: int, admitted: Sequence[int]) -> int:
        """What each worker of GPU ``place`` could hold with ``admitted`` workers there: the
        share of the last one admitted."""
        return self.shares[place][admitted[place] - 1]

    def uniform(self, admitted: Sequence[int]) -> bool:
        """Whether every GPU is of one kind (name and memory) and runs as many workers."""
        return len(set(admitted)) <= 1 and len({(gpu.name, gpu.total_bytes) for gpu in self.gpus}) <= 1

    def describe(self, admitted: Sequence[int]) -> str:
        """The GPUs by kind (name and memory) and how many workers each runs, for the log.

        Examples:
            >>> gpus = tuple(GpuInfo(i, "G", 32 * GIB, 0, 32 * GIB) for i in range(2))
            >>> GpuLayout.of(gpus, 2).describe((2, 2))
            '2 GPUs x 2 workers'
        """
        if self.uniform(admitted):
            return f"{len(self.gpus)} GPUs x {admitted[0] if admitted else 0} workers"
        kinds: dict[tuple[str, int, int], int] = {}
        for gpu, workers in zip(self.gpus, admitted, strict=True):
            key = (gpu.name, gpu.total_bytes, workers)
            kinds[key] = kinds.get(key, 0) + 1
        return (
            " + ".join(f"{n} {name} ({total / GIB:.0f} GiB) x {k}" for (name, total, k), n in kinds.items())
            + " workers"
        )

    def per_gpu(self, admitted: Sequence[int]) -> str:
        """``k workers per GPU``, or each kind's where they differ.

        Examples:
            >>> gpus = (GpuInfo(0, "A", 16 * GIB, 0, 16 * GIB), GpuInfo(1, "B", 32 * GIB, 0, 32 * GIB))
            >>> GpuLayout.of(gpus[:1], 2).per_gpu((2,)), GpuLayout.of(gpus, 2).per_gpu((1, 2))
            ('2 workers per GPU', 'workers per GPU: 1 A (16 GiB) x 1 + 1 B (32 GiB) x 2 workers')
        """
        if self.uniform(admitted):
            return f"{admitted[0] if admitted else 0} workers per GPU"
        return f"workers per GPU: {self.describe(admitted)}"
