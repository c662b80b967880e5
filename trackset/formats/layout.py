"""Where every intermediate and output of a video lives.

Paths are built from validated video ids only (:func:`trackset.domain.check_video_id`), never
from source file names, so no path can escape the work or dataset directory (FORMATS.md: "no
path ever comes from a file name").
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Iterator
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
        """Completion marker of a stage: written last, holds the fingerprint of its inputs and
        the size and checksum of its outputs (:mod:`trackset.formats.markers`)."""
        return self.root / "markers" / stage / f"{check_video_id(video_id)}.json"

    @property
    def profiles(self) -> Path:
        """``profiles/``: the GPU stages' stored memory profiles (trackset.scheduling.profile_store)."""
        return self.root / "profiles"

    def shared_dirs(self) -> list[Path]:
        """The folders that hold one file of every video (and the markers' and profiles'
        folders): where a run looks for temporary files a killed run left."""
        any_id = "00000"
        per_video = (self.vipe, self.tracks_3d, self.hand_poses, self.human_masks, self.object_masks, self.tracks_2d)
        markers = self.root / "markers"
        stages = sorted(p for p in markers.iterdir() if p.is_dir()) if markers.is_dir() else []
        return [path(any_id).parent for path in per_video] + [self.profiles, *stages]

    def video_dirs(self, video_id: str) -> list[Path]:
        """The folders of one video's own (``frames/<vid>/``, ``clean_frames/<vid>/``)."""
        return [self.frames_dir(video_id), self.clean_frames_dir(video_id)]


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

    def own_dirs(self) -> list[Path]:
        """The dataset directory and ``partials/``: the folders only a run that holds the
        dataset's lock writes to (``pictures/`` is not one: ``trackset show`` writes there)."""
        return [self.root, self.partials("00000").parent]

    def partial_ids(self) -> list[str]:
        """Ids of every video with stored partials, sorted (the merge order of statistics)."""
        folder = self.root / "partials"
        if not folder.is_dir():
            return []
        return sorted((p.stem for p in folder.glob("*.json") if is_video_id(p.stem)), key=video_id_order)


TEMPORARY_SUFFIX = ".trackset.tmp"
"""How every temporary file trackset writes ends: ``.<target name>.<8 hex digits>.trackset.tmp``."""

_TEMPORARY = re.compile(r"\..+\.(?:[0-9a-f]{8}\.trackset|[a-z0-9_]{8})\.tmp")
"""A temporary name of :func:`atomic_path`, and the ``tempfile.mkstemp`` names earlier versions
wrote beside their targets (``.<target name>.<8 of [a-z0-9_]>.tmp``)."""


def is_temporary_name(name: str) -> bool:
    """True for the name of a temporary file :func:`atomic_path` creates (or created before
    it named them ``.trackset.tmp``), never for anything else.

    Examples:
        >>> is_temporary_name(".00001.hdf5.0a1b2c3d.trackset.tmp"), is_temporary_name(".frames.npy.k2_x9qzu.tmp")
        (True, True)
        >>> is_temporary_name("00001.hdf5"), is_temporary_name(".swp.tmp"), is_temporary_name("notes.0a1b2c3d.tmp")
        (False, False, False)
    """
    return _TEMPORARY.fullmatch(name) is not None


def fsync_path(path: Path) -> None:
    """Flush a file's contents, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> None:
    """``mkdir -p`` whose new entries survive a crash: each folder it creates is fsynced
    into its parent, so a file renamed into place below it cannot vanish with the folder."""
    missing: list[Path] = []
    current = Path(folder)
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # another writer made it meanwhile (or a file is in the way)
            if not new.is_dir():
                raise
            continue
        fsync_path(new.parent)


def ensure_file(path: Path) -> None:
    """Create ``path`` empty if it is missing, durably (its folders and its entry fsynced).

    For the files trackset appends to (the manifest, the done index, run reports): each
    append is fsynced, which does not make a new file's name durable.
    """
    if path.exists():
        return
    make_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    os.close(fd)
    fsync_path(path.parent)


def _create_temporary(target: Path) -> Path:
    """A new, empty file beside ``target`` with a name :func:`is_temporary_name` recognises.

    Not ``tempfile.mkstemp``: it creates files 0600 whatever the umask, so outputs renamed
    from them could not be read by a training job under another account. ``0o666`` here is
    masked by the umask as for any file (0644 under the usual 022).
    """
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and rename it into place, durably, on success.

    A crash or an exception leaves either the previous ``target`` or nothing, never a
    truncated file that looks complete; the temporary file is removed on failure. On
    success the file's contents are fsynced before the rename and its directory after it,
    so a power cut cannot leave an empty or torn file under the final name either (the
    rename alone orders nothing on ext4 or XFS). A kill between the two leaves the
    temporary file, which the next run removes (:func:`remove_temporaries`).
    """
    make_dirs(target.parent)
    tmp = _create_temporary(target)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically and durably (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def remove_temporaries(folders: Iterable[Path]) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` directly in each of ``folders``.

    Only for folders no other run can be writing to (the run holds their dataset's and work
    directory's locks): what is there was left by a run killed mid-write. Subfolders are
    not entered, and any other file is left alone. Returns what was removed.
    """
    removed: list[Path] = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if is_temporary_name(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed
