"""The SLURM jobs of ``cluster.kind: slurm``: dask-jobqueue's arguments, and how many jobs to hold.

**The jobs.** :func:`slurm_gpu_workers` gives ``SLURMCluster`` the arguments of a job of
``gpus_per_job`` GPUs (``--gres=gpu:N``) running ``workers_per_gpu`` single-thread worker
processes per GPU. Each process pins, ranks and sizes itself as it starts
(:mod:`trackset.cluster.gpu_worker`), so workers of a job that starts mid-run take GPU work
at once, and it retires between tasks before the job's walltime. The jobs run on other
machines, so every comm is TLS with the certificates of ``trackset secrets``
(:mod:`trackset.cluster.security`), which the jobs read from the shared filesystem; the
dashboards listen on each host's loopback only (an SSH tunnel reaches the scheduler's,
README). :func:`run_slurm_kwargs` fills them in from a run's settings.

**How many.** The wave planner says how many videos of GPU work the current and the next
wave hold (:class:`~trackset.scheduling.commands.GpuWork`); :func:`jobs_for` turns that into
jobs, and :func:`reconcile` into what to submit and what to give back, from the jobs as
``squeue`` and the scheduler see them. The engine (``engine/slurm_jobs.py``) runs ``sbatch``
and ``scancel`` through dask-jobqueue.

Examples:
    >>> kwargs = slurm_gpu_workers(workers_per_gpu=2, memory="64GB", tls_dir="/s/tls")
    >>> kwargs["processes"], kwargs["job_extra_directives"], kwargs["worker_extra_args"][:4]
    (2, ['--gres=gpu:1'], ['--resources', 'GPU=1', '--dashboard-address', '127.0.0.1:0'])
    >>> kwargs["security"].require_encryption, kwargs["security"].tls_worker_key
    (True, '/s/tls/key.pem')
    >>> kwargs["scheduler_options"]
    {'dashboard_address': '127.0.0.1:8787'}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trackset.cluster.gpu_worker import PRELOAD
from trackset.cluster.security import TlsFiles
from trackset.config.settings import ClusterSettings


def slurm_gpu_workers(
    workers_per_gpu: int,
    memory: str,
    tls_dir: str | Path,
    walltime: str = "24:00:00",
    queue: str | None = None,
    *,
    gpus_per_job: int = 1,
    preload: Sequence[str] = (),
    preload_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Keyword arguments of ``SLURMCluster`` for jobs of ``gpus_per_job`` GPUs and
    ``workers_per_gpu`` workers per GPU, talking TLS with the certificates in ``tls_dir``
    (``trackset secrets DIR`` makes them); ``preload``: more ``dask worker --preload`` modules
    (``cluster.worker_preload``), run before trackset's; ``preload_args``: the options of
    :mod:`trackset.cluster.gpu_worker` beyond the job's shape."""
    from distributed.security import Security

    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be at least 1, got {workers_per_gpu}")
    files = TlsFiles.in_dir(Path(tls_dir).expanduser())
    ca, cert, key = (str(path) for path in files.all())
    processes = workers_per_gpu * gpus_per_job
    kwargs: dict[str, Any] = {
        "cores": processes,  # one thread per worker: a worker's memory was sized for one video
        "processes": processes,
        "memory": memory,
        "walltime": walltime,
        "job_extra_directives": [f"--gres=gpu:{gpus_per_job}"],
        "worker_extra_args": [
            "--resources",
            "GPU=1",
            "--dashboard-address",
            "127.0.0.1:0",
            *(arg for module in preload for arg in ("--preload", module)),
            # Dask hands the options it does not know to every preload; only a click command
            # (this one) reads them, the others (plain dask_setup(worker)) ignore them.
            "--preload",
            PRELOAD,
            "--job-workers",
            str(processes),
            *preload_args,
        ],
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


def run_slurm_kwargs(cluster: ClusterSettings, work_dir: Path, prologue: Sequence[str] = ()) -> dict[str, Any]:
    """``SLURMCluster`` arguments for a run of ``cluster.kind: slurm`` (``cluster.slurm``).

    ``prologue``: shell lines the engine adds before the settings' own (the run's Prefect API
    and Dask settings, as ``export`` lines: never a secret, the job script is readable).
    The scheduler listens on ``cluster.slurm.interface`` (the jobs connect to it), its
    dashboard on 127.0.0.1; a worker's dashboard on its host's 127.0.0.1.

    Raises:
        ValueError: ``cluster.tls_dir`` is not set (the settings refuse that already).
    """
    slurm = cluster.slurm
    if cluster.tls_dir is None:
        raise ValueError("cluster.kind slurm needs cluster.tls_dir")
    per_gpu = slurm.workers_per_gpu or cluster.max_workers_per_gpu
    preload = [
        "--headroom",
        str(cluster.headroom),
        "--retire-after-s",
        str(slurm.walltime_s - slurm.retire_before_walltime_s),
        "--retire-stagger-s",
        str(slurm.retire_stagger_s),
        "--work-dir",
        str(work_dir),
    ]
    for fake in cluster.fake_gpus:
        preload += ["--fake-gpu-gb", str(fake.memory_gb)]
    kwargs = slurm_gpu_workers(
        per_gpu,
        slurm.memory,
        cluster.tls_dir,
        slurm.walltime,
        slurm.partition,
        gpus_per_job=slurm.gpus_per_job,
        preload=cluster.worker_preload,
        preload_args=preload,
    )
    gres = f"gpu:{slurm.gpu_type}:{slurm.gpus_per_job}" if slurm.gpu_type else f"gpu:{slurm.gpus_per_job}"
    kwargs["job_extra_directives"] = [f"--gres={gres}", *slurm.job_directives]
    kwargs["job_script_prologue"] = [*prologue, *slurm.job_prologue]
    kwargs["interface"] = slurm.interface
    kwargs["scheduler_options"] = {"interface": slurm.interface, "dashboard_address": "127.0.0.1:0"}
    kwargs["job_cpu"] = slurm.cpus_per_job or kwargs["processes"]
    kwargs["log_directory"] = str(slurm.log_dir or work_dir / "slurm")
    kwargs["name"] = "slurm"
    kwargs["job_name"] = "trackset-gpu"
    if slurm.account is not None:
        kwargs["account"] = slurm.account
    return kwargs


def jobs_for(videos: int, gpus_per_job: int, videos_per_gpu: int, max_jobs: int) -> int:
    """The jobs worth holding for ``videos`` videos of GPU work: a GPU for every task of
    ``videos_per_gpu`` videos (``cluster.gpu_task_videos``), in jobs of ``gpus_per_job``,
    at most ``max_jobs``; none for none.

    A GPU that would get less than one task is not worth a job: loading the stage's models
    costs it as much as a task (README, "Building in waves").

    Examples:
        >>> jobs_for(500, 1, 10, 8), jobs_for(30, 1, 10, 8), jobs_for(30, 2, 10, 8), jobs_for(1, 1, 10, 8)
        (8, 3, 2, 1)
        >>> jobs_for(0, 1, 10, 8)
        0
    """
    return min(max_jobs, math.ceil(math.ceil(videos / max(videos_per_gpu, 1)) / gpus_per_job))


JobState = Literal["pending", "running", "gone"]


@dataclass(frozen=True)
class Job:
    """One of the run's jobs as ``squeue`` and the scheduler see it.

    Attributes:
        name: its name in dask-jobqueue's spec (its workers' names start with it).
        state: pending (queued), running, or gone (ended: walltime, ``scancel``, preemption,
            node failure, or it never started).
        workers: its workers connected to the scheduler now.
        joined: a worker of it has connected at some time.
        busy: a worker of it runs or holds a task now.
    """

    name: str
    state: JobState
    workers: int = 0
    joined: bool = False
    busy: bool = False

    @property
    def leaving(self) -> bool:
        """Ended, or running with every worker gone (they retired before the walltime)."""
        return self.state == "gone" or (self.state == "running" and self.joined and not self.workers)


@dataclass(frozen=True)
class JobChanges:
    """What to do to the jobs (:func:`reconcile`).

    Attributes:
        submit: jobs to submit.
        cancel: jobs to give back now: queued ones first, then idle running ones.
        forget: jobs that ended or are ending: drop them from the spec (``scancel`` is harmless).
        never_joined: of those, jobs that ended without a worker connecting: a job that
            cannot start its workers (see its error file).
    """

    submit: int = 0
    cancel: tuple[str, ...] = ()
    forget: tuple[str, ...] = ()
    never_joined: tuple[str, ...] = ()


def reconcile(jobs: Sequence[Job], target: int) -> JobChanges:
    """Bring the jobs to ``target``: submit the missing, give back the extra.

    A job that is ending does not count: its replacement is submitted now. Extra jobs are
    given back queued ones first (newest first: they would start last), then running ones
    whose workers hold no task; a job whose workers are busy stays until they are done (the
    next look gives it back), so no task is lost to scaling down.

    Examples:
        >>> jobs = [Job("s-0", "running", 2, True, busy=True), Job("s-1", "running", 2, True), Job("s-2", "pending")]
        >>> reconcile(jobs, 1)
        JobChanges(submit=0, cancel=('s-2', 's-1'), forget=(), never_joined=())
        >>> reconcile(jobs, 0).cancel  # the busy one stays until its task ends
        ('s-2', 's-1')
        >>> reconcile([Job("s-0", "gone", 0, True), Job("s-1", "gone")], 2)
        JobChanges(submit=2, cancel=(), forget=('s-0', 's-1'), never_joined=('s-1',))
    """
    forget = tuple(job.name for job in jobs if job.leaving)
    never = tuple(job.name for job in jobs if job.state == "gone" and not job.joined)
    alive = [job for job in jobs if not job.leaving]
    if len(alive) <= target:
        return JobChanges(target - len(alive), (), forget, never)
    extra = len(alive) - target
    queued = [job.name for job in reversed(alive) if job.state == "pending"]
    idle = [job.name for job in reversed(alive) if job.state == "running" and not job.busy]
    return JobChanges(0, tuple((queued + idle)[:extra]), forget, never)
