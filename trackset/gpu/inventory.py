"""Which GPUs this machine has and how much of their memory a stage may use.

Two implementations behind one small interface, so sizing and profiling never ask which
kind of machine they run on:

- :class:`NvmlInventory` reads real GPUs through NVML (the ``nvidia-ml-py`` package, which
  provides the ``pynvml`` module without the deprecation warning of the ``pynvml`` package).
- :class:`FakeInventory` describes the fake GPUs of ``cluster.fake_gpus`` on machines without
  a driver; their current use comes from the fake device ledger
  (:mod:`trackset.gpu.fake_device`), so a fake GPU looks as busy as the workers made it.

:func:`detect_inventory` picks one. Inventories hold NVML open while they live; close them
(or use them as context managers) when done. Build one per process: NVML handles do not
cross process boundaries.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Literal

from trackset.config.settings import ClusterSettings
from trackset.errors import SettingsError
from trackset.gpu.fake_device import FakeDevice
from trackset.gpu.sizing import gib_to_bytes


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as a stage sees it when it starts.

    Attributes:
        index: the GPU's NVML index (PCI bus order), also its ``CUDA_VISIBLE_DEVICES`` value.
        name: the product name, e.g. ``"NVIDIA H100 80GB HBM3"``.
        total_bytes: the GPU's memory.
        used_bytes: memory held by *other* processes (and the driver) right now.
        free_bytes: memory nobody holds right now.
    """

    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int

    @property
    def available_bytes(self) -> int:
        """What this stage may use: the GPU's memory minus other processes' use (DECISIONS.md).

        This is the *total* of the sizing formula. It counts memory this process holds
        itself as available, since the stage's own workers are what is being sized.

        Examples:
            >>> GpuInfo(0, "FakeGPU", total_bytes=100, used_bytes=30, free_bytes=60).available_bytes
            70
        """
        return self.total_bytes - self.used_bytes


class GpuInventory(ABC):
    """The GPUs of this machine, optionally restricted and reordered by ``cluster.gpus``.

    Args:
        indices: GPU indices to expose, in this order; ``None`` exposes all of them.
    """

    kind: Literal["nvml", "fake"]

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        self.indices = list(indices) if indices is not None else None

    def gpus(self) -> list[GpuInfo]:
        """The selected GPUs with their memory as of now.

        Raises:
            SettingsError: ``cluster.gpus`` names a GPU this machine does not have.
        """
        found = {gpu.index: gpu for gpu in self._all_gpus()}
        if self.indices is None:
            return sorted(found.values(), key=lambda gpu: gpu.index)
        missing = [index for index in self.indices if index not in found]
        if missing:
            have = ", ".join(str(index) for index in sorted(found)) or "none"
            raise SettingsError(f"settings: cluster.gpus: no GPU {missing} on this machine (have: {have})")
        return [found[index] for index in self.indices]

    def gpu(self, index: int) -> GpuInfo:
        """One GPU by index, whether or not ``cluster.gpus`` selected it.

        Raises:
            KeyError: the machine has no GPU ``index``.
        """
        for gpu in self._all_gpus():
            if gpu.index == index:
                return gpu
        raise KeyError(f"no GPU {index} on this machine")

    @abstractmethod
    def _all_gpus(self) -> list[GpuInfo]:
        """Every GPU of the machine, unfiltered."""

    @abstractmethod
    def process_used_bytes(self, gpu_index: int, pid: int) -> int | None:
        """GPU memory process ``pid`` holds on GPU ``gpu_index``; None when it cannot be told.

        NVML lists host PIDs; inside a container whose PID namespace differs, or where the
        driver withholds per-process numbers, the process is not found and this is None.
        """

    def close(self) -> None:  # noqa: B027 - only NVML has something to release
        """Release what the inventory holds (NVML's handle); idempotent."""

    def __enter__(self) -> GpuInventory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class NvmlUnavailableError(RuntimeError):
    """NVML cannot be used here: no driver, no library, or no GPU."""


