"""Adapters from the real models (ViPE, TAPIP3D, WiLoR, SAM3, DiffuEraser, CoTracker3) to the
backend Protocols.

Each adapter module imports its model package lazily, inside ``load()``, so trackset
imports and runs (with synthetic backends) where none of them is installed. Each also has
a module-level ``missing(section)`` that lists every missing package, weight file and
setting, without importing anything heavy, and ``check_available(section)``, which raises
them as one error. A run fails at start, before touching any video, with one error that
lists everything missing and says how to run without it (:func:`missing_error`), so one
install round fixes them all.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.geometry``, ``trackset.gpu``, ``trackset.stages``
(tests/unit/test_import_structure.py).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
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


def missing_error(missing: Mapping[str, Sequence[str]]) -> ModelUnavailableError:
    """One error naming every missing part of every stage in ``missing`` (stage -> reasons).

    A single missing part is :func:`unavailable`'s one line; several are listed under one
    line that says how to run without them, so a user sees all of them at once instead of
    one per attempt.

    Examples:
        >>> print(missing_error({"a": ["the 'x' package"], "b": ["a checkpoint", "its code"]}))
        backend 'real' for a and b needs 3 things; set a.backend and b.backend: synthetic to run without them:
          - a: the 'x' package
          - b: a checkpoint
          - b: its code
    """
    parts = [(stage, what) for stage, reasons in missing.items() for what in reasons]
    if len(parts) == 1:
        return unavailable(*parts[0])
    stages = [stage for stage, reasons in missing.items() if reasons]
    header = (
        f"backend 'real' for {_listing(stages)} needs {len(parts)} things; set "
        f"{_listing([f'{stage}.backend' for stage in stages])}: synthetic to run without "
        f"{'it' if len(stages) == 1 else 'them'}:"
    )
    return ModelUnavailableError("\n".join([header, *(f"  - {stage}: {what}" for stage, what in parts)]))


def _listing(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def raise_if_missing(stage: str, reasons: Sequence[str]) -> None:
    """Raise :func:`missing_error` for ``stage`` when ``reasons`` (an adapter's ``missing``) is not empty."""
    if reasons:
        raise missing_error({stage: reasons})


def missing_modules(modules: tuple[str, ...], install: str) -> list[str]:
    """One reason naming each of ``modules`` (installed together by ``install``) that cannot be
    imported, or none; a submodule of a package already named is not named again.

    Examples:
        >>> missing_modules(("json", "no_such_pkg", "no_such_pkg.sub", "no_such_mod"), "pip install it")
        ["the 'no_such_pkg' and 'no_such_mod' packages (pip install it, see docs/real-models.md)"]
        >>> missing_modules(("json",), "pip install it")
        []
    """
    absent: list[str] = []
    for name in modules:
        if not any(name.startswith(f"{parent}.") for parent in absent) and not module_available(name):
            absent.append(name)
    if not absent:
        return []
    names = " and ".join(f"'{name}'" for name in absent)
    return [f"the {names} package{'s' if len(absent) > 1 else ''} ({install}, see {DOCS})"]


def missing_file(stage: str, setting: str, path: Path | None, what: str) -> list[str]:
    """A reason naming the setting when ``path`` is unset or not a file, else none.

    Examples:
        >>> missing_file("tracks_3d", "weights_path", None, "the TAPIP3D checkpoint")
        ['the TAPIP3D checkpoint: set tracks_3d.weights_path (see docs/real-models.md)']
    """
    if path is None:
        return [f"{what}: set {stage}.{setting} (see {DOCS})"]
    if not Path(path).is_file():
        return [f"{what} at {stage}.{setting} = {path}, which is not a file (see {DOCS})"]
    return []


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
    ``backend: real`` (:mod:`trackset.stages.registry`); its ``missing(section)`` looks for
    the package, weights and settings without importing anything heavy. A stage the
    settings leave out (human removal off, the other track type) is not checked.

    Raises:
        ModelUnavailableError: one error naming every missing package, file and setting of
            every stage (:func:`missing_error`).
    """
    included = set(enabled_stages(settings))
    missing: dict[str, list[str]] = {}
    for stage in (name for name in GPU_STAGES if name in included):
        section = getattr(settings, stage)
        if section.backend == "real":
            module = stage_spec(stage).backends["real"].partition(":")[0]
            reasons = import_module(module).missing(section)
            if reasons:
                missing[stage] = reasons
    if missing:
        raise missing_error(missing)
