"""One build per dataset at a time: an exclusive lock on the dataset directory.

Two runs on one dataset (the nightly refresh starting while a multi-day build is running,
or a CLI run beside a deployment run) would process the same videos twice and fight over
the GPUs: the second run's memory profile would see the first run's models and its videos
would run out of memory. Every run therefore holds ``<dataset_dir>/.trackset.lock`` with
``flock`` for as long as it runs, and writes who it is (host, pid, flow run id, start time)
into the file. A second run fails at once with :class:`DatasetBusyError` naming the holder.

The kernel releases a ``flock`` when its process dies, however it dies, so a lock left by
a killed run is free: the next run takes it over and says whose it was
(:attr:`DatasetLock.previous`: the run resumes that run's build). :meth:`DatasetLock.probe`
asks whether a dataset is busy without taking the lock over, so a command that checks first
leaves that record to the run. Locks are per open file, so two runs in one process exclude
each other too. On NFS, ``flock`` is forwarded to the server (NFSv4 locks), which is what
makes this work across hosts.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with DatasetLock(Path(tmp), flow_run_id="run-1") as lock:
    ...         try:
    ...             DatasetLock(Path(tmp), flow_run_id="run-2").acquire()
    ...         except DatasetBusyError as exc:
    ...             print("busy:", exc.holder.flow_run_id)
    busy: run-1
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO

from trackset.errors import TracksetError

logger = logging.getLogger(__name__)

LOCK_NAME = ".trackset.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a dataset's lock."""

    host: str
    pid: int
    flow_run_id: str
    started: str

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, flow run {self.flow_run_id or '(none)'}, since {self.started}"

    def is_dead_here(self) -> bool:
        """True when the holder ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class DatasetBusyError(TracksetError):
    """Another run holds the dataset's lock."""

    def __init__(self, dataset_dir: Path, holder: LockHolder | None) -> None:
        self.dataset_dir = dataset_dir
        self.holder = holder
        who = holder.describe() if holder else "a holder that has not written its name yet"
        super().__init__(f"dataset {dataset_dir} is being built by another run ({who}); wait for it or cancel it")

    def __reduce__(self) -> tuple[type, tuple[Path, LockHolder | None]]:
        return (type(self), (self.dataset_dir, self.holder))


class DatasetLock:
    """The exclusive lock of one dataset directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, dataset_dir: Path, flow_run_id: str = "") -> None:
        self.dataset_dir = Path(dataset_dir)
        self.path = self.dataset_dir / LOCK_NAME
        self.flow_run_id = flow_run_id
        self.previous: LockHolder | None = None
        """The run whose lock this one took over: it died holding it (it did not finish)."""
        self._handle: IO[str] | None = None

    @classmethod
    def probe(cls, dataset_dir: Path) -> None:
        """Raise :class:`DatasetBusyError` when another run holds the lock; otherwise leave
        the lock file as it is (a dead holder's record stays for the run that takes over)."""
        path = Path(dataset_dir) / LOCK_NAME
        if not path.is_file():
            return
        with open(path, "a+", encoding="utf-8") as handle:  # writable: NFS locks need it
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DatasetBusyError(Path(dataset_dir), _read_holder(handle)) from None
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def acquire(self) -> LockHolder:
        """Take the lock or raise :class:`DatasetBusyError` at once (never waits).

        Returns:
            This run's holder record, as written into the lock file.
        """
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            handle.close()
            raise DatasetBusyError(self.dataset_dir, holder) from None
        previous = self.previous = _read_holder(handle)
        if previous is not None:
            state = "no longer running" if previous.is_dead_here() else "which released it"
            logger.warning("taking over the lock of %s left by %s (%s)", self.dataset_dir, previous.describe(), state)
        me = LockHolder(socket.gethostname(), os.getpid(), self.flow_run_id, datetime.now(timezone.utc).isoformat())
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(asdict(me)))
        handle.flush()
        os.fsync(handle.fileno())
        self._handle = handle
        return me

    def release(self) -> None:
        """Empty the holder record and release the lock (idempotent)."""
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> DatasetLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(handle: IO[str]) -> LockHolder | None:
    """The holder recorded in the lock file, or None when empty or unreadable."""
    handle.seek(0)
    text = handle.read()
    try:
        data = json.loads(text)
        return LockHolder(str(data["host"]), int(data["pid"]), str(data["flow_run_id"]), str(data["started"]))
    except (ValueError, KeyError, TypeError):
        return None
