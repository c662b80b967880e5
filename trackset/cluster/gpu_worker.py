"""Dask preload of a SLURM job's GPU workers: each pins, ranks and sizes itself as it starts,
and retires between two tasks before the job's walltime.

A job of ``cluster.kind: slurm`` runs one ``dask worker --nworkers N`` command, N = workers
per GPU x GPUs per job, all processes seeing the job's GPUs in ``CUDA_VISIBLE_DEVICES``
(SLURM sets it). Each worker process runs :func:`dask_setup` before it registers with the
scheduler, so it joins already able to take GPU work, whenever it joins:

- **Pin.** The ``p``-th process of the job (its name ends in ``-p``) takes the job's GPU
  ``p mod G`` alone (``CUDA_VISIBLE_DEVICES`` before anything touches CUDA), so the job's
  GPUs get their workers in turn; CUDA numbers them in PCI bus order, as NVML does and as
  SLURM's GRES do, so the GPU CUDA runs on is the one NVML sizes (``CUDA_DEVICE_ORDER``).
- **Rank.** Its place on that GPU is ``p div G``, its ``GPU_RANK`` (:mod:`trackset.cluster.plan`).
  No other job shares a SLURM GPU, so a job's workers rank their GPU alone; a worker of a job
  that starts mid-run needs nobody's ranking and takes GPU tasks as soon as it registers
  (a worker ranked after registering would not: Dask looks for work a task was waiting on
  only when a worker joins, not when its resources change).
- **Size.** Its ``GPU_SHARE`` is :func:`~trackset.gpu.sizing.worker_share` of what its GPU has
  available as it starts (NVML, else the fake GPUs of ``--fake-gpu-gb``), so one task request
  sizes every GPU of the cluster by its own memory.
- **Retire.** ``--retire-after-s`` after it starts (less up to ``--retire-stagger-s``, the same
  for every worker of a job and different between jobs: the job's id seeds it), the worker
  stops taking tasks, finishes the one it runs, hands its results to other workers and
  leaves with its Nanny; once all its processes have left, the job ends and SLURM frees its
  GPUs. Distributed's own ``--lifetime`` would close the worker whatever it runs (Dask's
  retirement moves a worker's data, not its running task), losing a task of up to
  ``cluster.gpu_task_videos`` videos; this one loses none.

Dask passes a ``dask worker`` command's arguments it does not know to its click-configurable
preload, so these options follow ``--preload trackset.cluster.gpu_worker`` on the command line
(:func:`trackset.cluster.jobqueue.slurm_gpu_workers` writes them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from typing import Any

import click
from distributed import Worker
from distributed.core import Status

from trackset.cluster.plan import GPU, GPU_RANK, GPU_SHARE, gpu_rank
from trackset.cluster.worker_probe import current_gpu
from trackset.config.settings import ClusterSettings, FakeGpu
from trackset.gpu.sizing import DEFAULT_HEADROOM, worker_share

PRELOAD = "trackset.cluster.gpu_worker"
"""The module name to give ``dask worker --preload``."""

PCI_BUS_ID = "PCI_BUS_ID"

logger = logging.getLogger(__name__)


def place_in_job(name: str, nworkers: int) -> int:
    """The place of a worker among its ``dask worker`` command's processes, from its name:
    Dask names them ``<name>-0`` to ``<name>-<N-1>``, and a single one ``<name>``.

    Examples:
        >>> place_in_job("slurm-3-2", 4), place_in_job("slurm-3", 1)
        (2, 0)
        >>> place_in_job("slurm-3-x", 4)
        Traceback (most recent call last):
        ...
        ValueError: worker name 'slurm-3-x' does not end in its place among 4 processes (-0 to -3)
    """
    if nworkers == 1:
        return 0
    _, _, tail = str(name).rpartition("-")
    if not tail.isdigit() or int(tail) >= nworkers:
        raise ValueError(
            f"worker name {name!r} does not end in its place among {nworkers} processes (-0 to -{nworkers - 1})"
        )
    return int(tail)


def pin(place: int, job_gpus: str) -> tuple[str, int]:
    """The GPU (as ``CUDA_VISIBLE_DEVICES`` names it) and the place on it of the job's
    ``place``-th worker, the job's GPUs being ``job_gpus`` (SLURM's ``CUDA_VISIBLE_DEVICES``).

    Examples:
        >>> [pin(p, "2,3") for p in range(4)]  # two GPUs, two workers each: in turn
        [('2', 0), ('3', 0), ('2', 1), ('3', 1)]
        >>> pin(1, "0")
        ('0', 1)
        >>> pin(0, "")
        Traceback (most recent call last):
        ...
        ValueError: the job has no GPU (CUDA_VISIBLE_DEVICES is empty): ask for one with --gres
    """
    gpus = [gpu.strip() for gpu in job_gpus.split(",") if gpu.strip()]
    if not gpus:
        raise ValueError("the job has no GPU (CUDA_VISIBLE_DEVICES is empty): ask for one with --gres")
    return gpus[place % len(gpus)], place // len(gpus)


def retirement_delay_s(after_s: float, stagger_s: float, job_id: str) -> float:
    """Seconds from a worker's start to its retirement: ``after_s`` less a part of
    ``stagger_s`` drawn once per job (seeded by its id), never below 0.

    Examples:
        >>> retirement_delay_s(3600, 0, "17")
        3600.0
        >>> a, b = retirement_delay_s(3600, 300, "17"), retirement_delay_s(3600, 300, "18")
        >>> 3300 <= a <= 3600 and 3300 <= b <= 3600 and a != b, a == retirement_delay_s(3600, 300, "17")
        (True, True)
    """
    return max(0.0, after_s - random.Random(job_id).uniform(0, stagger_s))


async def retire(worker: Worker, reason: str, poll_s: float = 0.5) -> None:
    """Take no new task, finish the running one, hand the results over, leave (module docstring).

    ``closing_gracefully`` is the status Dask's own retirement gives a worker: the scheduler
    assigns it nothing more and the worker starts nothing more, while the task its thread
    runs goes on. Once none runs, the scheduler's ``retire_workers`` copies the results only
    it holds to other workers and removes it (a task sent to it meanwhile, never started,
    goes elsewhere), and the worker closes with its Nanny, which does not start it again.
    """
    logger.info("worker %s retires: %s", worker.name, reason)
    worker.status = Status.closing_gracefully
    while worker.state.executing_count:
        await asyncio.sleep(poll_s)
    await worker.scheduler.retire_workers(
        workers=[worker.address], close_workers=False, remove=True, stimulus_id=f"trackset-retire-{worker.address}"
    )
    await worker.close(nanny=True, reason=f"trackset: {reason}")


def offer(worker: Worker, resources: dict[str, float]) -> None:
    """Give a worker that has not registered yet these resources: the scheduler learns them
    with the worker itself, as those of ``dask worker --resources``."""
    worker.state.total_resources.update(resources)
    worker.state.available_resources.update(resources)


@click.command()
@click.option("--job-workers", type=click.IntRange(1), default=1, help="the job's worker processes (--nworkers)")
@click.option("--headroom", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_HEADROOM)
@click.option("--retire-after-s", type=click.FloatRange(0), default=0.0, help="0: never retire")
@click.option("--retire-stagger-s", type=click.FloatRange(0), default=0.0)
@click.option("--work-dir", default="", help="the run's work directory (the fake GPUs' ledger)")
@click.option("--fake-gpu-gb", type=click.FloatRange(0, min_open=True), multiple=True, help="fake GPUs' memory")
async def dask_setup(
    worker: Worker,
    job_workers: int,
    headroom: float,
    retire_after_s: float,
    retire_stagger_s: float,
    work_dir: str,
    fake_gpu_gb: tuple[float, ...],
) -> None:
    """Pin, rank and size this worker, and schedule its retirement (module docstring)."""
    gpu, place = pin(place_in_job(str(worker.name), job_workers), os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["CUDA_DEVICE_ORDER"] = PCI_BUS_ID
    cluster = ClusterSettings(fake_gpus=[FakeGpu(memory_gb=gb) for gb in fake_gpu_gb] or ClusterSettings().fake_gpus)
    available = current_gpu(cluster, work_dir).available_bytes
    offer(worker, {GPU: 1, GPU_RANK: gpu_rank(place), GPU_SHARE: worker_share(available, place, headroom)})
    if retire_after_s:
        job = os.environ.get("SLURM_JOB_ID", str(os.getpid()))
        delay = retirement_delay_s(retire_after_s, retire_stagger_s, job)
        worker.loop.call_later(
            delay, _start_retiring, worker, f"its job's walltime is near ({delay:.0f} s after start)"
        )


_RETIRING: set[asyncio.Future[Any]] = set()  # asyncio keeps only weak references to its tasks


def _start_retiring(worker: Worker, reason: str) -> None:
    if worker.status in (Status.running, Status.paused):
        future = asyncio.ensure_future(retire(worker, reason))
        _RETIRING.add(future)
        future.add_done_callback(_RETIRING.discard)
