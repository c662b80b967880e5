"""Arguments for dask-jobqueue's ``SLURMCluster`` that start the GPU workers trackset expects.

One SLURM job per GPU (``--gres=gpu:1``), ``workers_per_gpu`` worker processes in it with
one thread each, every one offering ``GPU=1``. SLURM pins the job to its GPU
(``CUDA_VISIBLE_DEVICES``), so all the job's workers share that GPU and trackset, which
tells GPUs apart by their NVML UUID, sizes and ranks them like any other workers
(:mod:`trackset.cluster.plan`). Pass the cluster's ``scheduler_address`` to trackset as
``cluster.scheduler_address``::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(**slurm_gpu_workers(workers_per_gpu=2, memory="64GB"))
    cluster.scale(jobs=8)  # eight GPUs

Examples:
    >>> kwargs = slurm_gpu_workers(workers_per_gpu=2, memory="64GB")
    >>> kwargs["processes"], kwargs["job_extra_directives"], kwargs["worker_extra_args"]
    (2, ['--gres=gpu:1'], ['--resources', 'GPU=1'])
"""

from __future__ import annotations

from typing import Any


def slurm_gpu_workers(
    workers_per_gpu: int, memory: str, walltime: str = "24:00:00", queue: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``SLURMCluster`` for jobs of one GPU and ``workers_per_gpu`` workers."""
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be at least 1, got {workers_per_gpu}")
    kwargs: dict[str, Any] = {
        "cores": workers_per_gpu,  # one thread per worker: a worker's memory was sized for one video
        "processes": workers_per_gpu,
        "memory": memory,
        "walltime": walltime,
        "job_extra_directives": ["--gres=gpu:1"],
        "worker_extra_args": ["--resources", "GPU=1"],
    }
    if queue is not None:
        kwargs["queue"] = queue
    return kwargs
