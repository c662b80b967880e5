"""What every GPU stage shares: a model backend loaded once per worker, on this worker's GPU.

The stage picks the backend named by its ``backend`` setting, loads it once per worker
process, measures each video's peak memory on the worker's device, and frees the model
(and the CUDA cache, or its share of a fake GPU) at teardown.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from importlib import import_module
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from trackset.domain import VideoRef
from trackset.errors import BadInputError, ModelUnavailableError
from trackset.gpu.allocator import Allocator
from trackset.gpu.device import WorkerDevice, worker_device
from trackset.stages.backends import ModelBackend
from trackset.stages.base import Stage
from trackset.stages.config import ModelStageConfig
from trackset.stages.registry import stage_spec

BackendT = TypeVar("BackendT", bound=ModelBackend)


def import_backend(target: str, stage: str, backend: str) -> type[Any]:
    """The backend class at ``"module:Class"``, imported only when chosen.

    Raises:
        ModelUnavailableError: the adapter module or a package it needs is not installed.
    """
    module_name, _, class_name = target.partition(":")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelUnavailableError(
            f"{stage}.backend is {backend!r} but {module_name} cannot be imported ({exc}); "
            f"install the model and its adapter, or set {stage}.backend: synthetic"
        ) from exc
    backend_class: type[Any] = getattr(module, class_name)
    return backend_class


class ModelStage(Stage[ModelStageConfig], Generic[BackendT]):
    """A GPU stage around a model backend, loaded once per worker process.

    The backend class is the one the stage table (:mod:`trackset.stages.registry`) names
    for the ``backend`` setting. A real adapter is constructed with the stage's section; a
    synthetic backend also gets its synthetic settings and the ``allocator`` its memory is
    charged to, which the caller may set to a fake device's ledger (tests).
    """

    def __init__(self, config: ModelStageConfig, allocator: Allocator | None = None) -> None:
        super().__init__(config)
        self.allocator = allocator
        self.device: WorkerDevice | None = None
        self.backend: BackendT | None = None

    def build_backend(self) -> BackendT:
        """A new, unloaded backend as the stage's ``backend`` setting says."""
        backend = self.config.section.backend
        target = stage_spec(self.name).backends[backend]
        factory = import_backend(target, self.name, backend)
        if self.config.synthetic is None:
            built: BackendT = factory(self.config.section)
        else:
            built = factory(self.config.section, self.config.synthetic, allocator=self.allocator)
        return built

    def setup(self) -> None:
        """Take this worker's GPU (real or fake), then build and load the backend once.

        An allocator given to the constructor (tests) wins over the worker's device.
        """
        if self.allocator is None:
            self.device = worker_device(self.config.paths.work_dir, self.config.fake_gpus)
            self.allocator = self.device.allocator
        self.loaded_backend()

    def memory_probe(self) -> AbstractContextManager[Any]:
        """Peak of one video on this worker's device (DECISIONS.md), once set up."""
        return self.device.probe() if self.device is not None else nullcontext()

    def after_out_of_memory(self) -> None:
        """Hand the blocks a failed video left in PyTorch's cache back to the driver, so the
        chunk's next video starts from what the model itself holds."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

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
