"""Dask cluster specs that pin workers to GPUs, several per GPU, as plain dicts.

dask-cuda cannot run several workers per GPU (PLATFORM-NOTES.md), so trackset describes a
``distributed.SpecCluster`` of ``Nanny`` workers itself: worker ``i`` gets
``CUDA_VISIBLE_DEVICES=gpus[i % n]`` through ``Nanny(env=...)`` and one ``GPU`` resource.
The specs are pure data with qualified class names as strings, so they can be logged,
serialised and tested without starting anything; ``SpecCluster`` imports the strings itself.
A run starts one such cluster (:func:`run_cluster_spec`) and every task runner of the run
connects to it by address (``engine/run_cluster.py``)::

    cluster = SpecCluster(**run_cluster_spec([0, 1], workers_per_gpu=2, cpu_workers=2))
    DaskTaskRunner(address=cluster.scheduler_address)

Everything binds to 127.0.0.1, otherwise scheduler and workers listen on the host address;
the dashboards too (reach them from another machine through an SSH tunnel, README). The
run's cluster talks TLS (``protocol="tls"``, :mod:`trackset.cluster.security`): another
account on the machine reaches 127.0.0.1 as well.
GPU workers supply ``GPU: 1``, a ``GPU_RANK`` that orders the workers of each GPU and their
``GPU_SHARE`` of it, CPU workers ``CPU: 1`` (:mod:`trackset.cluster.plan`, which also says
what tasks ask for).
Resources are only honoured for annotated (or ``resources=``) submissions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trackset.cluster.plan import CPU, GPU, GPU_RANK, GPU_SHARE, gpu_rank
from trackset.cluster.worker_priority import PRELOAD as PRIORITY_PRELOAD
from trackset.gpu.sizing import DEFAULT_HEADROOM, worker_share

HOST = "127.0.0.1"
"""Where scheduler and workers listen: this machine only, never the host's public address."""

DASHBOARD = f"{HOST}:0"
"""Where a dashboard listens: this machine only, on a free port (many runs may coexist).
Dask reads ``:0`` as every interface."""

# CUDA numbers GPUs fastest-first by default, NVML in PCI bus order; pinning by PCI order
# makes the index in CUDA_VISIBLE_DEVICES the same GPU that NVML sized and samples.
_GPU_ORDER = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def gpu_worker_name(gpu: int, k: int) -> str:
    """Name of the ``k``-th worker on GPU ``gpu``; Dask reports it as the worker's name.

    Examples:
        >>> gpu_worker_name(1, 0)
        'gpu1-w0'
    """
    return f"gpu{gpu}-w{k}"


def _nanny(
    options: dict[str, Any],
    preload: list[str] | None,
    nice: int = 0,
    protocol: str = "tcp",
    interface: str | None = None,
) -> dict[str, Any]:
    """A spec entry for one ``Nanny`` with one thread, ``nice`` lower in priority, on 127.0.0.1
    or on ``interface`` (a SLURM run's, whose jobs on other nodes reach it there).

    One thread per worker: a GPU worker's memory was sized for one video at a time, and
    the fake device accounts memory per process.
    """
    where = {"interface": interface} if interface else {"host": HOST}
    options = {**options, **where, "nthreads": 1, "dashboard_address": DASHBOARD, "protocol": protocol}
    preloads = list(preload or [])
    if nice:  # the others take no arguments: Dask pairs preload_argv with preload by position
        options["preload_argv"] = [[] for _ in preloads] + [["--nice", str(nice)]]
        preloads.append(PRIORITY_PRELOAD)
    if preloads:
        options["preload"] = preloads
    return {"cls": "distributed.Nanny", "options": options}


def _check_env(env: dict[str, str] | None) -> dict[str, str]:
    """A copy of the extra worker environment, refusing what would break GPU pinning."""
    env = dict(env or {})
    if "CUDA_VISIBLE_DEVICES" in env:
        # Overriding it would silently undo the pinning this module exists for.
        raise ValueError("env must not set CUDA_VISIBLE_DEVICES: worker specs pin each worker's GPU")
    return env


