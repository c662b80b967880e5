"""Which videos' H5 files are current, known from one small file and a ``stat`` per file.

Registration must tell, for every video of the dataset, whether its H5 is current: the
fingerprint in its statistics partials must be today's. Reading 50,000 partials files for
that costs ~11 s on a local disk and minutes on a network filesystem, every night, for
videos that did not change. The done index (``<dataset_dir>/done-index.jsonl``) remembers,
per video, the fingerprint its partials hold and the size and mtime of its H5 and partials
files when that was read. A video whose entry has today's fingerprint and whose two files
still have that size and mtime is current without opening either; any other is checked by
reading its partials, and the answer is added to the index for the next run.

The index is only a cache of what the files say: deleting it costs one full re-read, and an
H5 or partials file rewritten, truncated or replaced (another size or mtime) is never
trusted from it. Lines are appended by the run that holds the dataset's lock; a file with
many more lines than videos is rewritten compactly (atomically).

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     h5, partials = Path(tmp, "00001.hdf5"), Path(tmp, "00001.json")
    ...     _ = h5.write_bytes(b"h5"), partials.write_text("{}")
    ...     index = DoneIndex.load(Path(tmp, "done-index.jsonl"))
    ...     index.record("00001", "fp1", h5, partials)
    ...     index.flush()
    ...     again = DoneIndex.load(Path(tmp, "done-index.jsonl"))
    ...     again.is_current("00001", "fp1", h5, partials), again.is_current("00001", "fp2", h5, partials)
    (True, False)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from trackset.formats.layout import ensure_file, write_text_atomic

COMPACT_FACTOR = 2
"""Rewrite the index when it has more than this many lines per video it describes."""


@dataclass(frozen=True)
class DoneEntry:
    """What a video's partials said, and what its files looked like when they said it."""

    video_id: str
    fingerprint: str
    h5: tuple[int, int]  # (size, mtime_ns)
    partials: tuple[int, int]


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


class DoneIndex:
    """The dataset's done index, loaded once per registration."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, DoneEntry] = {}
        self.lines = 0
        self._new: list[DoneEntry] = []

    @classmethod
    def load(cls, path: Path) -> DoneIndex:
        """Read the index; a missing or damaged file (or line) is simply not known."""
        index = cls(path)
        try:
            text = index.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return index
        for line in text.splitlines():
            try:
                row = json.loads(line)
                entry = DoneEntry(row["video_id"], row["fingerprint"], tuple(row["h5"]), tuple(row["partials"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash; the video is re-read
            index.entries[entry.video_id] = entry
            index.lines += 1
        return index

    def is_current(self, video_id: str, fingerprint: str, h5: Path, partials: Path) -> bool:
        """True when the index says ``fingerprint`` and both files are untouched since."""
        entry = self.entries.get(video_id)
        if entry is None or entry.fingerprint != fingerprint:
            return False
        return _stat(h5) == entry.h5 and _stat(partials) == entry.partials

    def record(self, video_id: str, fingerprint: str, h5: Path, partials: Path) -> None:
        """Remember that the partials of ``video_id`` hold ``fingerprint`` (just read from them)."""
        h5_stat, partials_stat = _stat(h5), _stat(partials)
        if h5_stat is None or partials_stat is None:
            return
        entry = DoneEntry(video_id, fingerprint, h5_stat, partials_stat)
        if self.entries.get(video_id) != entry:
            self.entries[video_id] = entry
            self._new.append(entry)

    def flush(self) -> None:
        """Append what :meth:`record` learnt (or rewrite the file compactly when it grew too long)."""
        if not self._new:
            return
        lines = [json.dumps(asdict(entry), sort_keys=True) + "\n" for entry in self._new]
        if self.lines + len(lines) > COMPACT_FACTOR * max(len(self.entries), 1):
            compact = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in self.entries.values())
            write_text_atomic(self.path, compact)
            self.lines = len(self.entries)
        else:
            ensure_file(self.path)
            with open(self.path, "a", encoding="utf-8") as out:
                out.write("".join(lines))
                out.flush()
                os.fsync(out.fileno())
            self.lines += len(lines)
        self._new = []
