"""Completion markers: a stage's fingerprint for a video, and the size and checksum of each file.

A stage writes its outputs (atomically and fsynced: :func:`trackset.formats.layout.atomic_path`)
and then its marker, ``markers/<stage>/<vid>.json`` in the work directory::

    {"fingerprint": "3f9c...", "outputs": {"vipe/00003.npz": {"sha256": "...", "size": 78643200}}}

Output names are relative to the work directory, so a moved work directory keeps its
markers. The H5 build keeps its marker in the dataset directory instead: the statistics
partials of a video carry the H5's stamp (:class:`trackset.formats.statistics.VideoPartials`).

**What a run checks.** An output counts as complete only when it still has the size its
marker recorded: one ``stat``, which registration and every stage already pay per video
(50,000 videos x several stages), so it costs nothing measurable. A file truncated or emptied
after the fact (a full disk, a copy cut short, ``truncate``) is recomputed, with one warning
that names it. Reading every byte again to compare its sha256 is for ``run.verify_checksums``
(storage you do not trust) and ``trackset validate --deep`` (the H5 files): a few hours per
terabyte read, where a size is microseconds.

**Markers of earlier versions** hold only ``{"fingerprint": ...}``. They are still read, so
an upgrade recomputes nothing: their outputs count as complete when present and not empty
(no stage ever writes an empty file), and they get a size and a checksum when their stage
next writes them. A file truncated to a non-zero length under such a marker is found only
when a later stage reads it, which fails that video naming the file.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = Path(tmp, "vipe", "00003.npz")
    ...     out.parent.mkdir()
    ...     _ = out.write_bytes(b"depth")
    ...     marker = Marker.of("f00d", Path(tmp), [out])
    ...     whole = marker.damage(Path(tmp), [out], verify=True)
    ...     _ = out.write_bytes(b"dep")
    ...     print(whole, "|", marker.damage(Path(tmp), [out], verify=False).replace(tmp, "<work>"))
    None | <work>/vipe/00003.npz has 3 bytes, its marker recorded 5
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackset.formats.layout import write_text_atomic

_CHUNK_BYTES = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks so memory stays flat on huge files.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "a").write_bytes(b"abc")
        ...     file_sha256(Path(tmp) / "a")[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileStamp:
    """A file's size in bytes and the sha256 of its bytes, as written.

    Examples:
        >>> FileStamp.from_json({"size": 3, "sha256": "0" * 64}).size
        3
        >>> FileStamp.from_json({"size": -1, "sha256": "0" * 64})
        Traceback (most recent call last):
        ...
        ValueError: a file stamp needs a size >= 0 and a sha256, got {'size': -1, 'sha256': '000000...'}
    """

    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """Stamp ``path`` as it is now (it has just been written: its bytes are still cached)."""
        return cls(Path(path).stat().st_size, file_sha256(path))

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def from_json(cls, obj: object) -> FileStamp:
        """Inverse of :meth:`to_json`; ``ValueError`` on anything else."""
        if isinstance(obj, Mapping) and set(obj) == {"size", "sha256"}:
            size, sha256 = obj["size"], obj["sha256"]
            if type(size) is int and size >= 0 and isinstance(sha256, str) and _SHA256.fullmatch(sha256):
                return cls(size, sha256)
        text = repr(obj)
        brief = re.sub(r"[0-9a-f]{64}", lambda m: m.group(0)[:6] + "...", text)
        raise ValueError(f"a file stamp needs a size >= 0 and a sha256, got {brief}")


def file_damage(path: Path, stamp: FileStamp | None, verify: bool) -> str | None:
    """Why the file at ``path`` is not the one ``stamp`` describes, or None when it is.

    Without a stamp (a marker of an earlier version) only an empty file is damaged;
    ``verify`` also compares the sha256, reading the whole file.

    Raises:
        FileNotFoundError: there is no file at ``path`` (missing is not damaged: a stage's
            intermediates may be deleted on purpose).
    """
    size = os.stat(path).st_size
    if stamp is None:
        return f"{path} is empty" if size == 0 else None
    if size != stamp.size:
        return f"{path} has {size:,} bytes, its marker recorded {stamp.size:,}"
    if verify and file_sha256(path) != stamp.sha256:
        return f"{path} does not have the sha256 its marker recorded (checked under run.verify_checksums)"
    return None


@dataclass(frozen=True)
class Marker:
    """A stage's completion marker of one video (module docstring).

    Attributes:
        fingerprint: the stage's fingerprint of the video (inputs and settings).
        outputs: the stamp of each output, by its path relative to the work directory;
            empty in a marker written before stamps were recorded.
    """

    fingerprint: str
    outputs: dict[str, FileStamp] = field(default_factory=dict)

    @classmethod
    def of(cls, fingerprint: str, root: Path, outputs: list[Path]) -> Marker:
        """The marker of ``outputs`` (under ``root``) as they are now."""
        return cls(fingerprint, {_name(path, root): FileStamp.of(path) for path in outputs})

    def to_json_text(self) -> str:
        stamps = {name: stamp.to_json() for name, stamp in self.outputs.items()}
        return json.dumps({"fingerprint": self.fingerprint, "outputs": stamps}, sort_keys=True)

    @classmethod
    def from_json_text(cls, text: str) -> Marker:
        """Read a marker of this version or an earlier one; ``ValueError`` when malformed."""
        obj = json.loads(text)
        if not isinstance(obj, dict) or not isinstance(obj.get("fingerprint"), str):
            raise ValueError("expected a JSON object with a 'fingerprint'")
        outputs = obj.get("outputs", {})
        if not isinstance(outputs, dict):
            raise ValueError("'outputs' must map file names to stamps")
        return cls(obj["fingerprint"], {str(name): FileStamp.from_json(stamp) for name, stamp in outputs.items()})

    @classmethod
    def read(cls, path: Path) -> Marker:
        """The marker at ``path``.

        Raises:
            FileNotFoundError: there is none.
            ValueError: naming the file, when it is not a marker (torn, edited, emptied).
        """
        try:
            with open(path, encoding="utf-8") as handle:
                return cls.from_json_text(handle.read())
        except FileNotFoundError:
            raise
        except (ValueError, OSError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise ValueError(f"{path}: unreadable completion marker: {exc}") from None

    def write(self, path: Path) -> None:
        """Write atomically and durably: the marker is what makes a video's stage count as done."""
        write_text_atomic(Path(path), self.to_json_text())

    def damage(self, root: Path, outputs: list[Path], verify: bool) -> str | None:
        """Why one of ``outputs`` (under ``root``) is not what this marker recorded, or None
        when every one is (:func:`file_damage`; ``FileNotFoundError`` when one is missing)."""
        for path in outputs:
            reason = file_damage(path, self.outputs.get(_name(path, root)), verify)
            if reason is not None:
                return reason
        return None


def _name(path: Path, root: Path) -> str:
    """An output's key in a marker: its path under ``root``, with ``/``.

    By string where it can (``Path.relative_to`` was a fifth of ``is_done``'s time).

    Examples:
        >>> _name(Path("/w/vipe/00001.npz"), Path("/w")), _name(Path("/w/a"), Path("/"))
        ('vipe/00001.npz', 'w/a')
    """
    text, prefix = str(path), str(root).rstrip("/") + "/"
    return text[len(prefix) :] if text.startswith(prefix) else Path(path).relative_to(root).as_posix()
