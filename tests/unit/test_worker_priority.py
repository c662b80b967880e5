"""CPU workers a run starts yield the cores to the GPU workers: a real Nanny-spawned worker
runs its tasks at the nice value the spec gives, a GPU worker at the parent's."""

from __future__ import annotations

import os

from distributed import Client, SpecCluster

from trackset.cluster.worker_spec import cpu_worker_spec, gpu_worker_spec, scheduler_spec


def priority() -> int:
    """The nice value of the calling thread (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_cpu_workers_run_their_tasks_niced_and_gpu_workers_do_not():
    base = priority()
    workers = cpu_worker_spec(1, nice=5) | gpu_worker_spec([0], 1)
    with (
        SpecCluster(workers=workers, scheduler=scheduler_spec()) as cluster,
        Client(cluster) as client,
    ):
        by_name = {info["name"]: address for address, info in client.scheduler_info()["workers"].items()}
        in_task = {
            name: client.submit(priority, pure=False, workers=[address]).result() for name, address in by_name.items()
        }
        in_loop = client.run(priority)
    assert in_task == {"cpu-w0": min(base + 5, 19), "gpu0-w0": base}
    assert in_loop[by_name["cpu-w0"]] == min(base + 5, 19)
