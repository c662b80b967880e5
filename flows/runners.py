"""Task runners for the stages: threads, or Dask clusters of pinned process workers.

A GPU stage's runner is a ``SpecCluster`` of ``Nanny`` workers, worker i pinned to
GPU[i mod n] with ``CUDA_VISIBLE_DEVICES`` and a ``GPU`` resource, or an existing Dask
cluster by address. dask-cuda's ``LocalCUDACluster`` is not used: it names workers per
device and cannot run several workers per GPU, which the memory-based sizing needs
(PLATFORM-NOTES.md). The cluster is passed as ``cluster_class`` + ``cluster_kwargs``, never
as an object, because prefect-dask drops a cluster object when it duplicates the runner for
a flow run.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from trackset.settings import Settings
from trackset.worker_spec import CLUSTER_CLASS, cluster_kwargs, cpu_cluster_kwargs


def worker_env() -> dict[str, str]:
    """Environment every Dask worker needs: the API of the server this flow run reports to.

    Without it, a worker of a flow started without ``PREFECT_API_URL`` (the CLI demo) would
    start a temporary server of its own and record its task runs where nobody looks.
    """
    with get_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url).rstrip("/")}


def cpu_runner(settings: Settings) -> TaskRunner:
    """Runner of the CPU stages: ``cluster.cpu_workers`` threads or Dask process workers."""
    if settings.cluster.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.cluster.cpu_workers)
    if settings.cluster.scheduler_address:
        return DaskTaskRunner(address=settings.cluster.scheduler_address)
    kwargs = cpu_cluster_kwargs(settings.cluster.cpu_workers, env=worker_env(), preload=settings.cluster.worker_preload)
    return DaskTaskRunner(cluster_class=CLUSTER_CLASS, cluster_kwargs=kwargs)


def gpu_runner(settings: Settings, gpus: list[int], workers_per_gpu: int) -> TaskRunner:
    """Runner of a GPU stage with ``workers_per_gpu`` workers pinned to each of ``gpus``."""
    if settings.cluster.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=len(gpus) * workers_per_gpu)
    if settings.cluster.scheduler_address:
        return DaskTaskRunner(address=settings.cluster.scheduler_address)
    kwargs = cluster_kwargs(gpus, workers_per_gpu, env=worker_env(), preload=settings.cluster.worker_preload)
    return DaskTaskRunner(cluster_class=CLUSTER_CLASS, cluster_kwargs=kwargs)
