"""The per-clip ``metadata.csv`` of the script pipeline: a description and a noun per clip.

The scripts read one CSV with columns ``clip_id,text`` and optionally ``noun``
(``dataset_scripts/config.yaml``: ``common.metadata_file``): ``create_h5_dataset.py`` writes
``text`` as ``root/text`` when ``include_text`` is set, and ``process_gsam.py`` prompts SAM3
with ``noun + "."`` when its ``text_prompt`` is null. Their ``clip_id`` is ``int(frames
folder)``, the script's video number. trackset's ids are its own, so a row names a video by
its source file instead (``metadata.clip_id: source``): the path under ``paths.videos_dir``
without the extension, or the file's stem; ids that are numbers compare as numbers, so
``42`` names ``00042.mp4``. A dataset imported from the scripts keeps their ids, and
``metadata.clip_id: video_id`` matches ``clip_id`` against the trackset id as they did.

The file is parsed once per process and content (path, size and modification time): the
fingerprint of every video of a 50,000-video registration asks for its row.

Examples:
    >>> clip_key(" 00042 "), clip_key("kitchen/clip_007")
    ('42', 'kitchen/clip_007')
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from trackset.domain import VideoRef

ClipColumn = Literal["text", "noun"]
#: The columns a row may carry besides ``clip_id``.
CLIP_COLUMNS: tuple[ClipColumn, ...] = ("text", "noun")

METADATA_FILE = "metadata.csv"


class MetadataError(ValueError):
    """``metadata.csv`` cannot be used: unreadable, no ``clip_id`` column, or an id twice."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def clip_key(clip_id: str) -> str:
    """The form ids are compared in: stripped, numbers without leading zeros.

    Examples:
        >>> clip_key("007"), clip_key("0"), clip_key("clip_000")
        ('7', '0', 'clip_000')
    """
    text = clip_id.strip()
    return str(int(text)) if text.isascii() and text.isdigit() else text


@dataclass(frozen=True)
class ClipRow:
    """One clip's row; a column the file lacks, or an empty cell, is ``None``."""

    clip_id: str
    text: str | None = None
    noun: str | None = None

    def value(self, column: ClipColumn) -> str | None:
        return self.text if column == "text" else self.noun


@dataclass(frozen=True)
class ClipMetadata:
    """Every row of a ``metadata.csv``, by :func:`clip_key`."""

    path: Path
    rows: dict[str, ClipRow]

    @classmethod
    def read(cls, path: Path) -> ClipMetadata:
        """Parse ``path`` (cached while its size and modification time stay the same).

        Raises:
            FileNotFoundError: there is no such file.
            MetadataError: the file is unreadable, has no ``clip_id`` column, or names a clip twice.
        """
        info = Path(path).stat()
        return _read(Path(path), info.st_size, info.st_mtime_ns)

    def row_for(self, keys: list[str]) -> ClipRow | None:
        """The row of the first of ``keys`` (already :func:`clip_key` forms) that has one."""
        return next((self.rows[key] for key in keys if key in self.rows), None)


@lru_cache(maxsize=8)
def _read(path: Path, size: int, mtime_ns: int) -> ClipMetadata:
    """One parse per file content (``size`` and ``mtime_ns`` are the cache key only)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = [name.strip() for name in reader.fieldnames or []]
            if "clip_id" not in fields:
                raise MetadataError(path, f"no 'clip_id' column (columns: {', '.join(fields) or 'none'})")
            rows: dict[str, ClipRow] = {}
            for number, raw in enumerate(reader, start=2):
                cells = {(key or "").strip(): (value or "").strip() for key, value in raw.items() if key}
                clip_id = cells.get("clip_id", "")
                if not clip_id:
                    continue
                key = clip_key(clip_id)
                if key in rows:
                    raise MetadataError(path, f"line {number}: clip_id {clip_id!r} appears twice")
                rows[key] = ClipRow(clip_id, cells.get("text") or None, cells.get("noun") or None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetadataError(path, f"unreadable: {exc}") from None
    return ClipMetadata(path, rows)


def metadata_path(csv_setting: Path | None, videos_dir: Path) -> Path:
    """``metadata.csv`` of a run: the setting, else beside the videos.

    Examples:
        >>> metadata_path(None, Path("videos")).as_posix(), metadata_path(Path("m.csv"), Path("v")).as_posix()
        ('videos/metadata.csv', 'm.csv')
    """
    return Path(csv_setting) if csv_setting is not None else Path(videos_dir) / METADATA_FILE


def video_keys(video: VideoRef, videos_dir: Path, match: Literal["source", "video_id"]) -> list[str]:
    """The clip ids that name ``video``, most specific first (see the module docstring).

    Examples:
        >>> ref = VideoRef("00003", Path("/data/videos/kitchen/00042.mp4"), "")
        >>> video_keys(ref, Path("/data/videos"), "source"), video_keys(ref, Path("/data/videos"), "video_id")
        (['kitchen/00042', '42'], ['3'])
    """
    if match == "video_id":
        return [clip_key(video.video_id)]
    source = Path(video.source)
    keys = []
    try:
        keys.append(clip_key(source.relative_to(Path(videos_dir).resolve()).with_suffix("").as_posix()))
    except ValueError:  # a source given relative to a relative videos_dir (tests, imports)
        with contextlib.suppress(ValueError):
            keys.append(clip_key(source.relative_to(Path(videos_dir)).with_suffix("").as_posix()))
    stem = clip_key(source.stem)
    return keys + ([stem] if stem not in keys else [])


def find_row(video: VideoRef, path: Path, videos_dir: Path, match: Literal["source", "video_id"]) -> ClipRow | None:
    """``video``'s row of the ``metadata.csv`` at ``path``; ``None`` when it has none.

    Raises:
        FileNotFoundError: there is no such file.
        MetadataError: the file cannot be used.
    """
    return ClipMetadata.read(path).row_for(video_keys(video, videos_dir, match))
