"""What a synthetic backend pretends to cost: memory held, GPU time, CPU work.

Packing workers onto GPUs, profiling their peak memory and shrinking after an out-of-memory
error can only be tested if the stand-in models *behave* like ViPE, TAPIP3D and WiLoR: a
large allocation held while loaded, more per video and per frame, a GPU phase that workers
sharing a GPU cannot overlap, and real CPU work. :class:`SimulatedCost` plays that part from a
:class:`~trackset.config.settings.SyntheticStageCost`; where the memory comes from is an
:class:`~trackset.gpu.allocator.Allocator`: real torch tensors by default
(:class:`~trackset.gpu.allocator.TorchAllocator`), or the fake device's cross-process ledger
plugged in by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from trackset.config.settings import SyntheticStageCost
from trackset.gpu.allocator import Allocator, TorchAllocator

MIB = 2**20


def mib_to_bytes(mib: float) -> int:
    """Whole bytes of ``mib`` MiB (settings give sizes in MiB).

    Examples:
        >>> mib_to_bytes(1.5)
        1572864
    """
    return round(mib * MIB)


def burn_cpu(seconds: float) -> int:
    """Do real CPU work (small matrix products) for ``seconds``; returns the products done.

    Small 64x64 products stay on one core (BLAS does not spread them over threads), like the
    single-threaded post-processing of a worker with ``cpus=1``.
    """
    if seconds <= 0:
        return 0
    deadline = time.perf_counter() + seconds
    matrix = np.full((64, 64), 1.0 / 64)  # row-stochastic: powers stay bounded
    state = matrix.copy()
    products = 0
    while time.perf_counter() < deadline:
        state = state @ matrix
        products += 1
    return products


class SimulatedCost:
    """Memory and time a synthetic backend spends, from its stage's cost settings.

    ``load()`` holds ``model_mb`` until ``unload()``; each ``video(T)`` holds
    ``per_video_mb + per_frame_mb * T`` while it runs, spends ``gpu_s_per_frame * T`` in the
    allocator's GPU phase before the body and ``cpu_s_per_frame * T`` of CPU work after it.
    """

    def __init__(self, cost: SyntheticStageCost, allocator: Allocator | None = None) -> None:
        self.cost = cost
        self.allocator: Allocator = allocator if allocator is not None else TorchAllocator()
        self._model_bytes: int | None = None  # None: not loaded

    @property
    def loaded(self) -> bool:
        return self._model_bytes is not None

    def load(self) -> None:
        """Take the model's memory and spend its load time; a second call does nothing."""
        if self.loaded:
            return
        nbytes = mib_to_bytes(self.cost.model_mb)
        if nbytes:
            self.allocator.allocate(nbytes)
        self._model_bytes = nbytes
        time.sleep(self.cost.load_s)

    def unload(self) -> None:
        """Give the model's memory back; safe to call when not loaded."""
        if self._model_bytes:
            self.allocator.release(self._model_bytes)
        self._model_bytes = None

    def video_bytes(self, num_frames: int) -> int:
        """Bytes held while a video of ``num_frames`` frames is processed."""
        return mib_to_bytes(self.cost.per_video_mb + self.cost.per_frame_mb * num_frames)

    @contextmanager
    def video(self, num_frames: int) -> Iterator[None]:
        """Hold a video's memory around the body, with the GPU phase before and CPU work after.

        Zero costs skip the allocator entirely (no ledger round trip, no GPU lock).
        """
        nbytes = self.video_bytes(num_frames)
        if nbytes:
            self.allocator.allocate(nbytes)
        try:
            gpu_s = self.cost.gpu_s_per_frame * num_frames
            if gpu_s > 0:
                with self.allocator.gpu_phase():
                    time.sleep(gpu_s)
            yield
            burn_cpu(self.cost.cpu_s_per_frame * num_frames)
        finally:
            if nbytes:
                self.allocator.release(nbytes)
