"""``dataset.json``: which version of the dataset a directory holds, and the runs that built it.

It sits beside ``normalization_stats.yaml`` and is rewritten with it at the end of every
run. Its ``dataset_version`` is a digest over every video's id and H5 fingerprint (the one
its partials hold), in id order: the fingerprint covers the video's content, every setting
of every stage upstream and its ``metadata.csv`` values, so two directories with the same
version hold the same files, and a training run that records the version can be traced
to the data it saw. ``statistics_sha256`` ties the statistics file to that version.

``runs`` lists the last :data:`RUNS_KEPT` runs that changed the version (id, name, when,
videos built and failed), oldest first, and ``runs_total`` counts all of them: at 50,000
videos over months of nightly refreshes the file stays a few kilobytes. A run that changed
nothing is not listed. Unlike the H5 files and the statistics this file names runs and
times (DECISIONS.md: run metadata goes beside the data, never into it), so two builds of
the same corpus give the same version in different files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from trackset import __version__
from trackset.dataset.statistics import read_partials, write_dataset_statistics
from trackset.formats.layout import DatasetLayout, write_text_atomic

RUNS_KEPT = 20
"""Runs listed in ``dataset.json``; older ones are only counted (``runs_total``)."""


def dataset_version(fingerprints: Iterable[tuple[str, str]]) -> str:
    """sha256 over ``(video id, fingerprint)`` pairs, given in id order (the partials' order).

    Examples:
        >>> a = dataset_version([("00000", "f0"), ("00001", "f1")])
        >>> a == dataset_version([("00000", "f0"), ("00001", "f1")]), a == dataset_version([("00000", "f0")])
        (True, False)
    """
    digest = hashlib.sha256()
    for video_id, fingerprint in fingerprints:
        digest.update(f"{video_id}\t{fingerprint}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class RunEntry:
    """One run that changed the dataset.

    Attributes:
        flow_run_id: the Prefect flow run's id (empty outside a flow run).
        flow_run_name: its name.
        finished: when it wrote the dataset's statistics (UTC, ISO 8601).
        videos_built: videos whose H5 it built.
        videos_failed: videos that failed in it.
        dataset_version: the version it left.
    """

    flow_run_id: str
    flow_run_name: str
    finished: str
    videos_built: int
    videos_failed: int
    dataset_version: str


@dataclass(frozen=True)
class DatasetRecord:
    """The contents of ``dataset.json`` (module docstring)."""

    dataset_version: str
    videos: int
    track_type: str
    statistics_sha256: str
    trackset_version: str
    runs: tuple[RunEntry, ...] = ()
    runs_total: int = 0

    def to_json(self) -> str:
        data = asdict(self)
        data["runs"] = [asdict(run) for run in self.runs]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DatasetRecord:
        """Parse ``dataset.json``.

        Raises:
            ValueError: naming what is missing or of the wrong type.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        try:
            runs = tuple(RunEntry(**_typed(run, RunEntry)) for run in data.get("runs", []))
            return cls(**{**_typed({k: v for k, v in data.items() if k != "runs"}, cls), "runs": runs})
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def read(cls, path: Path) -> DatasetRecord | None:
        """The record at ``path``; None when there is none or it cannot be read (a run then
        starts a new one, and ``trackset validate`` says what is wrong with it)."""
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return None


_TYPES = {"str": str, "int": int}


def _typed(data: Any, kind: type[RunEntry] | type[DatasetRecord]) -> dict[str, Any]:
    """``data`` checked against the plain fields of ``kind`` (names and ``str``/``int`` types)."""
    if not isinstance(data, dict):
        raise TypeError(f"{kind.__name__}: expected an object, got {type(data).__name__}")
    types = {spec.name: str(spec.type) for spec in fields(kind) if spec.name != "runs"}
    missing = sorted(set(types) - set(data) - {"runs_total"})
    if missing:
        raise TypeError(f"{kind.__name__}: missing {', '.join(missing)}")
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise TypeError(f"{kind.__name__}: unknown keys {', '.join(unknown)}")
    for name, value in data.items():
        if not isinstance(value, _TYPES[types[name]]) or isinstance(value, bool):
            raise TypeError(f"{kind.__name__}.{name}: {value!r} is not a {types[name]}")
    return dict(data)


@dataclass(frozen=True)
class RunInfo:
    """What a run knows about itself when it writes the dataset's files."""

    flow_run_id: str = ""
    flow_run_name: str = ""
    videos_built: int = 0
    videos_failed: int = 0


@dataclass(frozen=True)
class DatasetUpdate:
    """What the end of a run wrote: the statistics and the record, and the version before."""

    statistics: dict[str, object]
    record: DatasetRecord
    previous_version: str | None = field(default=None)

    @property
    def changed(self) -> bool:
        """True when this run changed the dataset's version (or gave it its first record)."""
        return self.previous_version != self.record.dataset_version


def write_dataset_files(dataset: DatasetLayout, std_floor: float, run: RunInfo, now: datetime) -> DatasetUpdate:
    """Merge every video's partials into ``normalization_stats.yaml``, then write ``dataset.json``.

    Both cover the whole directory, so a resumed run or a refresh with nothing new rewrites
    the same statistics and the same version. The statistics are written first: the record
    names their digest.
    """
    partials = read_partials(dataset)
    stats = write_dataset_statistics(dataset, std_floor, partials)
    version = dataset_version((item.video_id, item.fingerprint) for item in partials)
    previous = DatasetRecord.read(dataset.dataset_json)
    previous_version = previous.dataset_version if previous is not None else None
    runs, total = (previous.runs, previous.runs_total) if previous is not None else ((), 0)
    if previous_version != version:
        entry = RunEntry(
            run.flow_run_id, run.flow_run_name, now.isoformat(), run.videos_built, run.videos_failed, version
        )
        runs, total = (*runs, entry)[-RUNS_KEPT:], total + 1
    record = DatasetRecord(
        dataset_version=version,
        videos=len(partials),
        track_type=str(stats["track_type"]),
        statistics_sha256=hashlib.sha256(dataset.stats_yaml.read_bytes()).hexdigest(),
        trackset_version=__version__,
        runs=runs,
        runs_total=total,
    )
    write_text_atomic(dataset.dataset_json, record.to_json())
    return DatasetUpdate(stats, record, previous_version)
