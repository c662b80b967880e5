"""MANO's model file without chumpy, for WiLoR on Python 3.11 and later.

WiLoR builds MANO through smplx (``wilor/models/mano_wrapper.py``: ``MANO(smplx.MANOLayer)``),
and smplx 0.1.28 reads ``MANO_RIGHT.pkl`` with a plain ``pickle.load(..., encoding="latin1")``
(``smplx/body_models.py``, ``MANO.__init__``). The file from mano.is.tue.mpg.de is a Python 2
pickle that holds some arrays as chumpy objects (``chumpy.ch.Ch``), so that load imports chumpy,
which fails on Python 3.11 (``inspect.getargspec``) and does not build under pip's build
isolation. smplx turns every field into a numpy array anyway (``np.array(...)``, ``to_np``).

:func:`write_numpy_mano` reads the file with an unpickler that knows a fixed list of globals:
numpy arrays and dtypes, scipy's sparse matrices, the helpers Python 2 pickles use to rebuild
objects, and ``chumpy.ch.Ch``, whose pickled state (``Ch.__getstate__``: its ``__dict__``)
keeps the array in ``x``; that array takes the object's place. Anything else is refused, so the
file cannot run code. The result, numpy and scipy only, is pickled again for smplx to load.
"""

from __future__ import annotations

import codecs
import copyreg
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

CHUMPY_ARRAY = ("chumpy.ch", "Ch")  # the one chumpy class a MANO file holds: a plain array
SPARSE = frozenset({"csc_matrix", "csr_matrix", "coo_matrix"})


class ManoFileError(ValueError):
    """The MANO file holds something other than arrays (names the file and what)."""


class _ChumpyArray:
    """Stands in for ``chumpy.ch.Ch`` while unpickling: keeps the state chumpy would restore."""

    state: dict[str, Any]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = state


def _numpy_global(module: str, name: str) -> Any:
    """numpy's reconstructors under either of their module names (numpy 1: ``numpy.core``, 2: ``numpy._core``)."""
    for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"{module}.{name}")


class _ManoUnpickler(pickle.Unpickler):
    """Builds only arrays, sparse matrices, plain containers and chumpy arrays."""

    def __init__(self, handle: io.BufferedIOBase, path: Path) -> None:
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == CHUMPY_ARRAY:
            return _ChumpyArray
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return _numpy_global(module, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module.startswith("scipy.sparse") and name in SPARSE:
            return getattr(scipy.sparse, name)
        if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
            return copyreg._reconstructor  # type: ignore[attr-defined]  # private, not in typeshed
        if module in ("__builtin__", "builtins") and name in ("object", "set", "frozenset"):
            return {"object": object, "set": set, "frozenset": frozenset}[name]
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return codecs.encode
        raise ManoFileError(f"{self.path}: refusing {module}.{name} (a MANO file holds arrays only)")


def _plain(value: Any, path: Path, key: str) -> Any:
    """``value`` with a chumpy array replaced by its numpy array."""
    if isinstance(value, _ChumpyArray):
        if "x" not in value.state:
            raise ManoFileError(f"{path}: {key} is a chumpy object without an array")
        return np.asarray(value.state["x"])
    return value


def read_mano(path: Path) -> dict[str, Any]:
    """The fields of a MANO pickle, chumpy arrays as numpy arrays.

    Raises:
        ManoFileError: the file names a global outside the list, or is not a dict of fields.
    """
    with open(path, "rb") as handle:
        data = _ManoUnpickler(handle, Path(path)).load()
    if not isinstance(data, dict):
        raise ManoFileError(f"{path}: a MANO file is a dict of fields, this one is a {type(data).__name__}")
    return {key: _plain(value, Path(path), str(key)) for key, value in data.items()}


def write_numpy_mano(source: Path, target: Path) -> Path:
    """``source`` (a MANO pickle) rewritten at ``target`` with numpy and scipy objects only."""
    fields = read_mano(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        pickle.dump(fields, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return target
