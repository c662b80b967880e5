"""The workers a run's cluster spawns, checked inside one real Dask cluster shared by this module.

It is the cluster ``run_cluster_spec`` gives a machine with two GPUs and two workers per GPU,
plus one CPU worker five steps nicer than the GPU workers: the Nannies pin each GPU worker
to its GPU round-robin, the CPU worker runs its tasks niced, and the scheduler serves its
dashboard (bokeh is installed), not "needs bokeh".
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator

import dask
import pytest
from distributed import Client, SpecCluster, get_worker

from trackset.cluster.worker_spec import run_cluster_spec
from trackset.gpu.pinning import visible_gpu_index

GPUS, WORKERS_PER_GPU, CPU_NICE = [0, 1], 2, 5
GPU_WORKERS = ["gpu0-w0", "gpu1-w0", "gpu0-w1", "gpu1-w1"]  # the spec's order: round-robin over the GPUs


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    spec = run_cluster_spec(GPUS, WORKERS_PER_GPU, 1, cpu_nice=CPU_NICE)
    with SpecCluster(**spec) as running, Client(running) as client:
        client.wait_for_workers(len(spec["workers"]), timeout=90)
        yield client


def addresses(client: Client) -> dict[str, str]:
    """Each worker's address by its name."""
    return {info["name"]: address for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}


def where_am_i() -> tuple[str, str, str, int]:
    """Run inside a worker: its name, the GPU it was pinned to, its device order, its GPU index."""
    return (
        str(get_worker().name),
        os.environ["CUDA_VISIBLE_DEVICES"],
        os.environ["CUDA_DEVICE_ORDER"],
        visible_gpu_index(),
    )


def priority() -> int:
    """The nice value of the calling thread (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.timeout(120)
def test_gpu_workers_are_pinned_round_robin(cluster):
    info = cluster.scheduler_info(n_workers=-1)
    assert cluster.scheduler.address.startswith("tcp://127.0.0.1:")
    by_name = addresses(cluster)
    assert set(by_name) == {*GPU_WORKERS, "cpu-w0"}
    assert all(address.startswith("tcp://127.0.0.1:") for address in by_name.values())
    ranks = {worker["name"]: worker["resources"].get("GPU_RANK") for worker in info["workers"].values()}
    assert ranks == {"gpu0-w0": 1000, "gpu1-w0": 1000, "gpu0-w1": 999, "gpu1-w1": 999, "cpu-w0": None}

    # One task per GPU worker, placed the way GPU stages submit: annotated with the resource.
    with dask.annotate(resources={"GPU": 1}):
        futures = [cluster.submit(where_am_i, workers=[by_name[name]], pure=False) for name in GPU_WORKERS]
    assert cluster.gather(futures) == [
        ("gpu0-w0", "0", "PCI_BUS_ID", 0),
        ("gpu1-w0", "1", "PCI_BUS_ID", 1),
        ("gpu0-w1", "0", "PCI_BUS_ID", 0),
        ("gpu1-w1", "1", "PCI_BUS_ID", 1),
    ]


def test_cpu_workers_run_their_tasks_niced_and_gpu_workers_do_not(cluster):
    base = priority()
    by_name = addresses(cluster)
    in_task = {name: cluster.submit(priority, pure=False, workers=[by_name[name]]).result() for name in by_name}
    in_loop = cluster.run(priority)
    niced = min(base + CPU_NICE, 19)
    assert in_task == {"cpu-w0": niced} | dict.fromkeys(GPU_WORKERS, base)
    assert in_loop == {address: niced if name == "cpu-w0" else base for name, address in by_name.items()}


def test_the_scheduler_the_run_starts_serves_its_dashboard(cluster):
    with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as page:
        body = page.read().decode()
    assert page.status == 200
    assert "bokeh" in body.lower() and "install" not in body.lower()
