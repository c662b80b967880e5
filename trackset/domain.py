"""The words every layer shares: a registered video, a stage's name, what a stage did to a video.

This module is the bottom of the package: it imports nothing of trackset, so the stages,
the registration, the run report, the tasks and the flows can all speak of a
:class:`VideoRef` or a :class:`StageRecord` without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

StageName = Literal[
    "preprocess",
    "human_masks",
    "clean_frames",
    "depth_camera",
    "object_masks",
    "tracks_3d",
    "tracks_2d",
    "hands",
    "h5_build",
]
#: The full pipeline, in order (the order of :data:`StageName`, the one list of the names);
#: which of these a run includes depends on its settings
#: (:func:`trackset.stages.registry.enabled_stages`). The GPU stages are contiguous, between
#: the CPU stages preprocess and h5_build, which the wave planner relies on.
STAGE_ORDER: tuple[StageName, ...] = get_args(StageName)
TrackType = Literal["3d", "2d"]

FailureKind = Literal["error", "out_of_memory", "quarantined"]
RecordStatus = Literal["done", "skipped"]


_VIDEO_ID = re.compile(r"[0-9]{5,}")
MIN_ID_DIGITS = 5


def format_video_id(number: int) -> str:
    """The id of the ``number``-th video: zero-padded to 5 digits, more digits past 99,999.

    FORMATS.md: ``00000`` ... ``99999``, then ``100000`` ...; existing files are never
    renamed, and the reader sorts names naturally.

    Examples:
        >>> format_video_id(7), format_video_id(99_999), format_video_id(100_000)
        ('00007', '99999', '100000')
    """
    if number < 0:
        raise ValueError(f"video number {number} is negative")
    return f"{number:0{MIN_ID_DIGITS}d}"


def is_video_id(text: object) -> bool:
    r"""True for an id in its one canonical spelling: ASCII digits, as :func:`format_video_id` writes it.

    Examples:
        >>> [is_video_id(t) for t in ("00042", "123456", "0123456", "00001\n", "\u0661\u0662\u0663\u0664\u0665")]
        [True, True, False, False, False]
    """
    return isinstance(text, str) and _VIDEO_ID.fullmatch(text) is not None and format_video_id(int(text)) == text


def check_video_id(video_id: str) -> str:
    """Return ``video_id`` if it is a video id (:func:`is_video_id`), else raise ``ValueError``.

    Ids name every path of a video, so this is what keeps a hostile name out of them.

    Examples:
        >>> check_video_id("00042")
        '00042'
        >>> check_video_id("../etc")
        Traceback (most recent call last):
        ...
        ValueError: invalid video id '../etc': expected at least 5 ASCII digits, zero-padded to 5
    """
    if not is_video_id(video_id):
        raise ValueError(f"invalid video id {video_id!r}: expected at least 5 ASCII digits, zero-padded to 5")
    return video_id


def video_id_order(video_id: str) -> int:
    """Sort key of ids: by number, so ``99999`` comes before ``100000`` (the reader's natural order).

    Examples:
        >>> sorted(["100000", "99999", "00001"], key=video_id_order)
        ['00001', '99999', '100000']
    """
    return int(video_id)


def stage_slug(name: str) -> str:
    """Kebab-case stage name for artifact keys, run names and tags (Prefect keys allow no "_").

    Examples:
        >>> stage_slug("depth_camera")
        'depth-camera'
    """
    return name.replace("_", "-")


@dataclass(frozen=True)
class VideoRef:
    """A registered video: its stable id, where its source is and the hash of its content."""

    video_id: str
    source: Path
    content_hash: str


GPU_SECONDS = "gpu_seconds"
"""The ``info`` key of a record whose video held a share of a GPU: its seconds x that share
(``1/k`` on a worker of ``k`` per GPU; noted by the wave planner)."""


@dataclass
class StageRecord:
    """What a stage did to one video: small, picklable, never arrays."""

    video_id: str
    stage: str
    status: RecordStatus
    seconds: float = 0.0
    peak_bytes: int | None = None
    worker: str = ""
    gpu: str | None = None
    outputs: list[str] = field(default_factory=list)
    info: dict[str, float | int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoFailure:
    """A video that did not get through a stage, and why (and, where known, the worker it
    failed on: an out-of-memory failure shrinks the workers of that worker's GPU)."""

    video_id: str
    stage: str
    reason: str
    kind: FailureKind = "error"
    attempts: int = 1
    worker: str = ""


@dataclass
class StageOutcome:
    """Records and failures of one stage over a bounded batch of videos (a wave, a round)."""

    stage: str
    records: list[StageRecord] = field(default_factory=list)
    failures: list[VideoFailure] = field(default_factory=list)

    @property
    def succeeded(self) -> list[str]:
        return sorted((r.video_id for r in self.records), key=video_id_order)

    def add(self, result: StageRecord | VideoFailure) -> None:
        """File one video's result, as ``Stage.run_isolated`` returns it, as a record or a failure."""
        if isinstance(result, StageRecord):
            self.records.append(result)
        else:
            self.failures.append(result)


SkipReason = Literal["extension", "link", "not a regular file"]

SKIP_REASONS: dict[str, str] = {
    "extension": "name not ending in one of paths.video_extensions",
    "link": "symbolic link: only regular files are registered, as a link may lead outside paths.videos_dir",
    "not a regular file": "not a regular file: a device, pipe or socket",
}
"""What each reason a file is passed over means, as the run summary and the CLI say it."""


@dataclass
class SkippedFiles:
    """Files under ``paths.videos_dir`` that registration passed over: every one counted, by
    reason, and the first :attr:`shown` of each named (paths relative to the videos folder).

    Examples:
        >>> skipped = SkippedFiles(shown=2)
        >>> for name in ("a.m4v", "b.m4v", "c.m4v"):
        ...     skipped.add("extension", name)
        >>> skipped.total, skipped.lines()
        (3, ['3 files (name not ending in one of paths.video_extensions): a.m4v, b.m4v and 1 more'])
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    shown: int = 10

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: SkipReason, source: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        names = self.examples.setdefault(reason, [])
        if len(names) < self.shown:
            names.append(source)

    def line(self, reason: str) -> str:
        """How many files were passed over for ``reason``, what that means, and the first names."""
        count, names = self.counts.get(reason, 0), self.examples.get(reason, [])
        files = "file" if count == 1 else "files"
        more = f" and {count - len(names)} more" if count > len(names) else ""
        return f"{count} {files} ({SKIP_REASONS.get(reason, reason)}): {', '.join(names)}{more}"

    def lines(self) -> list[str]:
        """One :meth:`line` per reason."""
        return [self.line(reason) for reason in self.counts]
