"""Helpers the flow tests share: settings overrides and the bytes a build leaves."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


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
