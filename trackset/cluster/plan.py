"""Which workers of a Dask cluster serve which GPU, and how a stage is held to some of them.

The flow sizes a GPU stage by *restricting* its tasks to the first ``k`` workers of every
GPU, never by starting or stopping processes, so the same code sizes the cluster trackset
starts for a run and one started by someone else. The restriction is a Dask resource, not
a list of worker addresses: a worker killed mid-task comes back from its Nanny under a new
address, and a task held to the old address would wait for it forever.

Every GPU worker supplies ``GPU: 1`` and ``GPU_RANK: RANK_TOP - k``, where ``k`` is its
place among its GPU's workers (by name). A task asking for ``GPU_RANK: RANK_TOP - n + 1``
fits only the first ``n`` workers of each GPU; one asking for ``n = 1`` is the profiling
run, one worker per GPU. ``GPU: 1`` keeps it to one GPU task per worker at a time. CPU
workers supply ``CPU: 1``, which CPU tasks ask for when any worker offers it.

Examples:
    >>> gpu_task_resources(2)
    {'GPU': 1, 'GPU_RANK': 999}
    >>> plan = ClusterPlan([
    ...     ClusterWorker("tcp://a:1", "gpu0-w1", "a", 0, {"GPU": 1, "GPU_RANK": 999}),
    ...     ClusterWorker("tcp://a:2", "gpu0-w0", "a", 0, {"GPU": 1, "GPU_RANK": 1000}),
    ...     ClusterWorker("tcp://a:3", "gpu1-w0", "a", 1, {"GPU": 1, "GPU_RANK": 1000}),
    ...     ClusterWorker("tcp://a:4", "cpu-w0", "a", None, {"CPU": 1}),
    ... ])
    >>> plan.gpus, plan.slots_per_gpu, plan.cpu_task_resources
    ([GpuKey(host='a', index=0, uuid=None), GpuKey(host='a', index=1, uuid=None)], 1, {'CPU': 1})
"""

from __future__ import annotations

from dataclasses import dataclass, field

GPU = "GPU"
GPU_RANK = "GPU_RANK"
CPU = "CPU"
RANK_TOP = 1000
"""Rank of the first worker of a GPU; far above any number of workers one GPU can hold."""


def gpu_rank(k: int) -> int:
    """The ``GPU_RANK`` the ``k``-th worker of a GPU supplies (``k`` from 0).

    Examples:
        >>> gpu_rank(0), gpu_rank(3)
        (1000, 997)
    """
    if not 0 <= k < RANK_TOP:
        raise ValueError(f"worker place {k} out of range 0..{RANK_TOP - 1}")
    return RANK_TOP - k


def gpu_task_resources(per_gpu: int) -> dict[str, int]:
    """What a GPU task asks for so it runs only on the first ``per_gpu`` workers of a GPU."""
    if not 1 <= per_gpu <= RANK_TOP:
        raise ValueError(f"per_gpu must be in 1..{RANK_TOP}, got {per_gpu}")
    return {GPU: 1, GPU_RANK: RANK_TOP - per_gpu + 1}


@dataclass(frozen=True, order=True)
class GpuKey:
    """One physical GPU of the cluster: its host, its index there, and its NVML UUID where
    there is NVML (workers of two SLURM jobs on one host may all see their GPU as index 0)."""

    host: str
    index: int
    uuid: str | None = None


@dataclass(frozen=True)
class ClusterWorker:
    """A Dask worker as the flow sees it: where it is, its GPU (None for a CPU worker), its resources."""

    address: str
    name: str
    host: str
    gpu: int | None
    resources: dict[str, float] = field(default_factory=dict)
    gpu_uuid: str | None = None

    @property
    def serves_gpu(self) -> bool:
        """A worker takes GPU tasks when it is pinned to a GPU and offers the ``GPU`` resource."""
        return self.gpu is not None and self.resources.get(GPU, 0) >= 1


class ClusterPlan:
    """The workers of a cluster grouped by GPU."""

    def __init__(self, workers: list[ClusterWorker]) -> None:
        self.workers = sorted(workers, key=lambda w: (w.host, w.name))
        groups: dict[GpuKey, list[ClusterWorker]] = {}
        for worker in self.workers:
            if worker.serves_gpu and worker.gpu is not None:
                groups.setdefault(GpuKey(worker.host, worker.gpu, worker.gpu_uuid), []).append(worker)
        self.by_gpu = dict(sorted(groups.items()))

    @property
    def gpus(self) -> list[GpuKey]:
        return list(self.by_gpu)

    @property
    def single_host(self) -> bool:
        return len({gpu.host for gpu in self.by_gpu}) <= 1

    def ranks(self) -> dict[str, int]:
        """The ``GPU_RANK`` each GPU worker should supply, by worker name."""
        return {w.name: gpu_rank(k) for group in self.by_gpu.values() for k, w in enumerate(group)}

    def unranked(self) -> list[ClusterWorker]:
        """GPU workers that do not supply the rank :meth:`ranks` gives them."""
        ranks = self.ranks()
        return [w for group in self.by_gpu.values() for w in group if w.resources.get(GPU_RANK) != ranks[w.name]]

    @property
    def slots_per_gpu(self) -> int:
        """Workers every GPU has: the most a plan can use per GPU (0 without GPUs)."""
        return min((len(group) for group in self.by_gpu.values()), default=0)

    @property
    def cpu_slots(self) -> int:
        """Workers a CPU task may run on: those offering ``CPU``, else every worker."""
        offering = sum(w.resources.get(CPU, 0) >= 1 for w in self.workers)
        return offering or len(self.workers)

    @property
    def cpu_task_resources(self) -> dict[str, int]:
        """What CPU tasks ask for: ``CPU: 1`` when some worker offers it, else nothing."""
        return {CPU: 1} if any(w.resources.get(CPU, 0) >= 1 for w in self.workers) else {}
