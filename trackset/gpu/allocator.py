"""Where a model's GPU memory comes from: real torch tensors, or a fake GPU's ledger.

A GPU stage hands its backend an :class:`Allocator` chosen by the worker's device
(:mod:`trackset.gpu.device`): on a CUDA machine a :class:`TorchAllocator`, on a CPU machine the
fake device of :mod:`trackset.gpu.fake_device`, which implements the same three methods. The
synthetic models charge what they pretend to hold through it, so profiling, sizing and the
out-of-memory policy see the same numbers a real model would produce.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

import torch


class Allocator(Protocol):
    """Where a model's memory is taken from and given back."""

    def allocate(self, nbytes: int) -> None:
        """Take ``nbytes``; may raise ``torch.cuda.OutOfMemoryError``."""

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` taken by an earlier :meth:`allocate`."""

    def gpu_phase(self) -> AbstractContextManager[object]:
        """Context during which this worker uses the GPU (serialised per GPU where simulated)."""


class TorchAllocator:
    """Real torch tensors: on ``cuda`` when available, else CPU memory (touched, so RSS grows).

    On a real GPU the tensors make ``torch.cuda.max_memory_reserved`` and NVML see the
    model's footprint exactly as a real model's; the GPU serialises kernels itself, so
    :meth:`gpu_phase` needs no lock.
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._blocks: list[torch.Tensor] = []

    def allocate(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        # ones, not empty: writing every page makes the memory resident, as a model's weights are.
        self._blocks.append(torch.ones(nbytes, dtype=torch.uint8, device=self.device))

    def release(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        for index in range(len(self._blocks) - 1, -1, -1):
            if self._blocks[index].numel() == nbytes:
                del self._blocks[index]
                return
        raise ValueError(f"release of {nbytes} bytes that were never allocated")

    def held_bytes(self) -> int:
        """Bytes currently held (a method, like the fake device's)."""
        return sum(block.numel() for block in self._blocks)

    def gpu_phase(self) -> AbstractContextManager[object]:
        return nullcontext()