def gpu_worker_spec(
    gpus: list[int],
    workers_per_gpu: int,
    *,
    env: dict[str, str] | None = None,
    preload: list[str] | None = None,
    protocol: str = "tcp",
    available_bytes: Mapping[int, int] | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> dict[str, dict[str, Any]]:
    """``workers_per_gpu`` Nanny workers on each GPU of ``gpus``, pinned round-robin.

    Worker ``i`` runs on ``gpus[i % len(gpus)]`` and the dict keeps that order, so the
    first ``n`` workers cover every GPU once and ``SpecCluster.scale`` (which drops the
    last entries) shrinks all GPUs evenly.

    Args:
        gpus: GPU indices (NVML / PCI order), each used once.
        workers_per_gpu: workers per GPU, from :func:`trackset.gpu.sizing.plan_workers_per_gpu`.
        env: extra environment variables for every worker (not ``CUDA_VISIBLE_DEVICES``).
        preload: modules each worker imports at start (``Nanny(preload=...)``).
        protocol: ``tcp`` or ``tls`` (then Dask's config must hold the certificates).
        available_bytes: each GPU's memory the run may use, by index: every worker then offers
            its ``GPU_SHARE`` of it (:func:`~trackset.gpu.sizing.worker_share` with ``headroom``).

    Examples:
        >>> spec = gpu_worker_spec([0, 1], 2)
        >>> list(spec)
        ['gpu0-w0', 'gpu1-w0', 'gpu0-w1', 'gpu1-w1']
        >>> spec["gpu1-w1"]["options"]["env"]["CUDA_VISIBLE_DEVICES"], spec["gpu1-w1"]["options"]["resources"]
        ('1', {'GPU': 1, 'GPU_RANK': 999})
        >>> gpu_worker_spec([0], 2, available_bytes={0: 1000})["gpu0-w1"]["options"]["resources"]
        {'GPU': 1, 'GPU_RANK': 999, 'GPU_SHARE': 450}
    """
    if not gpus:
        raise ValueError("gpus must name at least one GPU")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"gpus must not repeat an index, got {gpus}")
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be at least 1, got {workers_per_gpu}")
    extra = _check_env(env)
    spec = {}
    for k in range(workers_per_gpu):
        for gpu in gpus:
            worker_env = {"CUDA_VISIBLE_DEVICES": str(gpu), **_GPU_ORDER, **extra}
            resources = {GPU: 1, GPU_RANK: gpu_rank(k)}
            if available_bytes is not None:
                resources[GPU_SHARE] = worker_share(available_bytes[gpu], k, headroom)
            spec[gpu_worker_name(gpu, k)] = _nanny(
                {"env": worker_env, "resources": resources}, preload, protocol=protocol
            )
    return spec


def cpu_worker_spec(
    n_workers: int,
    *,
    env: dict[str, str] | None = None,
    preload: list[str] | None = None,
    nice: int = 0,
    protocol: str = "tcp",
    interface: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``n_workers`` CPU-only Nanny workers named ``cpu-w<k>``, ``nice`` lower in priority
    than the GPU workers (:mod:`trackset.cluster.worker_priority`), on 127.0.0.1 or on
    ``interface``.

    They see no GPU (``CUDA_VISIBLE_DEVICES=""``): a CPU stage that touches CUDA by
    accident would otherwise put a context on GPU 0 and eat memory the GPU workers were
    sized to use.

    Examples:
        >>> spec = cpu_worker_spec(2)
        >>> list(spec), spec["cpu-w0"]["options"]["env"], spec["cpu-w0"]["options"]["resources"]
        (['cpu-w0', 'cpu-w1'], {'CUDA_VISIBLE_DEVICES': ''}, {'CPU': 1})
        >>> options = cpu_worker_spec(1, preload=["mine"], nice=10)["cpu-w0"]["options"]
        >>> options["preload"], options["preload_argv"]
        (['mine', 'trackset.cluster.worker_priority'], [[], ['--nice', '10']])
    """
    if n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    worker_env = {"CUDA_VISIBLE_DEVICES": "", **_check_env(env)}
    return {
        f"cpu-w{k}": _nanny({"env": dict(worker_env), "resources": {CPU: 1}}, preload, nice, protocol, interface)
        for k in range(n_workers)
    }


def scheduler_spec(protocol: str = "tcp") -> dict[str, Any]:
    """A scheduler on 127.0.0.1 with its dashboard on 127.0.0.1 too, on a free port.

    Examples:
        >>> scheduler_spec("tls")["options"]
        {'host': '127.0.0.1', 'dashboard_address': '127.0.0.1:0', 'protocol': 'tls'}
    """
    options = {"host": HOST, "dashboard_address": DASHBOARD, "protocol": protocol}
    return {"cls": "distributed.Scheduler", "options": options}


def run_cluster_spec(
    gpus: list[int],
    workers_per_gpu: int,
    cpu_workers: int,
    *,
    env: dict[str, str] | None = None,
    preload: list[str] | None = None,
    cpu_nice: int = 0,
    protocol: str = "tcp",
    available_bytes: Mapping[int, int] | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> dict[str, Any]:
    """``SpecCluster`` arguments of the one cluster a run starts on this machine.

    ``cpu_workers`` CPU workers for the CPU stages (at ``cpu_nice``) and ``workers_per_gpu``
    pinned workers on each GPU (the most a GPU stage may use there); a stage is sized by
    restricting its tasks to some of them (:mod:`trackset.cluster.plan`), never by
    restarting the cluster. ``protocol="tls"`` takes the certificates from Dask's config
    (:func:`trackset.cluster.security.temporary_tls_config`).

    Examples:
        >>> spec = run_cluster_spec([0, 1], 2, 1)
        >>> sorted(spec), list(spec["workers"])
        (['scheduler', 'workers'], ['cpu-w0', 'gpu0-w0', 'gpu1-w0', 'gpu0-w1', 'gpu1-w1'])
    """
    workers = cpu_worker_spec(cpu_workers, env=env, preload=preload, nice=cpu_nice, protocol=protocol)
    if gpus:
        workers |= gpu_worker_spec(
            gpus,
            workers_per_gpu,
            env=env,
            preload=preload,
            protocol=protocol,
            available_bytes=available_bytes,
            headroom=headroom,
        )
    return {"workers": workers, "scheduler": scheduler_spec(protocol)}
