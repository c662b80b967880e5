"""Adapters from the real models (ViPE, TAPIP3D, WiLoR, SAM3, DiffuEraser, CoTracker3) to the
backend Protocols.

Each adapter module imports its model package lazily, inside ``load()``, so trackset
imports and runs (with synthetic backends) where none of them is installed. Each also has
a module-level ``check_available(section)`` that finds a missing package or weight file
without importing anything heavy, so a run fails at start, before touching any video,
with one line that says what is missing and how to run without it.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.geometry``, ``trackset.gpu``, ``trackset.stages``
(tests/unit/test_import_structure.py).
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import import_module
from pathlib import Path

from trackset.config.settings import Settings
from trackset.errors import ModelUnavailableError
from trackset.stages.registry import GPU_STAGES, enabled_stages, stage_spec

DOCS = "docs/real-models.md"


def module_available(name: str) -> bool:
    """Whether ``import name`` can succeed, without importing it (only its parents).

    Examples:
        >>> module_available("json"), module_available("surely_not_a_module_name")
        (True, False)
    """
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def unavailable(stage: str, what: str) -> ModelUnavailableError:
    """The one-line error for a missing model part of ``stage``'s real backend.

    Examples:
        >>> print(unavailable("hands", "the 'wilor' package"))
        backend 'real' for hands needs the 'wilor' package; set hands.backend: synthetic to run without it
    """
    return ModelUnavailableError(
        f"backend 'real' for {stage} needs {what}; set {stage}.backend: synthetic to run without it"
    )


def require_modules(stage: str, modules: tuple[str, ...], install: str) -> None:
    """Raise :func:`unavailable` naming the first of ``modules`` that cannot be imported."""
    for name in modules:
        if not module_available(name):
            raise unavailable(stage, f"the '{name}' package ({install}, see {DOCS})")


def require_file(stage: str, setting: str, path: Path | None, what: str) -> Path:
    """``path`` if it is an existing file, else :func:`unavailable` naming the setting."""
    if path is None:
        raise unavailable(stage, f"{what}: set {stage}.{setting} (see {DOCS})")
    if not Path(path).is_file():
        raise unavailable(stage, f"{what} at {stage}.{setting} = {path}, which is not a file (see {DOCS})")
    return Path(path)


def release_cuda_memory() -> None:
    """Hand cached CUDA blocks back to the driver after a model is dropped (no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_device() -> str:
    """The device a model runs on in this worker: its one visible GPU, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_real_backends(settings: Settings) -> None:
    """Fail before any video is touched when a stage set to ``backend: real`` cannot load.

    The adapter of each stage the run includes is the module the stage table names for
    ``backend: real`` (:mod:`trackset.stages.registry`); its ``check_available(section)``
    looks for the package and weights without importing anything heavy. A stage the
    settings leave out (human removal off, the other track type) is not checked.

    Raises:
        ModelUnavailableError: one line naming the missing package or file and the setting.
    """
    included = set(enabled_stages(settings))
    for stage in (name for name in GPU_STAGES if name in included):
        section = getattr(settings, stage)
        if section.backend == "real":
            module = stage_spec(stage).backends["real"].partition(":")[0]
            import_module(module).check_available(section)
