"""Where every intermediate and output of a video lives.

Paths are built from validated video ids only (:func:`trackset.domain.check_video_id`), never
from source file names, so no path can escape the work or dataset directory (FORMATS.md: "no
path ever comes from a file name").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trackset.domain import check_video_id, is_video_id, video_id_order


@dataclass(frozen=True)
class WorkLayout:
    """Intermediates of the GPU stages, under ``work_dir`` (FORMATS.md stage order)."""

    root: Path

    def frames_dir(self, video_id: str) -> Path:
        """``frames/<vid>/``: ``frames.npy`` (T,H,W,3 uint8), ``meta.json``, optional PNGs."""
        return self.root / "frames" / check_video_id(video_id)

    def frames_npy(self, video_id: str) -> Path:
        return self.frames_dir(video_id) / "frames.npy"

    def frames_meta(self, video_id: str) -> Path:
        return self.frames_dir(video_id) / "meta.json"

    def vipe(self, video_id: str) -> Path:
        return self.root / "vipe" / f"{check_video_id(video_id)}.npz"

    def tracks_3d(self, video_id: str) -> Path:
        return self.root / "tracks_3d" / f"{check_video_id(video_id)}.pt"

    def hand_poses(self, video_id: str) -> Path:
        return self.root / "hand_poses" / f"{check_video_id(video_id)}.pt"

    def human_masks(self, video_id: str) -> Path:
        """Person masks ``(T,H,W)`` of the preprocessed frames (the script's ``human_masks/``)."""
        return self.root / "human_masks" / f"{check_video_id(video_id)}.npz"

    def clean_frames_dir(self, video_id: str) -> Path:
        """``clean_frames/<vid>/``: ``frames.npy`` with the people inpainted (the script's ``clean_frames/``)."""
        return self.root / "clean_frames" / check_video_id(video_id)

    def clean_frames_npy(self, video_id: str) -> Path:
        return self.clean_frames_dir(video_id) / "frames.npy"

    def object_masks(self, video_id: str) -> Path:
        """Masks ``(T,H,W)`` of the objects the clip's prompt names (the script's ``masks/``)."""
        return self.root / "object_masks" / f"{check_video_id(video_id)}.npz"

    def tracks_2d(self, video_id: str) -> Path:
        """Sliding-window 2D tracks in pixels (the script's ``tracks/``)."""
        return self.root / "tracks_2d" / f"{check_video_id(video_id)}.pt"

    def marker(self, stage: str, video_id: str) -> Path:
        """Completion marker of a stage: written last, holds the fingerprint of its inputs."""
        return self.root / "markers" / stage / f"{check_video_id(video_id)}.json"


@dataclass(frozen=True)
class DatasetLayout:
    """The dataset directory read by training code, plus trackset's bookkeeping beside it."""

    root: Path

    def h5(self, video_id: str) -> Path:
        return self.root / f"{check_video_id(video_id)}.hdf5"

    def partials(self, video_id: str) -> Path:
        """Per-video statistics moments (count, mean, M2) and the H5's fingerprint."""
        return self.root / "partials" / f"{check_video_id(video_id)}.json"

    @property
    def stats_yaml(self) -> Path:
        return self.root / "normalization_stats.yaml"

    @property
    def dataset_json(self) -> Path:
        """The dataset's version and the runs that built it (trackset.dataset.record)."""
        return self.root / "dataset.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def done_index(self) -> Path:
        """Which videos' H5 files are current, with their files' sizes and mtimes (trackset.dataset.done_index)."""
        return self.root / "done-index.jsonl"

    def run_report(self, run: str) -> Path:
        """The per-video report of one run (``trackset.reports.run_report``), beside the dataset."""
        return self.root / "runs" / f"{run}.jsonl"

    def partial_ids(self) -> list[str]:
        """Ids of every video with stored partials, sorted (the merge order of statistics)."""
        folder = self.root / "partials"
        if not folder.is_dir():
            return []
        return sorted((p.stem for p in folder.glob("*.json") if is_video_id(p.stem)), key=video_id_order)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and rename it into place on success.

    A crash or an exception leaves either the previous ``target`` or nothing, never a
    truncated file that looks complete; the temporary file is removed on failure.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
