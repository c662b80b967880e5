"""Peak GPU memory per video: sampler, fake device, and the CUDA path against a faithful fake."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from trackset.gpu import memory_probe
from trackset.gpu.fake_device import FakeDevice
from trackset.gpu.inventory import GpuInfo, GpuInventory
from trackset.gpu.memory_probe import (
    PeakSampler,
    VideoMemoryProbe,
    cuda_context_bytes,
    device_kind,
    read_vmhwm_bytes,
    reset_vmhwm,
)

MIB, GIB = 1024**2, 1024**3


class Level:
    """A memory reading that tests move, and that tells when a sampler has seen a value."""

    def __init__(self, value: int | None) -> None:
        self.value = value
        self.watch_for: int | None = None
        self.seen = threading.Event()

    def read(self) -> int | None:
        value = self.value
        if value is not None and value == self.watch_for:
            self.seen.set()
        return value

    def spike(self, high: int, after: int | None) -> None:
        """Hold ``high`` until the sampler has read it, then drop to ``after`` (no sleeps)."""
        self.seen.clear()
        self.watch_for, self.value = high, high
        assert self.seen.wait(timeout=10), "sampler never read the spike"
        self.value = after


# -- PeakSampler ------------------------------------------------------------------------------


def test_sampler_catches_a_spike_between_start_and_stop():
    level = Level(10)
    with PeakSampler(level.read, interval_s=0.005) as sampler:
        level.spike(500, after=20)
    assert sampler.peak_bytes == 500
    assert sampler.samples >= 3  # first, the spike, last


def test_sampler_skips_unknown_readings():
    with PeakSampler(lambda: None, interval_s=60) as sampler:
        pass
    assert (sampler.peak_bytes, sampler.samples) == (None, 2)


class SourceBroke(Exception):
    pass


def test_sampler_reraises_a_failing_source_unless_the_block_failed():
    level = Level(1)

    def read() -> int | None:
        if level.value is None:
            raise SourceBroke("NVML lost the GPU")
        return level.value

    with pytest.raises(SourceBroke), PeakSampler(read, interval_s=0.005):
        level.value = None
        threading.Event().wait(0.05)
    level.value = 1
    with pytest.raises(KeyError), PeakSampler(read, interval_s=0.005):  # the block's error wins
        level.value = None
        raise KeyError("stage error")


def test_sampler_misuse():
    sampler = PeakSampler(lambda: 1, interval_s=60)
    with pytest.raises(RuntimeError, match="not started"):
        sampler.stop()
    with sampler, pytest.raises(RuntimeError, match="already started"):
        sampler.start()
    with pytest.raises(ValueError):
        PeakSampler(lambda: 1, interval_s=0)


# -- fake device ------------------------------------------------------------------------------


def test_fake_probe_measures_model_plus_video_high_water_mark(tmp_path):
    device = FakeDevice(tmp_path, 0, GIB)
    device.allocate(100 * MIB)  # the model, loaded in setup
    device.allocate(50 * MIB)
    device.release(50 * MIB)  # an earlier video's peak must not leak into the next
    for video_peak in (300 * MIB, 200 * MIB):
        with VideoMemoryProbe.for_fake(device, interval_s=0.005) as probe:
            with device.hold(video_peak // 2):
                device.allocate(video_peak // 2)
                device.release(video_peak // 2)
        assert probe.peak_bytes == 100 * MIB + video_peak
        assert probe.sampled_peak_bytes is not None and probe.sampled_peak_bytes <= probe.peak_bytes
        assert probe.rss_cross_check() is None  # not materialised: nothing to cross-check
    device.release_all()


def test_fake_probe_still_reports_when_the_video_runs_out_of_memory(tmp_path):
    device = FakeDevice(tmp_path, 0, GIB)
    with pytest.raises(torch.cuda.OutOfMemoryError), VideoMemoryProbe.for_fake(device) as probe:
        device.allocate(700 * MIB)
        device.allocate(400 * MIB)
    assert probe.peak_bytes == 700 * MIB
    device.release_all()


def test_fake_probe_cross_checks_against_peak_rss(tmp_path):
    device = FakeDevice(tmp_path, 0, GIB, materialize=True)
    device.allocate(16 * MIB)
    with VideoMemoryProbe.for_fake(device) as probe, device.hold(128 * MIB):
        pass
    device.release_all()
    assert probe.peak_bytes == 144 * MIB
    if not reset_vmhwm():
        pytest.skip("this kernel refuses to reset VmHWM")
    assert probe.rss_growth_bytes >= 128 * MIB * 0.9
    assert probe.rss_cross_check() is True


def test_fake_probe_needs_its_device():
    with pytest.raises(ValueError, match="FakeDevice"):
        VideoMemoryProbe("fake")


# -- /proc ------------------------------------------------------------------------------------


def test_vmhwm_readings(tmp_path, monkeypatch):
    assert read_vmhwm_bytes() > 0  # Linux
    assert read_vmhwm_bytes(tmp_path / "missing") is None
    (tmp_path / "status").write_text("Name:\tpython\n")
    assert read_vmhwm_bytes(tmp_path / "status") is None
    assert reset_vmhwm(tmp_path / "no" / "clear_refs") is False

    def refuse(self, text):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    assert reset_vmhwm() is False


# -- CUDA, with torch.cuda replaced by a faithful fake ----------------------------------------


class FakeCuda:
    """The slice of ``torch.cuda`` the probe uses, behaving like the caching allocator.

    ``reset_peak_memory_stats`` restarts the peak from the *current* reserved memory, as
    PyTorch does; ``mem_get_info`` creates the context (cudaMemGetInfo needs one);
    ``memory_reserved`` never drops on ``del`` of a tensor, only on ``empty_cache``.
    """

    def __init__(self, total: int, context: int, others: int = 0) -> None:
        self.total, self.context, self.others = total, context, others
        self.initialized = False
        self.context_created = False
        self.reserved = 0
        self.peak = 0
        self.outside = 0  # memory taken by libraries outside PyTorch's allocator

    # torch.cuda API
    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self) -> None:
        self.initialized = True

    def mem_get_info(self, device=None) -> tuple[int, int]:
        self.init()
        self.context_created = True
        return self.total - self.device_used(), self.total

    def memory_reserved(self, device=None) -> int:
        return self.reserved

    def max_memory_reserved(self, device=None) -> int:
        return self.peak

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak = self.reserved

    # what a program does
    def reserve(self, nbytes: int) -> None:
        self.init()
        self.context_created = True
        self.reserved += nbytes
        self.peak = max(self.peak, self.reserved)

    def empty_cache(self, nbytes: int) -> None:
        self.reserved -= nbytes

    # what NVML sees
    def process_used(self) -> int | None:
        return self.context + self.reserved + self.outside if self.context_created else None

    def device_used(self) -> int:
        return self.others + (self.process_used() or 0)


class CudaInventory(GpuInventory):
    """NVML's view of one GPU shared by ``FakeCuda``'s process and others.

    ``watch(value)`` arms ``seen``, set once a per-process reading of ``value`` was served,
    so a test knows the sampler observed a spike without sleeping.
    """

    kind = "nvml"

    def __init__(self, cuda: FakeCuda, *, sees_pid: bool = True) -> None:
        super().__init__()
        self.cuda, self.sees_pid = cuda, sees_pid
        self.watch_for: int | None = None
        self.seen = threading.Event()

    def watch(self, value: int) -> None:
        self.seen.clear()
        self.watch_for = value

    def _all_gpus(self) -> list[GpuInfo]:
        used = self.cuda.device_used()
        mine = self.cuda.process_used() or 0
        return [GpuInfo(0, "NVIDIA H100", self.cuda.total, used - mine, self.cuda.total - used)]

    def process_used_bytes(self, gpu_index: int, pid: int) -> int | None:
        value = self.cuda.process_used() if self.sees_pid and pid == os.getpid() else None
        if value is not None and value == self.watch_for:
            self.seen.set()
        return value


@pytest.fixture
def cuda(monkeypatch):
    fake = FakeCuda(total=80 * GIB, context=500 * MIB, others=3 * GIB)
    for name in ("is_available", "is_initialized", "init", "mem_get_info", "memory_reserved",
                 "max_memory_reserved", "reset_peak_memory_stats"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setattr(memory_probe, "_context_bytes", {})  # a fresh worker process
    return fake


def test_context_is_measured_once_per_worker(cuda):
    inventory = CudaInventory(cuda)
    assert cuda_context_bytes(inventory, 0) == 500 * MIB
    assert cuda.initialized and cuda.context_created
    cuda.context = 900 * MIB  # lazily loaded kernels grow it later; the sampler sees that
    assert cuda_context_bytes(inventory, 0) == 500 * MIB


def test_context_falls_back_to_device_growth_when_nvml_cannot_see_the_pid(cuda):
    assert cuda_context_bytes(CudaInventory(cuda, sees_pid=False), 0) == 500 * MIB


def test_context_is_zero_without_an_inventory(cuda):
    assert cuda_context_bytes(None, 0) == 0


def test_cuda_probe_peak_is_reserved_plus_context_per_video(cuda):
    inventory = CudaInventory(cuda)
    cuda.reserve(4 * GIB)  # the model, loaded in setup
    probe_first = VideoMemoryProbe.for_cuda(inventory, 0, interval_s=0.005)
    with probe_first:
        cuda.reserve(6 * GIB)
        cuda.empty_cache(6 * GIB)
    assert probe_first.peak_bytes == 10 * GIB + 500 * MIB

    # The next video peaks lower: the reset restarts from the model, not from zero or 10 GiB.
    with VideoMemoryProbe.for_cuda(inventory, 0, interval_s=0.005) as probe:
        cuda.reserve(1 * GIB)
    assert probe.peak_bytes == 5 * GIB + 500 * MIB


def test_cuda_probe_takes_the_sampler_when_memory_bypasses_pytorch(cuda):
    inventory = CudaInventory(cuda)
    cuda.reserve(4 * GIB)
    with VideoMemoryProbe.for_cuda(inventory, 0, interval_s=0.005) as probe:
        # A cuDNN workspace of 3 GiB that PyTorch's allocator never sees, freed again.
        cuda.outside = 3 * GIB
        inventory.watch(cuda.process_used())
        assert inventory.seen.wait(timeout=10), "sampler never read the workspace"
        cuda.outside = 0
    assert probe.peak_bytes == 4 * GIB + 500 * MIB + 3 * GIB
    assert probe.sampled_peak_bytes == probe.peak_bytes


def test_cuda_probe_without_nvml_reads_only_the_allocator(cuda):
    cuda.reserve(GIB)
    with VideoMemoryProbe.for_cuda(None, 0) as probe:
        cuda.reserve(GIB)
    assert (probe.peak_bytes, probe.sampled_peak_bytes) == (2 * GIB, None)


def test_this_cpu_machine_has_no_cuda():
    if torch.cuda.is_available():
        pytest.skip("a real GPU is present")
    assert device_kind() == "fake"
    assert cuda_context_bytes(None, 0) == 0
    with pytest.raises(ValueError, match="is_available"):
        VideoMemoryProbe("cuda")
