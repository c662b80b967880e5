"""A SLURM job's worker pins, ranks and sizes itself before it registers (trackset.cluster.gpu_worker)."""

from __future__ import annotations

import asyncio
import os

from distributed import Client, Scheduler, Worker
from distributed.core import Status

from trackset.cluster.gpu_worker import PRELOAD
from trackset.cluster.plan import GPU_RANK, GPU_SHARE, gpu_rank, gpu_task_resources
from trackset.gpu.sizing import GIB, worker_share


def test_a_worker_that_joins_mid_run_takes_a_waiting_gpu_task_at_once(tmp_path, monkeypatch):
    """A sized GPU task waits on a cluster with no GPU worker; a job's second worker (name
    ``-1``: GPU 1 of a job holding GPUs 0 and 1, first on it) joins and runs it, with nobody
    ranking it, and offers the share its 24 GiB fake GPU gives a first worker."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    argv = ["--job-workers", "2", "--work-dir", str(tmp_path), "--fake-gpu-gb", "16", "--fake-gpu-gb", "24"]

    async def scenario() -> tuple[str, dict[str, float], tuple[str, str]]:
        async with (
            Scheduler(host="127.0.0.1", port=0, dashboard_address=None) as scheduler,
            Client(scheduler.address, asynchronous=True) as client,
        ):
            need = worker_share(24 * GIB, 0) - 1  # only a first worker of a 24 GiB GPU has that much
            future = client.submit(lambda: "ran", resources=gpu_task_resources(1, need), pure=False)
            await asyncio.sleep(0.5)
            assert future.status == "pending"
            async with Worker(
                scheduler.address,
                name="slurm-7-1",
                nthreads=1,
                host="127.0.0.1",
                preload=[PRELOAD],
                preload_argv=argv,
                resources={"GPU": 1},
                dashboard=False,
            ) as worker:
                result = await asyncio.wait_for(future, 30)
                pinned = os.environ["CUDA_VISIBLE_DEVICES"], os.environ["CUDA_DEVICE_ORDER"]
                return result, dict(worker.state.total_resources), pinned

    result, resources, pinned = asyncio.run(scenario())
    assert result == "ran"
    assert pinned == ("1", "PCI_BUS_ID")  # the GPU NVML sizes is the one CUDA runs on
    assert resources == {"GPU": 1, GPU_RANK: gpu_rank(0), GPU_SHARE: 24 * GIB}


def test_a_worker_retires_between_tasks_finishing_the_one_it_runs(tmp_path, monkeypatch):
    """Half a second after it starts (its walltime near), a worker running a 2-second task
    finishes it, takes no new one (the next goes to the other worker) and leaves: the task
    ran once, whole, where Dask's own ``--lifetime`` would have closed the worker inside it."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    argv = ["--work-dir", str(tmp_path), "--retire-after-s", "0.5"]

    def timed(seconds: float) -> tuple[float, float]:
        import time

        start = time.monotonic()
        time.sleep(seconds)
        return start, time.monotonic()

    async def scenario() -> tuple[tuple[float, float], str, list[str], str, str]:
        async with (
            Scheduler(host="127.0.0.1", port=0, dashboard_address=None) as scheduler,
            Client(scheduler.address, asynchronous=True) as client,
            Worker(scheduler.address, name="other", nthreads=1, host="127.0.0.1", dashboard=False) as other,
        ):
            retiring = Worker(
                scheduler.address,
                name="slurm-0",
                nthreads=1,
                host="127.0.0.1",
                preload=[PRELOAD],
                preload_argv=argv,
                dashboard=False,
            )
            await retiring
            long = client.submit(timed, 2.0, workers=[retiring.address], pure=False)
            await asyncio.sleep(1.0)  # retiring since 0.5 s, the long task still running
            after = client.submit(os.getpid, pure=False)
            who = await client.who_has([after]) if await after else {}
            span = await asyncio.wait_for(long, 10)
            for _ in range(50):  # it leaves once its task is done
                if retiring.address not in scheduler.workers and retiring.status == Status.closed:
                    break
                await asyncio.sleep(0.1)
            return span, str(retiring.status), list(scheduler.workers), str(who), other.address

    (start, end), status, left, who, other = asyncio.run(scenario())
    assert end - start >= 2.0  # ran whole
    assert other in who  # the task submitted during retirement went to the other worker
    assert left == [other] and status == "Status.closed"
