"""Which videos a run must process: register sources in the manifest, skip what is current.

A video needs work when its H5 is missing or was built from other inputs or settings. A
quarantined video (it did not fit alone on a GPU) is skipped, with its reason, until its
content or the settings change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path

from trackset.config.settings import ClusterSettings, Settings
from trackset.dataset.done_index import DoneIndex
from trackset.dataset.importer import register_imports, scan_intermediates
from trackset.dataset.lock import LockHolder
from trackset.dataset.manifest import Manifest
from trackset.dataset.track_type import check_track_type
from trackset.domain import SkippedFiles, VideoFailure, VideoRef, video_id_order
from trackset.errors import BadInputError
from trackset.formats.clip_metadata import metadata_path
from trackset.formats.layout import DatasetLayout
from trackset.stages.config import StageConfig, short_hash
from trackset.stages.registry import build_stage, stage_config


def quarantine_key(config: StageConfig, cluster: ClusterSettings, content_hash: str) -> str:
    """What must change to release a video quarantined by a stage: its content, the stage's
    config (its settings, synthetic cost, fake GPUs and everything upstream) or the GPUs chosen.

    Retries, the runner and other stages' knobs leave it quarantined.
    """
    return short_hash(config.quarantine_key(content_hash), json.dumps(cluster.gpus))


class CurrentH5:
    """Whether a video's H5 is current, from the done index where it can tell (a ``stat`` of
    two files), else from its partials, which the index then remembers (trackset.dataset.done_index).

    Under ``run.verify_checksums`` the index is not asked: it knows sizes and times, and the
    setting asks for every H5's checksum.
    """

    def __init__(self, settings: Settings) -> None:
        self.stage = build_stage("h5_build", settings)
        self.done = DoneIndex.load(DatasetLayout(settings.paths.dataset_dir).done_index)
        self.verify = settings.run.verify_checksums

    def is_current(self, video: VideoRef) -> bool:
        h5_path, partials_path = self.stage.outputs(video.video_id)
        fingerprint = self.stage.fingerprint(video)  # with the clip's text when h5.include_text
        if not self.verify and self.done.is_current(video.video_id, fingerprint, h5_path, partials_path):
            return True
        if not self.stage.is_done(video):
            return False
        self.done.record(video.video_id, fingerprint, h5_path, partials_path)
        return True


@dataclass
class Registration:
    """The videos of the dataset and what this run has to do with them."""

    videos: list[VideoRef] = field(default_factory=list)
    pending: list[VideoRef] = field(default_factory=list)
    excluded: list[VideoFailure] = field(default_factory=list)  # quarantined, unreadable, incomplete imports
    skipped: SkippedFiles = field(default_factory=SkippedFiles)  # files of videos_dir that are not videos
    new: int = 0
    changed: int = 0
    missing: int = 0
    moved: int = 0

    def describe(self) -> str:
        return (
            f"{len(self.videos)} videos ({self.new} new, {self.changed} changed, {self.moved} moved, "
            f"{self.missing} missing); "
            f"{len(self.pending)} to process, {len(self.excluded)} excluded, {self.skipped.total} other files skipped"
        )

    def resume_line(self, unfinished: LockHolder | None) -> str:
        """What this run takes up: the videos earlier runs finished, what is left, and the run
        that did not finish (the holder whose lock this run took over), if any.

        Examples:
            >>> videos = [VideoRef(f"{i:05d}", Path(f"{i}.mp4"), "") for i in range(1251)]
            >>> registration = Registration(videos=videos, pending=videos[1234:], new=1)
            >>> print(registration.resume_line(None))
            1,234 of 1,251 videos done in earlier runs; 17 to process (1 new, 0 changed)
            >>> holder = LockHolder("gpu1", 4242, "5f2c", "2027-01-05T02:00:00")
            >>> print(registration.resume_line(holder))  # doctest: +NORMALIZE_WHITESPACE
            resuming flow run 5f2c (host gpu1, pid 4242, since 2027-01-05T02:00:00), which did not
            finish: 1,234 of 1,251 videos done in earlier runs; 17 pending
        """
        quarantined = sum(1 for failure in self.excluded if failure.kind == "quarantined")
        done = len(self.videos) - len(self.pending) - quarantined
        counts = f"{done:,} of {len(self.videos):,} videos done in earlier runs"
        if unfinished is not None:
            run = unfinished.flow_run_id or "(not a flow run)"
            since = f"host {unfinished.host}, pid {unfinished.pid}, since {unfinished.started}"
            return f"resuming flow run {run} ({since}), which did not finish: {counts}; {len(self.pending):,} pending"
        return f"{counts}; {len(self.pending):,} to process ({self.new} new, {self.changed} changed)"


def register_videos(settings: Settings) -> Registration:
    """Update the manifest from ``paths.videos_dir`` and decide what needs processing."""
    dataset = DatasetLayout(settings.paths.dataset_dir)
    check_track_type(dataset, settings.h5.track_type)  # before the manifest records anything
    manifest = Manifest.load(dataset.manifest)
    metadata = metadata_path(settings.metadata.csv, settings.paths.videos_dir)
    result = manifest.register(settings.paths.videos_dir, settings.paths.video_extensions, ignore=[metadata])
    entries = sorted(
        result.new + result.changed + result.unchanged + result.moved, key=lambda e: video_id_order(e.video_id)
    )
    h5 = CurrentH5(settings)
    registration = Registration(
        skipped=result.skipped,
        new=len(result.new),
        changed=len(result.changed),
        missing=len(result.missing),
        moved=len(result.moved),
    )
    config_of = cache(partial(stage_config, settings=settings))

    def key_of(stage: str, sha256: str) -> str:
        return quarantine_key(config_of(stage), settings.cluster, sha256)

    for source in result.unreadable:
        vid = source.video_id or "(not registered)"
        error = BadInputError(vid, "register", source.path, f"unreadable: {source.reason}")
        registration.excluded.append(VideoFailure(source.video_id or source.source, "register", str(error)))
    for entry in entries:
        video = VideoRef(entry.video_id, entry.source_path(settings.paths.videos_dir), entry.sha256)
        registration.videos.append(video)
        reason = manifest.quarantined(entry.video_id, entry.sha256, partial(key_of, sha256=entry.sha256))
        if reason is not None:
            registration.excluded.append(VideoFailure(entry.video_id, "quarantine", reason, "quarantined", 0))
        elif not h5.is_current(video):
            registration.pending.append(video)
    h5.done.flush()
    return registration


def import_intermediates(settings: Settings) -> Registration:
    """Register the script pipeline's intermediates in ``paths.work_dir`` (trackset.dataset.importer).

    Ids with missing frames or tracks are reported as failures, never silently dropped.
    """
    root = Path(settings.paths.work_dir)
    dataset = DatasetLayout(settings.paths.dataset_dir)
    check_track_type(dataset, settings.h5.track_type)
    scan = scan_intermediates(root)
    register_imports(root, dataset, scan.videos)
    h5 = CurrentH5(settings)
    registration = Registration(videos=list(scan.videos), new=len(scan.videos))
    registration.pending = [video for video in scan.videos if not h5.is_current(video)]
    h5.done.flush()
    registration.excluded = [
        VideoFailure(name, "import", f"{root}: {reason}") for name, reason in sorted(scan.skipped.items())
    ]
    return registration
