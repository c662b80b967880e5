"""One build per dataset at a time, and one dataset per work directory: exclusive locks.

Two runs on one dataset (the nightly refresh starting while a multi-day build is running,
or a CLI run beside a deployment run) would process the same videos twice and fight over
the GPUs: the second run's memory profile would see the first run's models and its videos
would run out of memory. Every run therefore holds ``<dataset_dir>/.trackset.lock`` with
``flock`` for as long as it runs, and writes who it is (host, pid, flow run id, start time)
into the file. A second run fails at once with :class:`DatasetBusyError` naming the holder.

Two runs of two datasets sharing one work directory (two deployments with the default
``work``) are worse: video ``00003`` of one corpus and ``00003`` of the other write the same
intermediates, and each H5 mixes one corpus's frames with the other's depth. So a run also
holds ``<work_dir>/.trackset-work.lock``, taken after the dataset's; a second run fails at
once with :class:`WorkDirBusyError`, naming the holder, the directory and the dataset it is
building. One after the other, two datasets may share a work directory and get correct
outputs (the markers' fingerprints hold each video's content), but each evicts the other's
intermediates, so the run warns when the directory last worked for another dataset
(``<work_dir>/.trackset-dataset``). An import (``import_dir``) takes no work lock: it only
reads the script pipeline's folder, which may be read-only, so two imports of one folder
may run at once.

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
    ...     with DatasetLock(Path(tmp, "a"), flow_run_id="run-1", work_dir=Path(tmp, "work")) as lock:
    ...         try:
    ...             DatasetLock(Path(tmp, "b"), flow_run_id="run-2", work_dir=Path(tmp, "work")).acquire()
    ...         except WorkDirBusyError as exc:
    ...             print("busy:", exc.holder.flow_run_id, Path(exc.holder.dataset_dir).name)
    busy: run-1 a
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
from trackset.formats.layout import make_dirs, write_text_atomic

logger = logging.getLogger(__name__)

LOCK_NAME = ".trackset.lock"
"""The dataset's lock file, in the dataset directory."""

WORK_LOCK_NAME = ".trackset-work.lock"
"""The work directory's lock file (another name: a dataset may be its own work directory)."""

LAST_DATASET_NAME = ".trackset-dataset"
"""The dataset a work directory last worked for, in the work directory."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a lock, and which dataset it builds."""

    host: str
    pid: int
    flow_run_id: str
    started: str
    dataset_dir: str = ""

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


class DirectoryBusyError(TracksetError):
    """Another run holds the lock of a directory this run needs (the CLI exits 3)."""

    def __init__(self, directory: Path, holder: LockHolder | None) -> None:
        self.directory = directory
        self.holder = holder
        super().__init__(self.explain())

    def who(self) -> str:
        return self.holder.describe() if self.holder else "a holder that has not written its name yet"

    def explain(self) -> str:
        raise NotImplementedError

    def __reduce__(self) -> tuple[type, tuple[Path, LockHolder | None]]:
        return (type(self), (self.directory, self.holder))


class DatasetBusyError(DirectoryBusyError):
    """Another run holds the dataset's lock."""

    @property
    def dataset_dir(self) -> Path:
        return self.directory

    def explain(self) -> str:
        return f"dataset {self.directory} is being built by another run ({self.who()}); wait for it or cancel it"


class WorkDirBusyError(DirectoryBusyError):
    """Another run, of another dataset, holds the work directory's lock."""

    def explain(self) -> str:
        building = f", building dataset {self.holder.dataset_dir}" if self.holder and self.holder.dataset_dir else ""
        return (
            f"work directory {self.directory} is in use by another run ({self.who()}{building}); "
            "give this dataset a paths.work_dir of its own, or wait for that run"
        )


class _Held(Exception):
    """A lock file another open file holds; ``holder`` is who it says."""

    def __init__(self, holder: LockHolder | None) -> None:
        self.holder = holder


