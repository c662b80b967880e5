"""A fake GPU for machines without one, so packing, profiling and OOM handling run for real.

DECISIONS.md ("GPU memory"): each fake GPU has a capacity and a *ledger* shared by every
worker process on the machine. The synthetic models charge their footprint to the ledger of
their GPU (``CUDA_VISIBLE_DEVICES``) on load and per video and release it afterwards; an
allocation that would push the sum over all processes beyond the capacity raises the real
``torch.cuda.OutOfMemoryError``, so the retry and shrink policies see what a GPU would raise.

On disk, under a ledger directory (``<work_dir>/.fake_gpu/``, see :func:`ledger_dir_for`),
each GPU ``i`` has:

- ``gpu<i>.json``: ``{"held": {pid: bytes}, "peak": {pid: bytes}}``, the bytes each
  process holds now and its high-water mark. Replaced atomically, so a process killed
  mid-write never leaves a torn ledger.
- ``gpu<i>.lock``: ``flock`` guarding every read-modify-write of the ledger.
- ``gpu<i>.phase.lock``: ``flock`` held for a worker's "GPU time" (:meth:`FakeDevice.gpu_phase`),
  so two workers on one fake GPU cannot overlap their GPU phases, as on a saturated GPU,
  while their CPU phases run in parallel.

Entries of dead processes are dropped on every access, so a crashed worker never leaks its
memory into later runs. Accounting is per process id: Dask GPU workers run one thread each,
and threads of one process share what it holds, as they share a CUDA context. ``flock``
locks belong to an open file, and every operation opens its own, so threads of one process
exclude each other too. Linux (``fcntl``) only.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from trackset.config.settings import FakeGpu
from trackset.formats.layout import write_text_atomic
from trackset.gpu.pinning import visible_gpu_index
from trackset.gpu.sizing import gib_to_bytes

if TYPE_CHECKING:
    import torch

LEDGER_DIRNAME = ".fake_gpu"

_T = TypeVar("_T")


def ledger_dir_for(work_dir: Path) -> Path:
    """The fake device ledger directory of a work dir, shared by all its workers.

    Examples:
        >>> ledger_dir_for(Path("work")).as_posix()
        'work/.fake_gpu'
    """
    return work_dir / LEDGER_DIRNAME


def format_size(nbytes: int) -> str:
    """Bytes in the units PyTorch's out-of-memory messages use.

    Examples:
        >>> format_size(512), format_size(20 * 1024**2), format_size(3 * 1024**3 // 2)
        ('512 bytes', '20.00 MiB', '1.50 GiB')
    """
    for limit, unit in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if nbytes >= limit:
            return f"{nbytes / limit:.2f} {unit}"
    return f"{nbytes} bytes"


def _is_alive(pid: int) -> bool:
    """True while ``pid`` exists (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@dataclass
class _Ledger:
    """One fake GPU's ledger: bytes held now and high-water marks, per process id.

    ``peak`` restarts per video (the memory probe); ``top`` is the process's high-water over
    its life and ``holders`` the most processes that held memory on the GPU at once: what a
    test reads to see that a stage's model was released before the next one loaded, and how
    many workers shared the GPU.
    """

    held: dict[int, int] = field(default_factory=dict)
    peak: dict[int, int] = field(default_factory=dict)
    top: dict[int, int] = field(default_factory=dict)
    holders: int = 0

    @classmethod
    def parse(cls, text: str) -> _Ledger:
        data = json.loads(text) if text else {}
        return cls(
            held={int(pid): int(n) for pid, n in data.get("held", {}).items()},
            peak={int(pid): int(n) for pid, n in data.get("peak", {}).items()},
            top={int(pid): int(n) for pid, n in data.get("top", {}).items()},
            holders=int(data.get("holders", 0)),
        )

    def dump(self) -> str:
        return json.dumps(
            {"held": self.held, "peak": self.peak, "top": self.top, "holders": self.holders}, sort_keys=True
        )

    def drop_dead(self) -> None:
        for pid in set(self.held) | set(self.peak) | set(self.top):
            if not _is_alive(pid):
                self.held.pop(pid, None)
                self.peak.pop(pid, None)
                self.top.pop(pid, None)


class FakeDevice:
    """One fake GPU as seen from this process.

    Args:
        ledger_dir: directory of the shared ledgers (created on first use).
        gpu_index: the fake GPU's index (position in ``cluster.fake_gpus``).
        capacity_bytes: the fake GPU's memory.
        materialize: also allocate and touch that much host memory per allocation, so the
            process's peak RSS (VmHWM) grows with the fake GPU memory and can cross-check
            the ledger's high-water mark. The host buffers belong to this instance: release
            through the instance that allocated (the ledger itself is per process).

    Examples:
        >>> import tempfile
        >>> ledgers = tempfile.TemporaryDirectory()
        >>> device = FakeDevice(Path(ledgers.name), gpu_index=0, capacity_bytes=1000)
        >>> with device.hold(600):
        ...     device.held_bytes()
        600
        >>> device.held_bytes(), device.peak_bytes()
        (0, 600)
        >>> device.allocate(1001)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1001 bytes. GPU 0 has a total capacity...
        >>> ledgers.cleanup()
    """

    def __init__(self, ledger_dir: Path, gpu_index: int, capacity_bytes: int, *, materialize: bool = False) -> None:
        if gpu_index < 0:
            raise ValueError(f"gpu_index must be non-negative, got {gpu_index}")
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.ledger_dir = Path(ledger_dir)
        self.gpu_index = gpu_index
        self.capacity_bytes = capacity_bytes
        self.materialize = materialize
        self.ledger_path = self.ledger_dir / f"gpu{gpu_index}.json"
        self._lock_path = self.ledger_dir / f"gpu{gpu_index}.lock"
        self._phase_lock_path = self.ledger_dir / f"gpu{gpu_index}.phase.lock"
        self._buffers: list[mmap.mmap] = []
        self._buffers_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FakeDevice(gpu {self.gpu_index}, {format_size(self.capacity_bytes)}, {self.ledger_dir})"

    # -- ledger access -------------------------------------------------------------------

    @contextmanager
    def _flock(self, path: Path) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``path`` (a fresh open file, so threads exclude too)."""
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _transact(self, change: Callable[[_Ledger], _T]) -> _T:
        """Apply ``change`` to the ledger under its lock and save it unless ``change`` raised."""
        with self._flock(self._lock_path):
            text = self.ledger_path.read_text() if self.ledger_path.exists() else ""
            ledger = _Ledger.parse(text)
            ledger.drop_dead()
            result = change(ledger)
            new_text = ledger.dump()
            if new_text != text:
                write_text_atomic(self.ledger_path, new_text)
            return result

    def _read(self) -> _Ledger:
        # A ledger nobody wrote yet is empty; reading it must not create files, so an
        # inventory can look at a work dir without leaving traces in it.
        if not self.ledger_path.exists():
            return _Ledger()
        return self._transact(lambda ledger: ledger)

    # -- allocation ------------------------------------------------------------------------

    def allocate(self, nbytes: int) -> None:
        """Charge ``nbytes`` to this process on the fake GPU.

        Raises:
            torch.cuda.OutOfMemoryError: the GPU's holders would exceed its capacity; nothing
                is charged then.
        """
        if nbytes < 0:
            raise ValueError(f"cannot allocate a negative size ({nbytes})")
        me = os.getpid()

        def charge(ledger: _Ledger) -> None:
            in_use = sum(ledger.held.values())
            if in_use + nbytes > self.capacity_bytes:
                raise self._out_of_memory(nbytes, ledger)
            ledger.held[me] = ledger.held.get(me, 0) + nbytes
            ledger.peak[me] = max(ledger.peak.get(me, 0), ledger.held[me])
            ledger.top[me] = max(ledger.top.get(me, 0), ledger.held[me])
            ledger.holders = max(ledger.holders, sum(1 for held in ledger.held.values() if held))

        self._transact(charge)
        if self.materialize and nbytes:
            try:
                buffer = _touched_buffer(nbytes)
            except (MemoryError, OSError):
                self._uncharge(nbytes)
                raise
            with self._buffers_lock:
                self._buffers.append(buffer)

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` this process holds (its high-water mark stays).

        Raises:
            ValueError: releasing more than this process holds (a bookkeeping bug).
        """
        if nbytes < 0:
            raise ValueError(f"cannot release a negative size ({nbytes})")
        self._uncharge(nbytes)
        self._free_buffers(nbytes)

    def _uncharge(self, nbytes: int) -> None:
        """Take ``nbytes`` off this process's ledger entry (host buffers untouched)."""
        me = os.getpid()

        def give_back(ledger: _Ledger) -> None:
            held = ledger.held.get(me, 0)
            if nbytes > held:
                raise ValueError(f"process {me} releases {nbytes} bytes but holds {held} on GPU {self.gpu_index}")
            if held == nbytes:
                ledger.held.pop(me, None)
            else:
                ledger.held[me] = held - nbytes

        self._transact(give_back)

    def release_all(self) -> None:
        """Forget everything this process held and its high-water mark (stage teardown)."""
        me = os.getpid()

        def forget(ledger: _Ledger) -> None:
            ledger.held.pop(me, None)
            ledger.peak.pop(me, None)

        self._transact(forget)
        with self._buffers_lock:
            self._buffers.clear()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` for the duration of the block, released even on errors."""
        self.allocate(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    # -- readings ----------------------------------------------------------------------------

    def holdings(self) -> dict[int, int]:
        """Bytes held now by each live process; empty when no ledger exists yet."""
        return dict(self._read().held)

    def held_bytes(self, pid: int | None = None) -> int:
        """Bytes process ``pid`` (default: this one) holds now."""
        return self._read().held.get(os.getpid() if pid is None else pid, 0)

    def peak_bytes(self, pid: int | None = None) -> int:
        """High-water mark of process ``pid`` (default: this one) since its last reset."""
        return self._read().peak.get(os.getpid() if pid is None else pid, 0)

    def lifetime_peaks(self) -> dict[int, int]:
        """Each live process's high-water mark over its life (never reset by a video or teardown)."""
        return dict(self._read().top)

    def most_holders(self) -> int:
        """The most processes that held memory on this GPU at the same time."""
        return self._read().holders

    def used_by_others(self) -> int:
        """Bytes every other live process holds on this fake GPU now."""
        me = os.getpid()
        return sum(held for pid, held in self.holdings().items() if pid != me)

    def reset_peak(self) -> None:
        """Restart this process's high-water mark from what it holds now (per video)."""
        me = os.getpid()

        def restart(ledger: _Ledger) -> None:
            held = ledger.held.get(me, 0)
            if held:
                ledger.peak[me] = held
            else:
                ledger.peak.pop(me, None)

        self._transact(restart)

    # -- GPU time ----------------------------------------------------------------------------

    @contextmanager
    def gpu_phase(self) -> Iterator[None]:
        """Run the block as this GPU's only "kernel": one process (or thread) at a time."""
        with self._flock(self._phase_lock_path):
            yield

    # -- helpers -----------------------------------------------------------------------------

    def _out_of_memory(self, nbytes: int, ledger: _Ledger) -> torch.cuda.OutOfMemoryError:
        """The error a real GPU would raise, worded like PyTorch's own message."""
        # Imported only when needed: inventories import this module and must stay light.
        import torch

        me = os.getpid()
        mine = ledger.held.get(me, 0)
        others = sum(ledger.held.values()) - mine
        free = max(0, self.capacity_bytes - mine - others)
        return torch.cuda.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {format_size(nbytes)}. GPU {self.gpu_index} has a total "
            f"capacity of {format_size(self.capacity_bytes)} of which {format_size(free)} is free. "
            f"This process has {format_size(mine)} memory in use; other processes hold {format_size(others)}. "
            "(fake device)"
        )

    def _free_buffers(self, nbytes: int) -> None:
        """Drop materialised buffers worth ``nbytes``, newest first."""
        if not self.materialize:
            return
        with self._buffers_lock:
            while nbytes > 0 and self._buffers:
                last = self._buffers.pop()
                if len(last) > nbytes:
                    keep = len(last) - nbytes
                    # Free before re-allocating the remainder, so the release cannot raise VmHWM.
                    last.close()
                    self._buffers.append(_touched_buffer(keep))
                    return
                nbytes -= len(last)
                last.close()


def _touched_buffer(nbytes: int) -> mmap.mmap:
    """Host memory that really counts in RSS, as a fresh anonymous mapping.

    Not ``np.empty``: malloc serves a large block from a free region of its heap when it has
    one, whose pages are already resident, so RSS and VmHWM would not grow (seen after a
    test session had grown the heap past 1 GiB). Each page is written once, since untouched
    pages of a mapping do not count either. Closing the mapping gives the pages back.
    """
    buffer = mmap.mmap(-1, nbytes)
    pages = np.frombuffer(buffer, dtype=np.uint8)
    pages[:: mmap.PAGESIZE] = 1
    del pages  # no export left, so the mapping can be closed
    return buffer


def current_fake_device(fake_gpus: Sequence[FakeGpu], ledger_dir: Path, *, materialize: bool = False) -> FakeDevice:
    """This worker's fake GPU: index from ``CUDA_VISIBLE_DEVICES`` (default 0), capacity from settings.

    Args:
        fake_gpus: the fake inventory (``cluster.fake_gpus``).
        ledger_dir: the ledger directory shared by the workers (:func:`ledger_dir_for`).
        materialize: see :class:`FakeDevice`.

    Raises:
        ValueError: the index has no entry in ``cluster.fake_gpus``.
    """
    index = visible_gpu_index()
    if index >= len(fake_gpus):
        raise ValueError(f"CUDA_VISIBLE_DEVICES selects fake GPU {index}, but cluster.fake_gpus has {len(fake_gpus)}")
    capacity = gib_to_bytes(fake_gpus[index].memory_gb)
    return FakeDevice(ledger_dir, index, capacity, materialize=materialize)
