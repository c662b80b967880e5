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
            },
        }
    with pytest.raises(ValueError):
        cpu_worker_spec(0)


def test_scheduler_and_run_cluster_spec():
    assert scheduler_spec() == {
        "cls": "distributed.Scheduler",
        "options": {"host": "127.0.0.1", "dashboard_address": ":0"},
    }
    spec = run_cluster_spec([1, 0], 1, 2, preload=["p"])
    assert spec == {
        "workers": cpu_worker_spec(2, preload=["p"]) | gpu_worker_spec([1, 0], 1, preload=["p"]),
        "scheduler": scheduler_spec(),
    }
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
