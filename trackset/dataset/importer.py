"""Build the dataset from intermediates the script pipeline already computed.

Users of the script pipeline hold terabytes of ``frames/<vid>/<n>.png``, ``vipe/<vid>.npz``,
``tracks_3d/<vid>.pt`` and ``hand_poses/<vid>.pt``. That directory has exactly the layout
of trackset's work directory, so an import points the work directory at it (read only:
the H5 stage writes nothing there) and runs only the H5 build and the statistics.

Videos keep their ids. The scripts' id of a video is the name of its ``frames/<idx:05d>``
folder (``preprocess.py``: the index of the source in the sorted listing of the raw
videos), and every later script names its output after that folder, so the file stems are
the ids; the ``video_name`` the tracks and hands files hold is checked against them.

What the scripts' files mean differs from trackset's in three places; the H5 build converts
them (:mod:`trackset.formats.script_conventions`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from trackset.dataset.manifest import Manifest
from trackset.domain import VideoRef, is_video_id
from trackset.formats.layout import DatasetLayout, WorkLayout


@dataclass
class ImportScan:
    """Videos found in an intermediates directory, and ids skipped with the reason."""

    videos: list[VideoRef] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def intermediate_files(work: WorkLayout, video_id: str) -> list[Path]:
    """The files a video's H5 is built from (frames as PNGs or ``frames.npy``)."""
    frames = work.frames_dir(video_id)
    frame_files = sorted(frames.glob("*.png")) or [work.frames_npy(video_id)]
    optional_hands = [work.hand_poses(video_id)] if work.hand_poses(video_id).is_file() else []
    return [*frame_files, work.vipe(video_id), work.tracks_3d(video_id), *optional_hands]


def content_fingerprint(root: Path, files: list[Path]) -> str:
    """Hash of the files' relative names, sizes and modification times.

    Cheap on terabytes (no file is read) and changes whenever an intermediate is rewritten,
    which is what makes an import rebuild exactly the videos whose inputs changed.
    """
    digest = hashlib.sha256()
    for path in files:
        info = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def scan_intermediates(root: Path) -> ImportScan:
    """Every video id with a depth file; ids missing frames or tracks are skipped, with why."""
    work = WorkLayout(root)
    scan = ImportScan()
    for npz in sorted((root / "vipe").glob("*.npz")):
        video_id = npz.stem
        if not is_video_id(video_id):
            scan.skipped[npz.name] = "not a video id (5 or more digits, zero-padded to 5)"
            continue
        if not (work.frames_dir(video_id).is_dir() and work.tracks_3d(video_id).is_file()):
            scan.skipped[video_id] = "frames/ or tracks_3d/ missing"
            continue
        sha = content_fingerprint(root, intermediate_files(work, video_id))
        scan.videos.append(VideoRef(video_id, root / "vipe" / npz.name, sha))
    return scan


def register_imports(root: Path, dataset: DatasetLayout, videos: list[VideoRef]) -> None:
    """Record imported videos in the dataset's manifest under their own ids."""
    manifest = Manifest.load(dataset.manifest)
    for video in videos:
        source = f"import:{root.resolve().as_posix()}/{video.video_id}"
        manifest.register_import(video.video_id, source, video.content_hash)
