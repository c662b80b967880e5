"""Measure a stage's peak GPU memory on one video, the input of GPU sizing.

DECISIONS.md ("GPU memory") defines *peak* as the most GPU memory a worker process held
while processing one video with its model loaded::

    peak = max(max_memory_reserved + CUDA context size, highest NVML per-process reading)

- ``torch.cuda.max_memory_reserved()`` sees every allocation of PyTorch's caching
  allocator, however brief, but not the CUDA context nor memory taken outside PyTorch;
- the context size is measured once per worker (:func:`cuda_context_bytes`);
- a background :class:`PeakSampler` reads NVML every ~50 ms, which catches what PyTorch
  does not see (cuDNN/cuBLAS workspaces, other libraries) but may miss short spikes.

On the fake device the same formula runs with the ledger's high-water mark as the
allocator reading, no context, and the ledger as the sampled reading; with a
``materialize=True`` device the process's peak RSS (VmHWM) cross-checks it.

A stage wrapper measures each video like this::

    with VideoMemoryProbe.for_fake(device) as probe:   # or .for_cuda(inventory, gpu)
        stage.run(video)
    record.peak_bytes = probe.peak_bytes

Every ``torch.cuda`` call is guarded by ``torch.cuda.is_available()``: CPU-only builds
raise on most of them.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

import torch

from trackset.gpu.fake_device import FakeDevice
from trackset.gpu.inventory import GpuInventory

SAMPLE_INTERVAL_S = 0.05
"""How often the background sampler reads the memory in use (DECISIONS.md: ~50 ms)."""

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")

DeviceKind = Literal["cuda", "fake"]


def device_kind() -> DeviceKind:
    """``"cuda"`` where PyTorch sees a GPU, else ``"fake"`` (the fake device stands in)."""
    return "cuda" if torch.cuda.is_available() else "fake"


def peak_from_readings(allocator_peak_bytes: int, context_bytes: int, sampled_peak_bytes: int | None) -> int:
    """DECISIONS.md's peak: max(allocator peak + context, highest sampled reading).

    Args:
        allocator_peak_bytes: ``torch.cuda.max_memory_reserved()``, or the fake ledger's
            high-water mark for this process.
        context_bytes: the CUDA context size (0 on the fake device).
        sampled_peak_bytes: the sampler's maximum, None when it got no reading.

    Examples:
        >>> peak_from_readings(6_000, 500, 6_200)   # the sampler missed nothing PyTorch saw
        6500
        >>> peak_from_readings(6_000, 500, 7_000)   # memory PyTorch did not allocate
        7000
        >>> peak_from_readings(6_000, 500, None)    # NVML cannot see this process
        6500
    """
    return max(allocator_peak_bytes + context_bytes, sampled_peak_bytes or 0)


class PeakSampler:
    """Keep the maximum of ``read()`` sampled in a background thread every ``interval_s``.

    Reads once when started and once when stopped as well, so even a block shorter than
    one interval yields a reading. ``read`` returns None when it cannot tell; such readings
    are skipped. An exception raised by ``read`` stops sampling and is re-raised by
    :meth:`stop` (unless the measured block itself failed, whose error matters more).

    Examples:
        >>> levels = iter([10, 30, 20])
        >>> with PeakSampler(lambda: next(levels, None), interval_s=60) as sampler:
        ...     pass
        >>> sampler.peak_bytes
        30
    """

    def __init__(self, read: Callable[[], int | None], interval_s: float = SAMPLE_INTERVAL_S) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.read = read
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def _sample(self) -> None:
        value = self.read()
        with self._lock:
            self.samples += 1
            if value is not None and (self.peak_bytes is None or value > self.peak_bytes):
                self.peak_bytes = value

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self._sample()
        except BaseException as exc:  # handed to stop(): a thread cannot raise to its caller
            self._error = exc

    def start(self) -> PeakSampler:
        """Take a first reading and start the background thread."""
        if self._thread is not None:
            raise RuntimeError("PeakSampler already started")
        self._sample()
        # Daemon: a reader stuck in a driver call must not keep the worker from exiting.
        self._thread = threading.Thread(target=self._run, name="trackset-peak-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int | None:
        """Stop sampling, take a last reading and return the peak (None without readings)."""
        if self._thread is None:
            raise RuntimeError("PeakSampler was not started")
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._sample()
        return self.peak_bytes

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        except Exception:
            if exc is None:
                raise


def _status_kib(field: str, status_path: Path) -> int | None:
    """A ``/proc/<pid>/status`` field in KiB, None where there is no such file or field."""
    try:
        text = status_path.read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def read_vmhwm_bytes(status_path: Path = PROC_STATUS) -> int | None:
    """This process's peak resident memory (VmHWM) in bytes; None off Linux.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     status = Path(tmp) / "status"
        ...     _ = status.write_text("Name:\\tpython\\nVmHWM:\\t  2048 kB\\nVmRSS:\\t  1024 kB\\n")
        ...     read_vmhwm_bytes(status)
        2097152
    """
    kib = _status_kib("VmHWM", status_path)
    return None if kib is None else kib * 1024


def reset_vmhwm(clear_refs_path: Path = PROC_CLEAR_REFS) -> bool:
    """Restart VmHWM from the current RSS (Linux: write "5" to clear_refs); False if refused.

    Some kernels and sandboxes forbid it; the cross-check is then skipped, not failed.
    """
    try:
        clear_refs_path.write_text("5")
    except OSError:  # PermissionError in sandboxes, FileNotFoundError off Linux
        return False
    return True


# Measured once per worker process and GPU (DECISIONS.md): the context does not change
# between videos, and measuring it needs CUDA still uninitialised for the fallback.
_context_bytes: dict[int, int] = {}


def cuda_context_bytes(inventory: GpuInventory | None, gpu_index: int) -> int:
    """Size of this process's CUDA context on ``gpu_index`` (NVML index); 0 without CUDA.

    Initialises CUDA, then takes NVML's reading for this process minus what PyTorch's
    allocator reserved. Where NVML cannot attribute memory to this PID (a container with
    its own PID namespace), it falls back to how much the device's used memory grew across
    initialisation; a worker starting at the same moment inflates that, which errs toward
    fewer workers per GPU, the safe side.

    Args:
        inventory: NVML inventory of this process; None gives 0 (nothing to measure with).
        gpu_index: the physical GPU of this worker, as in ``CUDA_VISIBLE_DEVICES``.
    """
    if not torch.cuda.is_available() or inventory is None:
        return 0
    if gpu_index in _context_bytes:
        return _context_bytes[gpu_index]
    before = None if torch.cuda.is_initialized() else inventory.gpu(gpu_index)
    torch.cuda.init()
    # cudaMemGetInfo needs a context, so this creates it even under CUDA lazy loading.
    torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    process = inventory.process_used_bytes(gpu_index, os.getpid())
    if process is None and before is not None:
        after = inventory.gpu(gpu_index)
        process = (after.total_bytes - after.free_bytes) - (before.total_bytes - before.free_bytes)
    _context_bytes[gpu_index] = max(0, (process or 0) - reserved)
    return _context_bytes[gpu_index]


class VideoMemoryProbe:
    """Peak GPU memory of one block of work (one video) in this worker process.

    Build one per video with :meth:`for_cuda` or :meth:`for_fake`; after the ``with`` block,
    :attr:`peak_bytes` holds DECISIONS.md's peak, also when the block raised (an
    out-of-memory video still reports how far it got). :attr:`rss_growth_bytes` is how much
    the peak RSS rose above the RSS at entry (None where VmHWM cannot be reset), for the
    fake device's cross-check.
    """

    def __init__(
        self,
        kind: DeviceKind,
        *,
        read: Callable[[], int | None] | None = None,
        fake_device: FakeDevice | None = None,
        context_bytes: int = 0,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("a CUDA memory probe needs torch.cuda.is_available()")
        if kind == "fake" and fake_device is None:
            raise ValueError("a fake memory probe needs its FakeDevice")
        self.kind = kind
        self.fake_device = fake_device
        self.context_bytes = context_bytes
        self._sampler = PeakSampler(read, interval_s) if read is not None else None
        self.peak_bytes: int | None = None
        self.sampled_peak_bytes: int | None = None
        self.rss_growth_bytes: int | None = None
        self._rss_start: int | None = None
        self._held_at_entry = 0

    @classmethod
    def for_cuda(
        cls, inventory: GpuInventory | None, gpu_index: int, interval_s: float = SAMPLE_INTERVAL_S
    ) -> VideoMemoryProbe:
        """Probe the current CUDA device; ``gpu_index`` is its NVML index for sampling.

        Without an inventory, only PyTorch's allocator is read (no context, no sampler).
        """
        pid = os.getpid()
        read = (lambda: inventory.process_used_bytes(gpu_index, pid)) if inventory is not None else None
        return cls("cuda", read=read, context_bytes=cuda_context_bytes(inventory, gpu_index), interval_s=interval_s)

    @classmethod
    def for_fake(cls, device: FakeDevice, interval_s: float = SAMPLE_INTERVAL_S) -> VideoMemoryProbe:
        """Probe this process's use of a fake GPU (ledger high-water mark and samples)."""
        return cls("fake", read=device.held_bytes, fake_device=device, interval_s=interval_s)

    def _reset_peaks(self) -> None:
        if self.kind == "cuda":
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        elif self.fake_device is not None:
            self.fake_device.reset_peak()

    def _allocator_peak(self) -> int:
        if self.kind == "cuda":
            return torch.cuda.max_memory_reserved() if torch.cuda.is_available() else 0
        return self.fake_device.peak_bytes() if self.fake_device is not None else 0

    def rss_cross_check(self, min_ratio: float = 0.9) -> bool | None:
        """Did peak RSS grow by at least ``min_ratio`` of the fake memory taken in the block?

        Only meaningful for a ``materialize=True`` fake device, whose allocations are real
        host memory; None where it does not apply or VmHWM could not be reset. A lower
        bound only: Python's own allocations add RSS, and memory freed earlier in the block
        may be reused without growing it, hence the ratio below 1.
        """
        device = self.fake_device
        if device is None or not device.materialize or self.rss_growth_bytes is None or self.peak_bytes is None:
            return None
        return self.rss_growth_bytes >= min_ratio * (self.peak_bytes - self._held_at_entry)

    def __enter__(self) -> VideoMemoryProbe:
        self._rss_start = read_vmhwm_bytes() if reset_vmhwm() else None
        self._reset_peaks()
        if self.fake_device is not None:
            self._held_at_entry = self.fake_device.held_bytes()
        if self._sampler is not None:
            self._sampler.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sampler is not None:
            self._sampler.__exit__(exc_type, exc, tb)
            self.sampled_peak_bytes = self._sampler.peak_bytes
        self.peak_bytes = peak_from_readings(self._allocator_peak(), self.context_bytes, self.sampled_peak_bytes)
        hwm = read_vmhwm_bytes()
        if self._rss_start is not None and hwm is not None:
            self.rss_growth_bytes = max(0, hwm - self._rss_start)
