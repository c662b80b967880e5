"""Which intermediates a run keeps once a video's H5 is durable, and deleting the rest.

A 190-frame video leaves ~193 MB of intermediates (``frames.npy`` 112 MB, the depth
``.npz`` 75 MB, tracks 6 MB, hands 0.35 MB): ~9.6 TB at 50,000 videos. With
``run.keep_intermediates`` set to ``none`` (or a list of stages to keep), each wave's
intermediates are deleted as soon as its H5 files and statistics partials are durable, so
the disk holds about two waves' worth at any time.

"Durable" means fsynced file contents and a fsynced directory entry: the H5 stage renames
its outputs into place, and only after both are on disk is anything it was built from
removed. A crash between the two leaves the intermediates, never a video with neither.

The stages' completion markers stay (a few hundred bytes each): a marker whose outputs are
gone tells a later run that those outputs were deleted on purpose, which it reports when a
settings change makes it recompute them from the source video
(:meth:`trackset.stages.base.Stage.was_deleted`).

What a killed run left half-written goes too, at the start of the next run
(:func:`remove_stale_temporaries`): the temporary files of
:func:`trackset.formats.layout.atomic_path` in the folders of this dataset and its work
directory, which no other run can be writing to while this one holds their locks.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

from trackset.config.settings import IntermediateStage, Settings
from trackset.domain import VideoRef
from trackset.formats.layout import DatasetLayout, WorkLayout, fsync_path, remove_temporaries
from trackset.stages.registry import build_stage

INTERMEDIATE_STAGES: tuple[IntermediateStage, ...] = get_args(IntermediateStage)


def stages_to_delete(keep: Literal["all", "none"] | list[IntermediateStage]) -> list[IntermediateStage]:
    """The stages whose intermediates go once a video's H5 is durable.

    Examples:
        >>> stages_to_delete("all"), stages_to_delete(["depth_camera"])[:3]
        ([], ['preprocess', 'tracks_3d', 'hands'])
        >>> stages_to_delete("none")[4:]
        ['human_masks', 'clean_frames', 'object_masks', 'tracks_2d']
    """
    if keep == "all":
        return []
    kept = set() if keep == "none" else set(keep)
    return [stage for stage in INTERMEDIATE_STAGES if stage not in kept]


def release_intermediates(videos: Iterable[VideoRef], settings: Settings) -> int:
    """Delete the intermediates ``run.keep_intermediates`` does not keep, for every video of
    ``videos`` whose H5 and partials are current; return the bytes freed.

    A video whose H5 is not current (it failed, or was never built) keeps everything, so
    the next run resumes it without recomputing what it already has.
    """
    stages = stages_to_delete(settings.run.keep_intermediates)
    if not stages:
        return 0
    h5 = build_stage("h5_build", settings)
    owners = [build_stage(stage, settings) for stage in stages]
    freed = 0
    for video in videos:
        if not h5.is_done(video):
            continue
        for output in h5.outputs(video.video_id):
            fsync_path(output)
            fsync_path(output.parent)
        for stage in owners:
            for path in stage.intermediate_paths(video.video_id):
                freed += _remove(path)
    return freed


def _remove(path: Path) -> int:
    """Remove a file or a folder; return the bytes it held (0 if it was not there)."""
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
        return size
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    path.unlink(missing_ok=True)
    return size


def remove_stale_temporaries(settings: Settings, pending: Iterable[VideoRef], importing: bool) -> list[Path]:
    """Remove the temporary files a killed run left in this run's folders; return them.

    Looked for in the dataset directory and ``partials/``, the work directory's per-stage
    folders (one ``scandir`` each, however many videos), and the folders of ``pending``
    videos' own (``frames/<vid>/``): a video not pending has its H5, so no run left it
    half-written since the last that did. An import leaves the work directory alone (it is
    the script pipeline's, read only). The caller holds the dataset's and the work
    directory's locks (:class:`trackset.dataset.lock.DatasetLock`).
    """
    folders = DatasetLayout(settings.paths.dataset_dir).own_dirs()
    if not importing:
        work = WorkLayout(settings.paths.work_dir)
        folders += work.shared_dirs() + [folder for video in pending for folder in work.video_dirs(video.video_id)]
    return remove_temporaries(folders)
