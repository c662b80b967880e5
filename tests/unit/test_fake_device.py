"""The fake GPU: one ledger shared by processes, real OOM errors, dead-PID cleanup, GPU phases."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest.mock import patch

import pytest

from trackset.config.settings import ClusterSettings, FakeGpu
from trackset.gpu.fake_device import FakeDevice, current_fake_device, ledger_dir_for

MIB = 1024**2
SPAWN = multiprocessing.get_context("spawn")  # as Dask's Nanny starts workers


def out_of_memory_error() -> type[Exception]:
    """torch's OOM class, imported late: spawned children import this module and need no torch."""
    import torch

    return torch.cuda.OutOfMemoryError


# -- code run in spawned processes (module level so the children can import it) ------------


def hold_until_told(ledger_dir: str, nbytes: int, held, leave) -> None:
    """Allocate ``nbytes`` on fake GPU 0, report, then exit *without* releasing (a crash)."""
    FakeDevice(Path(ledger_dir), 0, 1000).allocate(nbytes)
    held.set()
    leave.wait(timeout=60)


def gpu_phase_interval(ledger_dir: str, barrier, results) -> None:
    """Enter the GPU phase together with a sibling and report when it was held."""
    device = FakeDevice(Path(ledger_dir), 0, 1000)
    barrier.wait(timeout=60)
    with device.gpu_phase():
        start = time.monotonic()
        time.sleep(0.2)
        end = time.monotonic()
    results.put((os.getpid(), start, end))


def assert_disjoint(intervals: list[tuple[float, float]]) -> None:
    ordered = sorted(intervals)
    for (_, first_end), (second_start, _) in zip(ordered, ordered[1:], strict=False):
        assert first_end <= second_start, f"GPU phases overlap: {ordered}"


# -- tests ----------------------------------------------------------------------------------


def test_second_process_runs_out_of_memory_and_dead_holders_are_collected(tmp_path):
    held, leave = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=hold_until_told, args=(str(tmp_path), 600, held, leave))
    child.start()
    try:
        assert held.wait(timeout=60), "child never allocated"
        device = FakeDevice(tmp_path, 0, 1000)
        assert device.used_by_others() == 600 and device.holdings() == {child.pid: 600}

        with pytest.raises(out_of_memory_error()) as info:
            device.allocate(500)
        assert str(info.value).startswith(
            "CUDA out of memory. Tried to allocate 500 bytes. GPU 0 has a total capacity of 1000 bytes "
            "of which 400 bytes is free."
        )
        assert device.held_bytes() == 0  # a failed allocation charges nothing

        device.allocate(400)  # exactly up to capacity is fine
        device.release(400)
    finally:
        leave.set()
        child.join(timeout=60)

    # The child died holding 600 bytes; the next access forgets them.
    assert device.holdings() == {}
    assert device.held_bytes(child.pid) == 0 and device.peak_bytes(child.pid) == 0
    device.allocate(1000)


def test_gpu_phase_serialises_two_processes(tmp_path):
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    children = [SPAWN.Process(target=gpu_phase_interval, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    intervals = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert {pid for pid, _, _ in intervals} == {child.pid for child in children}
    assert_disjoint([(start, end) for _, start, end in intervals])


def test_gpu_phase_serialises_threads_of_one_process(tmp_path):
    # The thread runner shares one process: each phase opens its own lock file, so it still excludes.
    device = FakeDevice(tmp_path, 0, 1000)
    intervals: list[tuple[float, float]] = []
    barrier = threading.Barrier(3)

    def phase() -> None:
        barrier.wait()
        with device.gpu_phase():
            start = time.monotonic()
            time.sleep(0.05)
            intervals.append((start, time.monotonic()))

    threads = [threading.Thread(target=phase) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(intervals) == 3
    assert_disjoint(intervals)


def test_phases_of_different_gpus_are_independent(tmp_path):
    with FakeDevice(tmp_path, 0, 1000).gpu_phase():
        # Would deadlock if GPU 1 shared GPU 0's lock.
        with FakeDevice(tmp_path, 1, 1000).gpu_phase():
            pass


def test_peak_tracking_and_reset(tmp_path):
    device = FakeDevice(tmp_path, 0, 1000)
    device.allocate(100)
    device.allocate(50)
    device.release(120)
    assert (device.held_bytes(), device.peak_bytes()) == (30, 150)
    device.reset_peak()  # next video starts from what is held (the model)
    assert device.peak_bytes() == 30
    with device.hold(200):
        pass
    assert (device.held_bytes(), device.peak_bytes()) == (30, 230)
    device.release_all()
    assert (device.held_bytes(), device.peak_bytes(), device.holdings()) == (0, 0, {})


def test_instances_in_one_process_share_the_ledger(tmp_path):
    model, probe = FakeDevice(tmp_path, 0, 1000), FakeDevice(tmp_path, 0, 1000)
    model.allocate(300)
    assert probe.held_bytes() == 300 and probe.peak_bytes() == 300 and probe.used_by_others() == 0


def test_hold_releases_on_error(tmp_path):
    device = FakeDevice(tmp_path, 0, 1000)
    with pytest.raises(RuntimeError), device.hold(700):
        raise RuntimeError("stage failed")
    assert device.held_bytes() == 0


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda d: d.allocate(-1), "negative"),
        (lambda d: d.release(-1), "negative"),
        (lambda d: d.release(1), "releases 1 bytes but holds 0"),
    ],
)
def test_bookkeeping_errors(tmp_path, action, message):
    with pytest.raises(ValueError, match=message):
        action(FakeDevice(tmp_path, 0, 1000))


