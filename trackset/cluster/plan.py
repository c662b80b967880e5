"""Which workers of a Dask cluster serve which GPU, and how a stage is held to some of them.

The flow sizes a GPU stage by *restricting* its tasks to the first ``k`` workers of every
GPU, never by starting or stopping processes, so the same code sizes the cluster trackset
starts for a run and one started by someone else. The restriction is a Dask resource, not
a list of worker addresses: a worker killed mid-task comes back from its Nanny under a new
address, and a task held to the old address would wait for it forever.

Every GPU worker supplies ``GPU: 1``, ``GPU_RANK: RANK_TOP - k``, where ``k`` is its
place among its GPU's workers, and ``GPU_SHARE``: the memory it may hold when the first
``k + 1`` workers of its GPU run (:func:`~trackset.gpu.sizing.worker_share`). A task asking
for ``GPU_RANK: RANK_TOP - n + 1`` fits only the first ``n`` workers of each GPU; one asking
for ``n = 1`` is the profiling run, one worker per GPU. A sized task also asks for its
stage's peak as ``GPU_SHARE``, which holds it to as many workers as fit on each GPU by that
GPU's own memory: GPUs of different sizes each get their own number of workers from one
request (``n`` is the most on any of them). ``GPU: 1`` keeps it to one GPU task per worker
at a time. CPU workers supply ``CPU: 1``, which CPU tasks ask for when any worker offers it.

Why a share and not a resource per kind of GPU: a task asks for all of its resources at
once (Dask has no "or"), so a resource per kind would tie each task to one kind and split
every round between kinds ahead of time; a job that left would strand its kind's tasks, and
one of a new kind would get none. With a share, any worker whose GPU has room for the peak
takes the next task, whichever kind it is and whenever it joined.

Examples:
    >>> gpu_task_resources(2), gpu_task_resources(2, need_bytes=10 * 2**30)
    ({'GPU': 1, 'GPU_RANK': 999}, {'GPU': 1, 'GPU_RANK': 999, 'GPU_SHARE': 10737418240})
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
GPU_SHARE = "GPU_SHARE"
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


def gpu_task_resources(per_gpu: int, need_bytes: int = 0) -> dict[str, int]:
    """What a GPU task asks for so it runs only on the first ``per_gpu`` workers of a GPU,
    and of those only on workers whose share of their GPU is at least ``need_bytes`` (0: any)."""
    if not 1 <= per_gpu <= RANK_TOP:
        raise ValueError(f"per_gpu must be in 1..{RANK_TOP}, got {per_gpu}")
    resources = {GPU: 1, GPU_RANK: RANK_TOP - per_gpu + 1}
    if need_bytes > 0:
        resources[GPU_SHARE] = need_bytes
    return resources


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
        """The ``GPU_RANK`` each GPU worker should supply, by worker name.

        A worker that ranked itself as it started (a SLURM job's, :mod:`trackset.cluster.gpu_worker`)
        keeps its rank, unless another worker of its GPU holds the same one; the others get
        the GPU's free ranks in name order, from the first.
        """
        ranks: dict[str, int] = {}
        for group in self.by_gpu.values():
            held: set[int] = set()
            kept = []
            for worker in group:
                rank = worker.resources.get(GPU_RANK)
                if rank is not None and GPU_SHARE in worker.resources and int(rank) not in held:
                    held.add(int(rank))
                    kept.append(worker.name)
                    ranks[worker.name] = int(rank)
            free = (gpu_rank(k) for k in range(RANK_TOP) if gpu_rank(k) not in held)
            for worker in group:
                if worker.name not in kept:
                    ranks[worker.name] = next(free)
        return ranks

    def unranked(self) -> list[ClusterWorker]:
        """GPU workers that do not supply the rank :meth:`ranks` gives them, or no share of their GPU."""
        ranks = self.ranks()
        return [
            w
            for group in self.by_gpu.values()
            for w in group
            if w.resources.get(GPU_RANK) != ranks[w.name] or GPU_SHARE not in w.resources
        ]

    def shares(self) -> dict[GpuKey, tuple[int, ...]]:
        """Each GPU's workers' ``GPU_SHARE`` in rank order (first worker first); a worker
        without one counts as none (it takes no sized task)."""
        return {
            gpu: tuple(
                int(w.resources.get(GPU_SHARE, 0)) for w in sorted(group, key=lambda w: -w.resources.get(GPU_RANK, -1))
            )
            for gpu, group in self.by_gpu.items()
        }

    def names(self) -> dict[GpuKey, tuple[str, ...]]:
        """Each GPU's workers' names in rank order (first worker first)."""
        return {
            gpu: tuple(w.name for w in sorted(group, key=lambda w: -w.resources.get(GPU_RANK, -1)))
            for gpu, group in self.by_gpu.items()
        }

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
