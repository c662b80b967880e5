"""What every GPU stage shares: a model backend loaded once per worker, on this worker's GPU.

The stage picks the backend named by its ``backend`` setting, loads it once per worker
process, measures each video's peak memory on the worker's device, and frees the model
(and the CUDA cache, or its share of a fake GPU) at teardown.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from trackset.device import WorkerDevice, worker_device
from trackset.errors import BadInputError, ModelUnavailableError
from trackset.settings import Settings
from trackset.stages.backends import ModelBackend
from trackset.stages.base import Stage, VideoRef
from trackset.synthetic.cost import Allocator

BackendT = TypeVar("BackendT", bound=ModelBackend)


def import_backend(target: str, stage: str) -> type[Any]:
    """The real backend class at ``"module:Class"``, imported only when chosen.

    Raises:
        ModelUnavailableError: the adapter module or a package it needs is not installed.
    """
    module_name, class_name = target.split(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelUnavailableError(
            f"{stage}.backend is 'real' but {module_name} cannot be imported ({exc}); "
            f"install the model and its adapter, or set {stage}.backend: synthetic"
        ) from exc
    return getattr(module, class_name)


class ModelStage(Stage, Generic[BackendT]):
    """A GPU stage around a model backend, loaded once per worker process.

    Subclasses name the real adapter (``real_backend``, ``"module:Class"``, constructed with
    the settings) and the synthetic class (constructed with the settings and ``allocator``,
    which the caller may set to the fake device's ledger).
    """

    real_backend: ClassVar[str]
    synthetic_backend: ClassVar[type[Any]]

    def __init__(self, settings: Settings, allocator: Allocator | None = None) -> None:
        super().__init__(settings)
        self.allocator = allocator
        self.device: WorkerDevice | None = None
        self.backend: BackendT | None = None

    def build_backend(self) -> BackendT:
        """A new, unloaded backend as the stage's ``backend`` setting says."""
        if getattr(self.settings, self.name).backend == "real":
            return import_backend(self.real_backend, self.name)(self.settings)
        return self.synthetic_backend(self.settings, allocator=self.allocator)

    def setup(self) -> None:
        """Take this worker's GPU (real or fake), then build and load the backend once.

        An allocator given to the constructor (tests) wins over the worker's device.
        """
        if self.allocator is None:
            self.device = worker_device(self.settings)
            self.allocator = self.device.allocator
        self.loaded_backend()

    def memory_probe(self) -> AbstractContextManager[Any]:
        """Peak of one video on this worker's device (DECISIONS.md), once set up."""
        return self.device.probe() if self.device is not None else nullcontext()

    def teardown(self) -> None:
        """Unload the backend and hand cached CUDA memory back to the driver."""
        if self.backend is not None:
            self.backend.unload()
            self.backend = None
        if self.device is not None:
            self.device.release()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded_backend(self) -> BackendT:
        """The loaded backend, built and loaded on first use (so ``process`` works without
        an explicit :meth:`setup`)."""
        if self.backend is None:
            backend = self.build_backend()
            backend.load()
            self.backend = backend
        return self.backend

    def check_shape(self, video: VideoRef, path: Path, key: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
        """Fail the video (not the worker) when a backend returns a wrongly shaped array."""
        if tuple(array.shape) != shape:
            reason = f"backend returned '{key}' of shape {tuple(array.shape)}, expected {shape}"
            raise BadInputError(video.video_id, self.name, path, reason)
