"""The append-only manifest: which source file is which video id, and with what content.

``manifest.jsonl`` in the dataset directory holds one JSON object per line (FORMATS.md,
"Conventions"). A ``kind: "video"`` line maps a source file (its path relative to the
videos directory) to a video id (5 digits, more past 99,999), a sha256 of its bytes and the
``(size, mtime_ns)`` it was hashed at; the latest line of a path wins. A ``kind: "quarantine"`` line records a video
that did not fit alone on a GPU, with the inputs and settings it failed with (DECISIONS.md,
"Out-of-memory policy").

Rules that keep outputs stable:

- an id, once given, is never changed or reused, even after its file disappears;
- a new path gets the next id (highest id ever given + 1), a changed hash keeps the id;
- lines are only ever appended (one ``write`` + ``fsync`` per batch, under an exclusive
  ``flock`` so two runs cannot hand out the same id); the only bytes ever removed are an
  incomplete last line left by a crash mid-append;
- a file moved or renamed within the videos directory (a new path with the content of a
  recorded path that is gone) keeps its id: the move is one line with ``moved_from``;
- a path whose size and mtime are unchanged is never hashed again.

Ids, never file names, name the outputs, so an odd or hostile file name only ever gets an id.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from trackset.domain import SkippedFiles, SkipReason, check_video_id, format_video_id, video_id_order
from trackset.formats.layout import ensure_file
from trackset.formats.markers import file_sha256

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Discovery:
    """What :func:`discover_videos` found: the videos, and every other file it passed over."""

    videos: list[Path] = field(default_factory=list)
    skipped: SkippedFiles = field(default_factory=SkippedFiles)


def discover_videos(videos_dir: Path, extensions: Iterable[str], ignore: Collection[Path] = ()) -> Discovery:
    """Every video file under ``videos_dir``, recursively, sorted by relative POSIX path.

    Only regular files count: symlinks (to files or folders) are skipped, since a link could
    lead outside ``videos_dir``, and so are other files whose name does not end with one of
    ``extensions``, and devices or pipes that do; each of these is counted in
    :attr:`Discovery.skipped`, so a folder of ``.m4v`` files does not look like an empty corpus.
    Hidden files and directories (names starting with ``.``: editor swap files, ``.git``,
    partial downloads) are not looked at at all, nor the files of ``ignore`` (``metadata.csv``).

    Args:
        videos_dir: the root of the source videos.
        extensions: file name endings to accept, case-insensitive, with or without the dot.
        ignore: files that belong in ``videos_dir`` without being videos.

    Raises:
        FileNotFoundError: when ``videos_dir`` is not a directory; a mistyped path must not
            look like a dataset whose videos all went missing.
    """
    root = Path(videos_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"videos directory not found: {root}")
    suffixes = tuple(_normalise_extension(ext) for ext in extensions)
    ignored = {Path(path).absolute() for path in ignore}
    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, SkipReason]] = []
    for folder, dirnames, filenames in os.walk(root, onerror=_raise):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in dirnames:
            if Path(folder, name).is_symlink():  # os.walk does not follow it
                skipped.append((Path(folder, name).relative_to(root).as_posix(), "link"))
        for name in filenames:
            path = Path(folder, name)
            if name.startswith(".") or path.absolute() in ignored:
                continue
            source = path.relative_to(root).as_posix()
            if path.is_symlink():
                skipped.append((source, "link"))
            elif not name.lower().endswith(suffixes):
                skipped.append((source, "extension"))
            elif path.is_file():
                found.append((source, path))
            else:
                skipped.append((source, "not a regular file"))
    discovery = Discovery(videos=[path for _, path in sorted(found)])
    for source, reason in sorted(skipped):
        discovery.skipped.add(reason, source)
    for why in discovery.skipped.counts:
        if why != "extension":  # a link or a device named like a video was probably meant as one
            logger.warning("registration skipped under %s %s", root, discovery.skipped.line(why))
    return discovery


@dataclass(frozen=True)
class ManifestEntry:
    """One source file's id and content, as recorded on a ``kind: "video"`` line.

    Attributes:
        video_id: the id naming every output of this video (:func:`trackset.domain.format_video_id`).
        source: path relative to the videos directory, POSIX separators.
        sha256: hex sha256 of the file's bytes.
        size: size in bytes when hashed.
        mtime_ns: modification time in ns when hashed; with ``size``, lets an unchanged file
            skip re-hashing.
        kind: always ``"video"``.
        moved_from: the path this id had before the file was moved or renamed (same
            content), on the line that records the move; None otherwise (and not written).
    """

    video_id: str
    source: str
    sha256: str
    size: int
    mtime_ns: int
    kind: str = "video"
    moved_from: str | None = None

    def __post_init__(self) -> None:
        check_video_id(self.video_id)
        if self.kind != "video":
            raise ValueError(f"manifest entry kind must be 'video', got {self.kind!r}")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a non-empty string, got {self.source!r}")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        for name in ("size", "mtime_ns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (name == "size" and value < 0):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.moved_from is not None and (not isinstance(self.moved_from, str) or not self.moved_from):
            raise ValueError(f"moved_from must be a non-empty string, got {self.moved_from!r}")

    def source_path(self, videos_dir: Path) -> Path:
        """The source file under ``videos_dir``, refusing any path that resolves outside it.

        The manifest is a plain file that anyone can edit; this check is what stops a line
        like ``"source": "../../etc/passwd"`` (or a symlink) from reaching a decoder.

        Examples:
            >>> entry = ManifestEntry("00000", "../../evil.mp4", "0" * 64, 1, 0)
            >>> entry.source_path(Path("/data/videos"))
            Traceback (most recent call last):
            ...
            ValueError: manifest source '../../evil.mp4' of video 00000 resolves outside /data/videos
        """
        root = Path(videos_dir).resolve()
        path = (root / self.source).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"manifest source {self.source!r} of video {self.video_id} resolves outside {root}")
        return path


@dataclass(frozen=True)
class QuarantineRecord:
    """A video skipped until its content (``sha256``) or ``settings_fingerprint`` changes."""

    video_id: str
    sha256: str
    settings_fingerprint: str
    stage: str
    reason: str
    kind: str = "quarantine"

    def __post_init__(self) -> None:
        check_video_id(self.video_id)
        if self.kind != "quarantine":
            raise ValueError(f"quarantine record kind must be 'quarantine', got {self.kind!r}")
        for name in ("sha256", "settings_fingerprint", "stage", "reason"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class UnreadableSource:
    """A video file registration could not stat or hash, and why (``strerror`` of the OSError)."""

    source: str  # relative to the videos directory
    path: Path
    video_id: str | None  # its id when the manifest already knows the file, else None
    reason: str


@dataclass(frozen=True)
class RegisterResult:
    """What :meth:`Manifest.register` found, each list sorted by video id (unreadable: by source)."""

    new: list[ManifestEntry] = field(default_factory=list)
    changed: list[ManifestEntry] = field(default_factory=list)
    unchanged: list[ManifestEntry] = field(default_factory=list)
    missing: list[ManifestEntry] = field(default_factory=list)
    unreadable: list[UnreadableSource] = field(default_factory=list)
    moved: list[ManifestEntry] = field(default_factory=list)
    skipped: SkippedFiles = field(default_factory=SkippedFiles)


class Manifest:
    """In-memory view of ``manifest.jsonl`` that appends, never rewrites.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     videos = Path(tmp, "videos")
        ...     (videos / "kitchen").mkdir(parents=True)
        ...     _ = (videos / "kitchen" / "take 1.MP4").write_bytes(b"frames")
        ...     manifest = Manifest.load(Path(tmp, "dataset", "manifest.jsonl"))
        ...     result = manifest.register(videos, [".mp4"])
        ...     [(e.video_id, e.source) for e in result.new]
        [('00000', 'kitchen/take 1.MP4')]
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._by_source: dict[str, ManifestEntry] = {}
        self._source_of_id: dict[str, str] = {}
        self._quarantines: dict[str, list[QuarantineRecord]] = {}
        self._max_id = -1
        self._valid_bytes = 0  # end of the last complete line
        self._needs_newline = False  # last record is complete but its "\n" was cut off

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read the manifest at ``path``; a missing file is an empty manifest.

        Raises:
            ValueError: naming the file and line for any malformed line except an incomplete
                last one (a crash mid-append), which is ignored with a warning.
        """
        manifest = cls(path)
        manifest._reload()
        return manifest

    def entries(self) -> list[ManifestEntry]:
        """The current entry of every source ever registered (missing ones too), by id."""
        return sorted(self._by_source.values(), key=lambda entry: video_id_order(entry.video_id))

    def register(self, videos_dir: Path, extensions: Iterable[str], ignore: Collection[Path] = ()) -> RegisterResult:
        """Give every video under ``videos_dir`` an id and record new or changed content.

        A file whose ``(size, mtime_ns)`` match its entry keeps its recorded hash without
        being read, which keeps a nightly refresh over terabytes cheap. A file that was only
        touched (same hash, new mtime) gets a fresh line, so the next run skips hashing it.

        A file that cannot be read (no permission, an I/O error) gets no new line and is
        returned as unreadable instead of stopping the registration of every other file; it
        is registered by the first run that can read it.

        Returns:
            The entries found new, changed, unchanged (same content), and missing (recorded
            but gone; their ids stay reserved), the unreadable files, and the files that are
            not videos (:func:`discover_videos`; ``ignore`` names files that belong there).
        """
        discovery = discover_videos(videos_dir, extensions, ignore)
        files = discovery.videos
        root = Path(videos_dir)
        with self._append_lock() as handle:
            new: list[ManifestEntry] = []
            changed: list[ManifestEntry] = []
            unchanged: list[ManifestEntry] = []
            appended: list[ManifestEntry] = []
            unreadable: list[UnreadableSource] = []
            fresh: list[tuple[str, str, os.stat_result]] = []  # paths never recorded: new or moved
            seen: set[str] = set()
            for path in files:
                source = path.relative_to(root).as_posix()
                seen.add(source)
                previous = self._by_source.get(source)
                try:
                    # Stat before hashing: if the file changes while being read, the recorded
                    # mtime is the older one and the next run hashes it again.
                    info = path.stat()
                    if previous is not None and (previous.size, previous.mtime_ns) == (info.st_size, info.st_mtime_ns):
                        unchanged.append(previous)
                        continue
                    sha = file_sha256(path)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    unreadable.append(UnreadableSource(source, path, previous.video_id if previous else None, reason))
                    continue
                if previous is None:
                    fresh.append((source, sha, info))
                    continue
                entry = ManifestEntry(previous.video_id, source, sha, info.st_size, info.st_mtime_ns)
                (unchanged if sha == previous.sha256 else changed).append(entry)
                appended.append(entry)
            # A never-seen path with the content of a recorded path that is gone is that file,
            # moved or renamed: it keeps its id, so nothing is recomputed.
            gone: dict[str, ManifestEntry] = {}
            for entry in sorted(self._by_source.values(), key=lambda e: video_id_order(e.video_id), reverse=True):
                if entry.source not in seen:
                    gone[entry.sha256] = entry  # the lowest id wins where several share content
            moved: list[ManifestEntry] = []
            next_id = self._max_id + 1
            for source, sha, info in fresh:
                earlier = gone.pop(sha, None)
                if earlier is not None:
                    entry = ManifestEntry(
                        earlier.video_id, source, sha, info.st_size, info.st_mtime_ns, moved_from=earlier.source
                    )
                    moved.append(entry)
                else:
                    entry = ManifestEntry(format_video_id(next_id), source, sha, info.st_size, info.st_mtime_ns)
                    next_id += 1
                    new.append(entry)
                appended.append(entry)
            self._append(handle, appended)
        missing = [entry for source, entry in self._by_source.items() if source not in seen]
        return RegisterResult(
            _sorted_by_id(new),
            _sorted_by_id(changed),
            _sorted_by_id(unchanged),
            _sorted_by_id(missing),
            unreadable,
            _sorted_by_id(moved),
            discovery.skipped,
        )

    def register_import(self, video_id: str, source: str, sha256: str) -> ManifestEntry:
        """Record a video imported from existing intermediates under the id it already has.

        The script pipeline named every intermediate by its id, so imports keep those ids.
        An id that already belongs to another source is refused (``ValueError``), and an
        unchanged import appends nothing.
        """
        check_video_id(video_id)
        with self._append_lock() as handle:
            previous = self._by_source.get(source)
            if previous is not None and previous.sha256 == sha256:
                return previous
            entry = ManifestEntry(video_id, source, sha256, 0, 0)
            self._apply(entry, where=f"import into {self.path}")  # refuses a taken id before writing
            self._append(handle, [entry])
            return entry

    def quarantine(
        self, video_id: str, sha256: str, settings_fingerprint: str, stage: str, reason: str
    ) -> QuarantineRecord:
        """Record that ``video_id`` is skipped until its content or settings change."""
        record = QuarantineRecord(video_id, sha256, settings_fingerprint, stage, reason)
        with self._append_lock() as handle:
            self._append(handle, [record])
        return record

    def quarantined(self, video_id: str, sha256: str, key_of: Callable[[str], str]) -> str | None:
        """The reason ``video_id`` is quarantined with this content and settings, else ``None``.

        Args:
            video_id: the video.
            sha256: its content hash now.
            key_of: the current quarantine key of a stage (its settings fingerprint now), asked
                only for the stages that quarantined this video, so a dataset without
                quarantines costs nothing here.

        A new hash or settings fingerprint no longer matches the record, which releases it.
        """
        for record in reversed(self._quarantines.get(video_id, [])):  # the latest record's reason
            if record.sha256 == sha256 and record.settings_fingerprint == key_of(record.stage):
                return record.reason
        return None

    @contextmanager
    def _append_lock(self) -> Iterator[IO[bytes]]:
        """Open for appending under an exclusive lock, with the state reloaded from disk.

        Reloading under the lock picks up lines another run appended since :meth:`load`, so
        ids handed out here cannot collide with theirs. The lock is released on close.
        """
        ensure_file(self.path)
        with open(self.path, "ab") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            self._reload()
            yield handle

    def _append(self, handle: IO[bytes], records: list[ManifestEntry] | list[QuarantineRecord]) -> None:
        """Append ``records`` with a single write, then flush and fsync them."""
        if not records:
            return
        if os.fstat(handle.fileno()).st_size > self._valid_bytes:
            # Drop an incomplete record left by a crash, or new lines would be glued to it.
            os.ftruncate(handle.fileno(), self._valid_bytes)
        prefix = b"\n" if self._needs_newline else b""
        data = b"".join(_encode(record) for record in records)
        handle.write(prefix + data)
        handle.flush()
        os.fsync(handle.fileno())
        for record in records:
            self._apply(record, where=str(self.path))
        self._valid_bytes += len(prefix) + len(data)
        self._needs_newline = False

    def _reload(self) -> None:
        """Parse the whole file into fresh state (see :meth:`load` for the rules)."""
        self._by_source, self._source_of_id, self._quarantines, self._max_id = {}, {}, {}, -1
        self._valid_bytes, self._needs_newline = 0, False
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        # The text after the last "\n" is empty unless the last append was cut short.
        tail = lines.pop()
        offset = 0
        for number, line in enumerate(lines, start=1):
            offset += len(line) + 1
            if line.strip():
                self._apply(self._parse(line, number), where=f"{self.path}:{number}")
        self._valid_bytes = offset
        if not tail:
            return
        try:
            record = self._parse(tail, len(lines) + 1)
        except ValueError:
            logger.warning(
                "ignoring truncated last line %d of %s (an interrupted append); it is dropped on the next append",
                len(lines) + 1,
                self.path,
            )
            return
        # A JSON object only parses once its closing brace is there: the record is complete.
        self._apply(record, where=f"{self.path}:{len(lines) + 1}")
        self._valid_bytes = len(data)
        self._needs_newline = True

    def _parse(self, line: bytes, number: int) -> ManifestEntry | QuarantineRecord:
        """One line as a record; ``ValueError`` naming the file and line otherwise."""
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            kind = obj.get("kind")
            if kind == "video":
                return ManifestEntry(**obj)
            if kind == "quarantine":
                return QuarantineRecord(**obj)
            raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, TypeError) as exc:  # TypeError: missing or unexpected fields
            raise ValueError(f"{self.path}:{number}: malformed manifest line: {exc}") from None

    def _apply(self, record: ManifestEntry | QuarantineRecord, where: str) -> None:
        """Fold one record into the state, refusing lines that would move an id or a path.

        The one way an id changes its path is a line recording the move (``moved_from`` =
        the id's path so far); the old path is forgotten, so a new file there is a new video.
        """
        if isinstance(record, QuarantineRecord):
            self._quarantines.setdefault(record.video_id, []).append(record)
            return
        if record.moved_from is not None:
            owner = self._source_of_id.get(record.video_id)
            if owner != record.moved_from:
                raise ValueError(
                    f"{where}: id {record.video_id} moves from {record.moved_from!r} but belongs to {owner!r}"
                )
            self._by_source.pop(record.moved_from, None)
            self._source_of_id[record.video_id] = record.source
        previous = self._by_source.get(record.source)
        if previous is not None and previous.video_id != record.video_id:
            raise ValueError(
                f"{where}: source {record.source!r} has id {record.video_id} but was recorded as {previous.video_id}"
            )
        owner = self._source_of_id.get(record.video_id, record.source)
        if owner != record.source:
            raise ValueError(f"{where}: id {record.video_id} of {record.source!r} already belongs to {owner!r}")
        self._by_source[record.source] = record
        self._source_of_id[record.video_id] = record.source
        self._max_id = max(self._max_id, video_id_order(record.video_id))


def _encode(record: ManifestEntry | QuarantineRecord) -> bytes:
    """One line: sorted keys and ASCII-only escapes, so any file name (even one holding a
    newline or undecodable bytes) stays on its line and round-trips."""
    fields = {key: value for key, value in asdict(record).items() if not (key == "moved_from" and value is None)}
    return (json.dumps(fields, sort_keys=True, separators=(",", ":")) + "\n").encode("ascii")


def _sorted_by_id(entries: list[ManifestEntry]) -> list[ManifestEntry]:
    return sorted(entries, key=lambda entry: video_id_order(entry.video_id))


def _normalise_extension(extension: str) -> str:
    """Lower-case with a leading dot.

    Examples:
        >>> _normalise_extension("MP4"), _normalise_extension(".Mov")
        ('.mp4', '.mov')
    """
    extension = extension.lower()
    return extension if extension.startswith(".") else f".{extension}"


def _raise(error: OSError) -> None:
    """``os.walk`` error handler: an unreadable folder must fail loudly, not hide videos."""
    raise error