class NvmlInventory(GpuInventory):
    """Real GPUs through NVML; initialises NVML on construction and shuts it down on close.

    NVML stays initialised for the inventory's life because a memory sampler reads it every
    ~50 ms, and a fresh ``nvmlInit`` can take far longer than that on machines without
    persistence mode.

    Attributes:
        count: number of GPUs the driver reported at construction, before any selection.

    Raises:
        NvmlUnavailableError: the library or driver is missing (``NVMLError_LibraryNotFound``,
            ``NVMLError_DriverNotLoaded``, ...), or ``pynvml`` is not installed.
    """

    kind = "nvml"

    def __init__(self, indices: Sequence[int] | None = None) -> None:
        super().__init__(indices)
        try:
            # Imported here: machines without GPUs never need it, and the fast suite's
            # FutureWarning filter stays irrelevant unless NVML is really used.
            import pynvml
        except ImportError as exc:
            raise NvmlUnavailableError(f"pynvml is not importable: {exc}") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailableError(f"NVML did not initialise: {exc}") from exc
        try:
            self.count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise NvmlUnavailableError(f"NVML cannot count GPUs: {exc}") from exc
        self._nvml: ModuleType | None = pynvml

    def _module(self) -> ModuleType:
        if self._nvml is None:
            raise RuntimeError("NvmlInventory used after close()")
        return self._nvml

    def _all_gpus(self) -> list[GpuInfo]:
        nvml = self._module()
        me = os.getpid()
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            # nvidia-ml-py before 11.515 returned bytes.
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            mine = _pid_usage(nvml.nvmlDeviceGetComputeRunningProcesses(handle), me) or 0
            # used - mine, not total - free: what other processes and the driver hold.
            used_by_others = max(0, memory.total - memory.free - mine)
            gpus.append(GpuInfo(index, name, memory.total, used_by_others, memory.free))
        return gpus

    def process_used_bytes(self, gpu_index: int, pid: int) -> int | None:
        nvml = self._module()
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        return _pid_usage(nvml.nvmlDeviceGetComputeRunningProcesses(handle), pid)

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


def _pid_usage(processes: Sequence[object], pid: int) -> int | None:
    """Sum of ``usedGpuMemory`` over NVML process entries of ``pid`` (MIG lists one per slice).

    NVML reports ``usedGpuMemory`` as None where it cannot tell (e.g. Windows WDDM).
    """
    readings = [getattr(p, "usedGpuMemory", None) for p in processes if getattr(p, "pid", None) == pid]
    known = [reading for reading in readings if reading is not None]
    return sum(known) if known else None


class FakeInventory(GpuInventory):
    """The fake GPUs of ``cluster.fake_gpus`` (index = position), used where NVML is absent.

    Args:
        cluster: the cluster settings holding ``fake_gpus``.
        ledger_dir: the fake device ledger directory of this work dir; ``None`` or a missing
            ledger means nobody holds anything yet.
        indices: GPU indices to expose, in this order; ``None`` exposes all of them.

    Examples:
        >>> from trackset.config.settings import FakeGpu
        >>> cluster = ClusterSettings(fake_gpus=[FakeGpu(memory_gb=8), FakeGpu(name="Big", memory_gb=16)])
        >>> [(gpu.index, gpu.name, gpu.available_bytes) for gpu in FakeInventory(cluster, indices=[1]).gpus()]
        [(1, 'Big', 17179869184)]
    """

    kind = "fake"

    def __init__(
        self, cluster: ClusterSettings, ledger_dir: Path | None = None, indices: Sequence[int] | None = None
    ) -> None:
        super().__init__(indices)
        self.cluster = cluster
        self.ledger_dir = ledger_dir

    def device(self, gpu_index: int) -> FakeDevice | None:
        """The ledger-backed fake device of one GPU, or None without a ledger directory."""
        if self.ledger_dir is None:
            return None
        capacity = gib_to_bytes(self.cluster.fake_gpus[gpu_index].memory_gb)
        return FakeDevice(self.ledger_dir, gpu_index, capacity)

    def _all_gpus(self) -> list[GpuInfo]:
        me = os.getpid()
        gpus = []
        for index, fake in enumerate(self.cluster.fake_gpus):
            total = gib_to_bytes(fake.memory_gb)
            device = self.device(index)
            holdings = device.holdings() if device is not None else {}
            others = sum(held for pid, held in holdings.items() if pid != me)
            free = max(0, total - sum(holdings.values()))
            gpus.append(GpuInfo(index, fake.name, total, others, free))
        return gpus

    def process_used_bytes(self, gpu_index: int, pid: int) -> int | None:
        device = self.device(gpu_index)
        return device.held_bytes(pid) if device is not None else None


def detect_inventory(cluster: ClusterSettings, ledger_dir: Path | None = None) -> GpuInventory:
    """NVML when it initialises and reports at least one GPU, else the fake inventory.

    ``cluster.gpus`` restricts and orders the GPUs of either kind ("auto" keeps all).

    Args:
        cluster: cluster settings (``gpus``, ``fake_gpus``).
        ledger_dir: the fake device ledger directory, read only by the fake inventory.
    """
    indices = None if cluster.gpus == "auto" else cluster.gpus
    try:
        nvml = NvmlInventory(indices)
    except NvmlUnavailableError:
        return FakeInventory(cluster, ledger_dir, indices)
    if nvml.count >= 1:
        return nvml
    nvml.close()
    return FakeInventory(cluster, ledger_dir, indices)
