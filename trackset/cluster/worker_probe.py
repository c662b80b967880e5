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
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from distributed import Worker, WorkerPlugin

import trackset
from trackset.cluster.plan import GPU_RANK, GPU_SHARE, RANK_TOP
from trackset.config.settings import ClusterSettings
from trackset.gpu.fake_device import ledger_dir_for
from trackset.gpu.inventory import GpuInfo, detect_inventory
from trackset.gpu.sizing import worker_share


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


def path_problems(readable: list[str], writable: list[str]) -> list[str]:
    """What this process cannot do with the run's folders (they must be shared storage).

    Examples:
        >>> path_problems(["/no/such/videos"], [])
        ['cannot see /no/such/videos']
    """
    problems = []
    for folder, mode, verb in [(p, os.R_OK | os.X_OK, "read") for p in readable] + [
        (p, os.R_OK | os.W_OK | os.X_OK, "read and write") for p in writable
    ]:
        if not Path(folder).is_dir():
            problems.append(f"cannot see {folder}")
        elif not os.access(folder, mode):
            problems.append(f"cannot {verb} {folder}")
    return problems


def api_problem(api_url: str, context: ssl.SSLContext | None = None, timeout_s: float = 5.0) -> str:
    """Why this process cannot reach the Prefect API at ``api_url``, or "" when it can.

    Args:
        api_url: the API's URL, ``http://`` or ``https://``.
        context: what an ``https://`` API's certificate is checked against: the one Prefect's
            own clients in this process use; None: the system's CAs.
        timeout_s: seconds to wait for an answer.
    """
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s, context=context) as answer:
            return "" if answer.status == 200 else f"the Prefect API at {api_url} answered {answer.status}"
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, ssl.SSLCertVerificationError):
            return (
                f"does not trust the certificate of the Prefect API at {api_url} ({reason.verify_message}): give it "
                "the server's CA as PREFECT_API_SSL_CERT_FILE, and dial a name the certificate holds (README, "
                "'Several machines')"
            )
        return f"cannot reach the Prefect API at {api_url} ({exc})"


def describe_worker(
    readable: list[str], writable: list[str], api_url: str, api_context: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """This worker's host, pid, GPU and trackset version, and what stops it working for the run:
    folders it cannot see (``readable``, ``writable``) and the flow's Prefect API out of reach
    (``api_context``: see :func:`api_problem`)."""
    problems = path_problems(readable, writable)
    if api_url:
        problem = api_problem(api_url, api_context)
        if problem:
            problems.append(problem)
    gpu = visible_gpu()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu": gpu,
        "gpu_uuid": gpu_uuid(gpu) if gpu is not None else None,
        "version": trackset.__version__,
        "problems": problems,
    }


def gpu_uuid(index: int) -> str | None:
    """The NVML UUID of GPU ``index`` as this process sees it; None without NVML (fake GPUs).

    Two SLURM jobs on one host each see their own GPU as index 0: the UUID tells them apart.
    """
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no driver: fake GPUs are told apart by index
        return None
    try:
        uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
        return uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


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
    """Gives each GPU worker of a cluster trackset did not start its ``GPU_RANK`` resource and
    its ``GPU_SHARE`` (:func:`~trackset.gpu.sizing.worker_share` of its GPU as it is now).

    Registered on the scheduler, so a worker that restarts (its Nanny brings it back after
    a crash) gets its rank again; a worker that joins later and is not named here gets none
    and takes no GPU task until the run's next look at its workers (each GPU stage's start)
    ranks it. The workers of a run's SLURM jobs rank themselves as they start
    (:mod:`trackset.cluster.gpu_worker`) and need none of this.
    """

    name = "trackset-gpu-ranks"

    def __init__(self, ranks: dict[str, int], cluster: ClusterSettings, work_dir: str) -> None:
        self.ranks = dict(ranks)
        self.cluster = cluster
        self.work_dir = work_dir

    async def setup(self, worker: Worker) -> None:
        rank = self.ranks.get(str(worker.name))
        if rank is not None:
            available = current_gpu(self.cluster, self.work_dir).available_bytes
            share = worker_share(available, RANK_TOP - rank, self.cluster.headroom)
            await worker.set_resources(**{GPU_RANK: rank, GPU_SHARE: share})
