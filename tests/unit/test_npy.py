"""trackset.formats.npy: array headers are parsed one thread at a time.

CPython's AST constructor shares its recursion depth between threads, so numpy's header
parsing (``ast.literal_eval``) in two threads at once can raise ``SystemError: AST
constructor recursion depth mismatch``; it failed a video of the thread runner in CI.
"""

from __future__ import annotations

import ast
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import trackset
from trackset.formats.npy import open_npy, read_npz


class Overlap:
    """Wraps ``ast.literal_eval``, slowed down, and records how many threads were in it at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.lock = threading.Lock()
        self.literal_eval = ast.literal_eval

    def __call__(self, node_or_string):  # type: ignore[no-untyped-def]
        with self.lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(0.005)
            return self.literal_eval(node_or_string)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.fixture
def overlap(monkeypatch: pytest.MonkeyPatch) -> Overlap:
    watch = Overlap()
    monkeypatch.setattr(ast, "literal_eval", watch)
    return watch


def many_threads(read, paths: list[Path]) -> list:  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(read, paths))


def test_memory_maps_parse_their_headers_one_thread_at_a_time(tmp_path, overlap):
    paths = []
    for number in range(16):
        paths.append(tmp_path / f"{number}.npy")
        np.save(paths[-1], np.full((number + 1, 2), number, np.uint8))
    arrays = many_threads(open_npy, paths)
    assert [array.shape[0] for array in arrays] == list(range(1, 17))
    assert all(not array.flags.writeable for array in arrays)
    assert overlap.most == 1


def test_npz_members_are_parsed_one_thread_at_a_time(tmp_path, overlap):
    paths = []
    for number in range(16):
        paths.append(tmp_path / f"{number}.npz")
        np.savez(paths[-1], a=np.arange(number), b=np.full(3, number))
    arrays = many_threads(read_npz, paths)
    assert [(len(found["a"]), int(found["b"][0])) for found in arrays] == [(n, n) for n in range(16)]
    assert overlap.most == 1
    assert set(read_npz(paths[3], ("b",))) == {"b"}


def test_the_check_sees_overlap_where_numpy_is_called_directly(tmp_path, overlap):
    """The control: without the module's lock, eight threads do parse at once."""
    paths = []
    for number in range(16):
        paths.append(tmp_path / f"{number}.npy")
        np.save(paths[-1], np.zeros(number + 1))
    many_threads(lambda path: np.load(path, mmap_mode="r"), paths)
    assert overlap.most > 1


def test_trackset_reads_arrays_only_through_the_module():
    """Every ``np.load`` of trackset's pipeline is in trackset/formats/npy.py (the synthetic
    script-pipeline writer, used by tests and benchmarks in one thread, aside)."""
    root = Path(trackset.__file__).parent
    callers = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "load" and getattr(node.value, "id", None) == "np":
                callers.append(str(path.relative_to(root)))
    assert sorted(set(callers)) == ["formats/npy.py", "synthetic/script_format.py"]
