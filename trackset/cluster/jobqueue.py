"""Arguments for dask-jobqueue's ``SLURMCluster`` that start the GPU workers trackset expects.

One SLURM job per GPU (``--gres=gpu:1``), ``workers_per_gpu`` worker processes in it with
one thread each, every one offering ``GPU=1``. SLURM pins the job to its GPU
(``CUDA_VISIBLE_DEVICES``), so all the job's workers share that GPU and trackset, which
tells GPUs apart by their NVML UUID, sizes and ranks them like any other workers
(:mod:`trackset.cluster.plan`). Pass the cluster's ``scheduler_address`` to trackset as
``cluster.scheduler_address``, with the same ``cluster.tls_dir``::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(**slurm_gpu_workers(workers_per_gpu=2, memory="64GB", tls_dir="~/.config/trackset/tls"))
    cluster.scale(jobs=8)  # eight GPUs

The jobs run on other machines, so every comm is TLS with the certificates of
``trackset secrets`` (:mod:`trackset.cluster.security`), which the jobs read from the shared
filesystem; the dashboards listen on each host's loopback only (an SSH tunnel reaches the
scheduler's, README).

Examples:
    >>> kwargs = slurm_gpu_workers(workers_per_gpu=2, memory="64GB", tls_dir="/s/tls")
    >>> kwargs["processes"], kwargs["job_extra_directives"], kwargs["worker_extra_args"]
    (2, ['--gres=gpu:1'], ['--resources', 'GPU=1', '--dashboard-address', '127.0.0.1:0'])
    >>> kwargs["security"].require_encryption, kwargs["security"].tls_worker_key
    (True, '/s/tls/key.pem')
    >>> kwargs["scheduler_options"]
    {'dashboard_address': '127.0.0.1:8787'}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackset.cluster.security import TlsFiles


def slurm_gpu_workers(
    workers_per_gpu: int, memory: str, tls_dir: str | Path, walltime: str = "24:00:00", queue: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of ``SLURMCluster`` for jobs of one GPU and ``workers_per_gpu`` workers,
    talking TLS with the certificates in ``tls_dir`` (``trackset secrets DIR`` makes them)."""
    from distributed.security import Security

    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be at least 1, got {workers_per_gpu}")
    files = TlsFiles.in_dir(Path(tls_dir).expanduser())
    ca, cert, key = (str(path) for path in files.all())
    kwargs: dict[str, Any] = {
        "cores": workers_per_gpu,  # one thread per worker: a worker's memory was sized for one video
        "processes": workers_per_gpu,
        "memory": memory,
        "walltime": walltime,
        "job_extra_directives": ["--gres=gpu:1"],
        "worker_extra_args": ["--resources", "GPU=1", "--dashboard-address", "127.0.0.1:0"],
        # Every role shows the same certificate; dask-jobqueue hands the worker's to each job.
        "security": Security(
            require_encryption=True,
            tls_ca_file=ca,
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
        ),
        # dask-jobqueue's default is ":8787", every interface.
        "scheduler_options": {"dashboard_address": "127.0.0.1:8787"},
    }
    if queue is not None:
        kwargs["queue"] = queue
    return kwargs