class DatasetLock:
    """The exclusive lock of one dataset directory and, with ``work_dir``, of its work
    directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, dataset_dir: Path, flow_run_id: str = "", work_dir: Path | None = None) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.path = self.dataset_dir / LOCK_NAME
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.flow_run_id = flow_run_id
        self.previous: LockHolder | None = None
        """The run whose dataset lock this one took over: it died holding it (it did not finish)."""
        self._handles: list[IO[str]] = []

    @classmethod
    def probe(cls, dataset_dir: Path, work_dir: Path | None = None) -> None:
        """Raise :class:`DatasetBusyError` (or :class:`WorkDirBusyError`) when another run holds
        the dataset's lock (or the work directory's); otherwise leave the lock files as they
        are (a dead holder's record stays for the run that takes over)."""
        _probe(Path(dataset_dir) / LOCK_NAME, DatasetBusyError, Path(dataset_dir))
        if work_dir is not None:
            _probe(Path(work_dir) / WORK_LOCK_NAME, WorkDirBusyError, Path(work_dir))

    def acquire(self) -> LockHolder:
        """Take the dataset's lock, then the work directory's, or raise at once (never waits).

        Returns:
            This run's holder record, as written into the lock files.

        Raises:
            DatasetBusyError: another run holds the dataset (nothing was touched).
            WorkDirBusyError: another run holds the work directory (the dataset's lock is
                given back).
        """
        started = datetime.now(timezone.utc).isoformat()
        me = LockHolder(socket.gethostname(), os.getpid(), self.flow_run_id, started, str(self.dataset_dir))
        try:
            self.previous = self._take(self.dataset_dir, LOCK_NAME, me)
        except _Held as held:
            raise DatasetBusyError(self.dataset_dir, held.holder) from None
        if self.work_dir is not None:
            try:
                self._take(self.work_dir, WORK_LOCK_NAME, me)
                self._note_dataset(self.work_dir)
            except _Held as held:
                self.release()
                raise WorkDirBusyError(self.work_dir, held.holder) from None
            except BaseException:
                self.release()
                raise
        return me

    def _take(self, folder: Path, name: str, me: LockHolder) -> LockHolder | None:
        """``flock`` ``folder/name`` without waiting and write ``me`` into it; return the
        record it held (a run that died holding it), if any."""
        make_dirs(folder)
        handle = open(folder / name, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            handle.close()
            raise _Held(holder) from None
        previous = _read_holder(handle)
        if previous is not None:
            state = "no longer running" if previous.is_dead_here() else "which released it"
            logger.warning("taking over the lock of %s left by %s (%s)", folder, previous.describe(), state)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(asdict(me)))
        handle.flush()
        os.fsync(handle.fileno())
        self._handles.append(handle)
        return previous

    def _note_dataset(self, work_dir: Path) -> None:
        """Record that ``work_dir`` works for this dataset; warn when it worked for another."""
        stamp = work_dir / LAST_DATASET_NAME
        mine = str(self.dataset_dir.resolve())
        try:
            last = stamp.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            last = ""
        if last == mine:
            return
        if last:
            logger.warning(
                "work directory %s last worked for dataset %s: this run, for %s, recomputes and replaces the "
                "intermediates of the video ids both have; give each dataset a paths.work_dir of its own",
                work_dir,
                last,
                mine,
            )
        write_text_atomic(stamp, mine + "\n")

    def release(self) -> None:
        """Empty the holder records and release the locks, work directory first (idempotent)."""
        while self._handles:
            handle = self._handles.pop()
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def __enter__(self) -> DatasetLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _probe(path: Path, busy: type[DirectoryBusyError], directory: Path) -> None:
    """Raise ``busy`` when another open file holds ``path``'s lock; touch nothing otherwise."""
    if not path.is_file():
        return
    with open(path, "a+", encoding="utf-8") as handle:  # writable: NFS locks need it
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(directory, _read_holder(handle)) from None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_holder(handle: IO[str]) -> LockHolder | None:
    """The holder recorded in the lock file, or None when empty or unreadable."""
    handle.seek(0)
    text = handle.read()
    try:
        data = json.loads(text)
        return LockHolder(
            str(data["host"]),
            int(data["pid"]),
            str(data["flow_run_id"]),
            str(data["started"]),
            str(data.get("dataset_dir", "")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
