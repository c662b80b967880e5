"""Worker specs pin Nanny workers to GPUs round-robin, checked as data (inside real workers:
test_run_cluster_workers.py)."""

from __future__ import annotations

import os
from unittest.mock import patch

import pytest

from trackset.cluster.worker_spec import (
    cpu_worker_spec,
    gpu_worker_spec,
    run_cluster_spec,
    scheduler_spec,
)
from trackset.gpu.pinning import visible_gpu_index


def _check_env_value(spec: dict, name: str, gpu: int) -> None:
    env = spec[name]["options"]["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == str(gpu)
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # CUDA index == NVML index


@pytest.mark.parametrize("gpus", [[0], [0, 1], [3, 1, 2], [7]])
@pytest.mark.parametrize("workers_per_gpu", [1, 2, 3])
def test_gpu_worker_spec_round_robin(gpus, workers_per_gpu):
    spec = gpu_worker_spec(gpus, workers_per_gpu)
    assert len(spec) == len(gpus) * workers_per_gpu
    for i, name in enumerate(spec):
        gpu = gpus[i % len(gpus)]
        assert name == f"gpu{gpu}-w{i // len(gpus)}"
        _check_env_value(spec, name, gpu)
        options = spec[name]["options"]
        assert spec[name]["cls"] == "distributed.Nanny"
        resources = {"GPU": 1, "GPU_RANK": 1000 - i // len(gpus)}  # the k-th worker of its GPU ranks 1000 - k
        assert (options["resources"], options["host"], options["nthreads"]) == (resources, "127.0.0.1", 1)
        assert "preload" not in options


def test_gpu_worker_spec_exact_entry():
    spec = gpu_worker_spec([0, 1], 2, env={"OMP_NUM_THREADS": "1"}, preload=["trackset.some_setup"])
    assert list(spec) == ["gpu0-w0", "gpu1-w0", "gpu0-w1", "gpu1-w1"]
    assert spec["gpu1-w1"] == {
        "cls": "distributed.Nanny",
        "options": {
            "env": {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "OMP_NUM_THREADS": "1"},
            "resources": {"GPU": 1, "GPU_RANK": 999},
            "host": "127.0.0.1",
            "nthreads": 1,
            "dashboard_address": "127.0.0.1:0",
            "protocol": "tcp",
            "preload": ["trackset.some_setup"],
        },
    }


def test_entries_share_no_mutable_state():
    spec = gpu_worker_spec([0, 1], 1, env={"A": "1"}, preload=["m"])
    spec["gpu0-w0"]["options"]["env"]["A"] = "changed"
    spec["gpu0-w0"]["options"]["preload"].append("other")
    assert spec["gpu1-w0"]["options"]["env"]["A"] == "1" and spec["gpu1-w0"]["options"]["preload"] == ["m"]


@pytest.mark.parametrize(
    ("gpus", "workers_per_gpu", "env", "message"),
    [
        ([], 1, None, "at least one GPU"),
        ([0, 0], 1, None, "must not repeat"),
        ([0], 0, None, "workers_per_gpu must be at least 1"),
        ([0], 1, {"CUDA_VISIBLE_DEVICES": "1"}, "must not set CUDA_VISIBLE_DEVICES"),
    ],
)
def test_gpu_worker_spec_rejects(gpus, workers_per_gpu, env, message):
    with pytest.raises(ValueError, match=message):
        gpu_worker_spec(gpus, workers_per_gpu, env=env)


@pytest.mark.parametrize("n_workers", [1, 3])
def test_cpu_worker_spec_hides_gpus(n_workers):
    spec = cpu_worker_spec(n_workers, env={"X": "y"})
    assert list(spec) == [f"cpu-w{k}" for k in range(n_workers)]
    for entry in spec.values():
        assert entry == {
            "cls": "distributed.Nanny",
            "options": {
                "env": {"CUDA_VISIBLE_DEVICES": "", "X": "y"},
                "resources": {"CPU": 1},
                "host": "127.0.0.1",
                "nthreads": 1,
                "dashboard_address": "127.0.0.1:0",
                "protocol": "tcp",
            },
        }
    with pytest.raises(ValueError):
        cpu_worker_spec(0)


def test_scheduler_and_run_cluster_spec():
    # The dashboard on loopback: Dask reads ":0" as every interface.
    assert scheduler_spec() == {
        "cls": "distributed.Scheduler",
        "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", "protocol": "tcp"},
    }
    spec = run_cluster_spec([1, 0], 1, 2, preload=["p"], protocol="tls")
    assert spec == {
        "workers": cpu_worker_spec(2, preload=["p"], protocol="tls")
        | gpu_worker_spec([1, 0], 1, preload=["p"], protocol="tls"),
        "scheduler": scheduler_spec("tls"),
    }
    assert {entry["options"]["protocol"] for entry in [*spec["workers"].values(), spec["scheduler"]]} == {"tls"}
    assert list(run_cluster_spec([], 3, 1)["workers"]) == ["cpu-w0"]  # no GPU: CPU workers only


@pytest.mark.parametrize(("visible", "expected"), [("0", 0), ("5", 5), (" 2 , 3", 2)])
def test_visible_gpu_index(visible, expected):
    with patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": visible}):
        assert visible_gpu_index() == expected


def test_visible_gpu_index_default_and_errors():
    with patch.dict(os.environ, {}, clear=False):
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        assert visible_gpu_index(default=4) == 4
    for bad in ("", "GPU-8e0a3f2c-0000-0000-0000-000000000000"):
        with patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": bad}), pytest.raises(ValueError):
            visible_gpu_index()


# -- one real cluster, over TLS (plain TCP: test_run_cluster_workers.py) ---------------------


def listening(pids: list[int]) -> set[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket these processes listen on."""
    import psutil

    found = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((pid, conn.laddr.ip, conn.laddr.port))
    return found


@pytest.mark.timeout(120)
def test_the_run_cluster_listens_on_loopback_only_and_talks_tls():
    """Scheduler, nannies, workers and every dashboard on 127.0.0.1; no comm without the certificate."""
    import dask
    import psutil
    from distributed import Client, SpecCluster

    from trackset.cluster.security import temporary_tls_config

    before = listening([os.getpid()])
    with dask.config.set(temporary_tls_config()):
        spec = run_cluster_spec([0], 1, 1, protocol="tls")
        with SpecCluster(**spec) as cluster, Client(cluster) as client:
            client.wait_for_workers(2, timeout=90)
            children = [child.pid for child in psutil.Process().children(recursive=True)]
            sockets = listening([os.getpid(), *children]) - before
            info = client.scheduler_info(n_workers=-1)
            address = cluster.scheduler_address
            # Another account on this machine: plain TCP, or TLS with a certificate of its own.
            with dask.config.set({"distributed.comm.require-encryption": False}), pytest.raises(OSError):
                Client(address.replace("tls://", "tcp://"), timeout=5)
            with dask.config.set(temporary_tls_config()), pytest.raises(OSError):
                Client(address, timeout=5)
    # Scheduler, its dashboard, two nannies, two workers, two worker dashboards.
    assert len(sockets) >= 8
    assert {ip for _, ip, _ in sockets} == {"127.0.0.1"}, sockets
    assert address.startswith("tls://127.0.0.1:")
    assert all(worker.startswith("tls://127.0.0.1:") for worker in info["workers"])
