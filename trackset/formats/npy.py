"""Reading ``.npy`` and ``.npz`` files from several threads of one process.

numpy parses every array header with ``ast.literal_eval``, and CPython's AST constructor keeps
its recursion depth in state the interpreter's threads share, so two threads parsing at once
can fail with ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905
and the reports around it). It happened to a video's depth stage on the thread runner, whose
tasks read intermediates at once; Dask workers with several threads do the same. So every
array trackset reads from a work directory is opened here, one thread at a time: a memory-map
holds the lock for its header only, an ``.npz`` for each member it reads.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

_PARSING = threading.Lock()


def open_npy(path: Path) -> np.ndarray:
    """``path`` memory-mapped read-only (the header parsed, no pixel loaded yet).

    Raises:
        OSError, ValueError, EOFError: as ``np.load`` (EOFError: an empty file).
    """
    with _PARSING:
        return np.load(path, mmap_mode="r")


def read_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` (those named by ``keys``, default every one).

    Raises:
        OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError: as ``np.load`` and its
            members (KeyError: a key the file lacks).
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {}
        for key in data.files if keys is None else keys:
            with _PARSING:
                arrays[key] = data[key]
        return arrays
