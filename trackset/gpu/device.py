"""The GPU a worker process was pinned to: real CUDA, or a fake GPU on a CPU machine.

A GPU stage asks for its device once, in ``setup()``: it gets an allocator for its model
backend (where the synthetic backends charge their memory) and a probe that measures each
video's peak exactly as DECISIONS.md defines it. On a CPU machine the fake device of
``trackset.gpu.fake_device`` stands in, with its capacity from ``cluster.fake_gpus``, so the
profiler, the sizing and the out-of-memory policy run unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from trackset.config.settings import FakeGpu
from trackset.gpu.allocator import Allocator, TorchAllocator
from trackset.gpu.fake_device import FakeDevice, current_fake_device, ledger_dir_for
from trackset.gpu.inventory import GpuInventory, NvmlInventory, NvmlUnavailableError
from trackset.gpu.memory_probe import VideoMemoryProbe
from trackset.gpu.pinning import visible_gpu_index


@dataclass
class WorkerDevice:
    """This worker's GPU: where models allocate and how a video's peak is measured."""

    kind: Literal["cuda", "fake"]
    gpu_index: int
    allocator: Allocator
    fake: FakeDevice | None = None
    nvml: GpuInventory | None = None

    def probe(self) -> VideoMemoryProbe:
        """A fresh probe for one video (use as a context manager around ``process``)."""
        if self.fake is not None:
            return VideoMemoryProbe.for_fake(self.fake)
        return VideoMemoryProbe.for_cuda(self.nvml, self.gpu_index)

    def release(self) -> None:
        """Give back whatever this process still holds on a fake GPU (teardown, crashes)."""
        if self.fake is not None:
            self.fake.release_all()


def worker_device(work_dir: Path, fake_gpus: Sequence[FakeGpu]) -> WorkerDevice:
    """The device of this worker process, read from ``CUDA_VISIBLE_DEVICES`` at call time.

    Call it inside worker code (stage ``setup``), never at import: Dask's Nanny sets the
    variable after the worker has imported its modules (PLATFORM-NOTES.md).
    """
    gpu = visible_gpu_index()
    if torch.cuda.is_available():
        try:
            nvml: GpuInventory | None = NvmlInventory([gpu])
        except NvmlUnavailableError:  # CUDA without NVML: the probe reads PyTorch's allocator only
            nvml = None
        return WorkerDevice("cuda", gpu, TorchAllocator(), nvml=nvml)
    fake = current_fake_device(fake_gpus, ledger_dir_for(work_dir))
    return WorkerDevice("fake", fake.gpu_index, fake, fake)