@pytest.mark.parametrize(("index", "capacity"), [(-1, 10), (0, 0)])
def test_invalid_device(tmp_path, index, capacity):
    with pytest.raises(ValueError):
        FakeDevice(tmp_path, index, capacity)


def test_out_of_memory_error_survives_pickling(tmp_path):
    device = FakeDevice(tmp_path, 3, 10 * MIB)
    device.allocate(6 * MIB)
    with pytest.raises(out_of_memory_error()) as info:
        device.allocate(5 * MIB)
    assert re.search(r"GPU 3 has a total capacity of 10\.00 MiB of which 4\.00 MiB is free", str(info.value))
    copy = pickle.loads(pickle.dumps(info.value))  # Dask and Prefect ship errors between processes
    assert type(copy) is out_of_memory_error() and str(copy) == str(info.value)


def test_reading_an_unused_ledger_creates_nothing(tmp_path):
    device = FakeDevice(ledger_dir_for(tmp_path), 0, 1000)
    assert (device.held_bytes(), device.peak_bytes(), device.used_by_others()) == (0, 0, 0)
    assert not (tmp_path / ".fake_gpu").exists()


def vm_rss_bytes() -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


def test_materialize_makes_the_process_really_hold_the_memory(tmp_path):
    device = FakeDevice(tmp_path, 0, 1024 * MIB, materialize=True)
    before = vm_rss_bytes()
    device.allocate(96 * MIB)
    grown = vm_rss_bytes() - before
    assert grown >= 90 * MIB
    device.release(32 * MIB)  # partial release keeps the rest resident
    assert vm_rss_bytes() - before >= 60 * MIB
    device.release_all()
    assert vm_rss_bytes() - before < grown - 60 * MIB


HEAP_WITH_RESIDENT_FREE_MEMORY = """
import re, sys
from pathlib import Path
import numpy as np
from trackset.gpu.fake_device import FakeDevice
MIB = 1 << 20
def rss():
    return int(re.search(r"^VmRSS:\\s+(\\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024
big = np.ones(30 * MIB, np.uint8)
del big  # malloc's mmap threshold follows a freed mapping up: 1 MiB blocks now come from the heap
blocks = [np.ones(MIB, np.uint8) for _ in range(160)]
pin = np.ones(MIB, np.uint8)  # above them, so their 160 MiB stay resident in the heap once freed
del blocks
device = FakeDevice(Path(sys.argv[1]), 0, 1024 * MIB, materialize=True)
before = rss()
device.allocate(96 * MIB)
print(rss() - before)
"""


def test_materialize_grows_rss_even_where_malloc_holds_resident_free_memory(tmp_path):
    """A long test session or worker has such a heap: a 96 MiB block from it grew RSS by 0."""
    command = [sys.executable, "-c", HEAP_WITH_RESIDENT_FREE_MEMORY, str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    assert int(run.stdout) >= 90 * MIB


def test_materialize_off_holds_no_host_memory(tmp_path):
    device = FakeDevice(tmp_path, 0, 1024 * MIB)
    before = vm_rss_bytes()
    device.allocate(512 * MIB)
    assert vm_rss_bytes() - before < 64 * MIB
    device.release_all()


CLUSTER = ClusterSettings(fake_gpus=[FakeGpu(memory_gb=1), FakeGpu(memory_gb=2)])


@pytest.mark.parametrize(
    ("visible", "index", "capacity"), [(None, 0, 1024**3), ("1", 1, 2 * 1024**3), ("1,0", 1, 2 * 1024**3)]
)
def test_current_fake_device_follows_cuda_visible_devices(tmp_path, visible, index, capacity):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    with patch.dict(os.environ, env):
        if visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        device = current_fake_device(CLUSTER.fake_gpus, tmp_path, materialize=True)
    assert (device.gpu_index, device.capacity_bytes, device.materialize) == (index, capacity, True)


@pytest.mark.parametrize(
    ("visible", "message"), [("2", "fake GPU 2, but cluster.fake_gpus has 2"), ("", "expected a GPU index")]
)
def test_current_fake_device_rejects_unknown_gpus(tmp_path, visible, message):
    with patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": visible}), pytest.raises(ValueError, match=message):
        current_fake_device(CLUSTER.fake_gpus, tmp_path)


def test_the_ledger_keeps_each_process_lifetime_peak_and_the_most_holders_at_once(tmp_path):
    device = FakeDevice(tmp_path, 0, 10_000)
    with device.hold(3_000):
        device.reset_peak()
    device.release_all()  # a stage's teardown: its per-video peak goes, the lifetime one stays
    with device.hold(2_000):
        assert device.lifetime_peaks()[os.getpid()] == 3_000
    assert device.peak_bytes() == 2_000 and device.most_holders() == 1
