"""What the flow asks every Dask worker about itself (run there with ``Client.run``).

A cluster may be started by trackset on this machine or by someone else on several hosts
(``dask worker`` by hand, dask-jobqueue, dask-kubernetes). Either way the flow learns from
the workers themselves which GPU each one is pinned to and how much of it is free, so
profiling, sizing and the out-of-memory shrink work the same on both.

These functions run inside worker processes: keep them importable without Prefect and
cheap, and read ``CUDA_VISIBLE_DEVICES`` at call time (the Nanny sets it after import).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from distributed import Worker, WorkerPlugin

import trackset
from trackset.cluster_plan import GPU_RANK
from trackset.fake_device import ledger_dir_for
from trackset.gpu_inventory import GpuInfo, detect_inventory
from trackset.settings import ClusterSettings


def visible_gpu() -> int | None:
    """This process's GPU index from ``CUDA_VISIBLE_DEVICES``; None for a CPU worker.

    Examples:
        >>> from unittest.mock import patch
        >>> with patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "2"}):
        ...     visible_gpu()
        2
        >>> with patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):
        ...     visible_gpu() is None
        True
    """
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None or not value.strip():
        return None
    first = value.split(",")[0].strip()
    return int(first) if first.isdigit() else None


def describe_worker(work_dir: str) -> dict[str, Any]:
    """This worker's host, pid, GPU, trackset version, Prefect API and view of the work dir."""
    folder = Path(work_dir)
    if not folder.is_dir():
        work_dir_problem = f"cannot see the work directory {work_dir}"
    elif not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        work_dir_problem = f"cannot read and write the work directory {work_dir}"
    else:
        work_dir_problem = ""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu": visible_gpu(),
        "version": trackset.__version__,
        "api_url": os.environ.get("PREFECT_API_URL", ""),
        "work_dir_problem": work_dir_problem,
    }


def current_gpu(cluster: ClusterSettings, work_dir: str) -> GpuInfo:
    """This worker's GPU as it is now: NVML where there is a driver, else the fake inventory.

    NVML numbers GPUs whatever ``CUDA_VISIBLE_DEVICES`` says, so the visible index is the
    NVML index (the local worker specs pin with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``).
    """
    index = visible_gpu()
    if index is None:
        raise ValueError("current_gpu asked of a worker without a GPU (CUDA_VISIBLE_DEVICES is unset or empty)")
    inventory = detect_inventory(cluster.model_copy(update={"gpus": "auto"}), ledger_dir_for(Path(work_dir)))
    try:
        return inventory.gpu(index)
    finally:
        inventory.close()


class GpuRanks(WorkerPlugin):
    """Gives each GPU worker of a cluster trackset did not start its ``GPU_RANK`` resource.

    Registered on the scheduler, so a worker that restarts (its Nanny brings it back after
    a crash) gets its rank again; a worker that joins later and is not named here gets none
    and takes no GPU task until the next run ranks it.
    """

    name = "trackset-gpu-ranks"

    def __init__(self, ranks: dict[str, int]) -> None:
        self.ranks = dict(ranks)

    async def setup(self, worker: Worker) -> None:
        rank = self.ranks.get(str(worker.name))
        if rank is not None:
            await worker.set_resources(**{GPU_RANK: rank})
