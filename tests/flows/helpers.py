"""Helpers the flow tests share: settings overrides and the bytes a build leaves."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

# Frame size and H5 size of small_build.
SMALL_W, SMALL_H, SMALL_S = 128, 96, 64


def paths_under(root: Path) -> dict[str, str]:
    """The ``paths`` section of a build whose videos, work and dataset live under ``root``."""
    return {"videos_dir": str(root / "videos"), "work_dir": str(root / "work"), "dataset_dir": str(root / "dataset")}


def small_build(root: Path, points_per_window: int) -> dict[str, Any]:
    """A quick build on the thread runner: 128x96 frames, 64-pixel H5, one immediate retry.

    One retry, at once: typed errors must still run once only, transient ones twice.
    """
    return {
        "paths": paths_under(root),
        "cluster": {"runner": "threads", "cpu_workers": 2},
        "retry": {"retries": 1, "retry_delay_s": 0.0, "retry_jitter_factor": 0.0},
        "preprocess": {"width": SMALL_W, "height": SMALL_H},
        "h5": {"target_size": SMALL_S},
        "tracks_3d": {"points_per_window": points_per_window},
    }


def vid(index: int) -> str:
    """The video id of the ``index``-th registered video."""
    return f"{index:05d}"


def merge_sections(base: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base`` with each section of ``extra`` merged into its own (one level deep)."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = {**merged.get(key, {}), **value}
    return merged


def digests(dataset: Path) -> dict[str, str]:
    """sha256 of every H5 file and of the statistics (when present)."""
    files = sorted(dataset.glob("*.hdf5")) + [dataset / "normalization_stats.yaml"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}
