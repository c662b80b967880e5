"""Intermediates go only once a video's H5 and partials are current, and only those not kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackset.config.settings import Settings
from trackset.dataset.retention import release_intermediates, remove_stale_temporaries
from trackset.domain import VideoRef
from trackset.formats.layout import DatasetLayout, WorkLayout
from trackset.formats.statistics import STATISTIC_DIMS, Moments, VideoPartials
from trackset.stages.registry import build_stage, stage_config


def settings_for(root: Path, keep) -> Settings:
    paths = {"videos_dir": root / "videos", "work_dir": root / "work", "dataset_dir": root / "dataset"}
    return Settings(paths=paths, run={"keep_intermediates": keep})


def intermediates(work: WorkLayout, video_id: str) -> dict[str, list[Path]]:
    return {
        "preprocess": [work.frames_npy(video_id), work.frames_meta(video_id), work.frames_dir(video_id) / "00000.png"],
        "depth_camera": [work.vipe(video_id)],
        "tracks_3d": [work.tracks_3d(video_id)],
        "hands": [work.hand_poses(video_id)],
    }


def make_video(settings: Settings, video_id: str, built: bool) -> VideoRef:
    video = VideoRef(video_id, Path("v.mp4"), f"hash-{video_id}")
    for paths in intermediates(WorkLayout(settings.paths.work_dir), video_id).values():
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 100)
    if built:
        dataset = DatasetLayout(settings.paths.dataset_dir)
        dataset.h5(video_id).parent.mkdir(parents=True, exist_ok=True)
        dataset.h5(video_id).write_bytes(b"h5")
        fingerprint = stage_config("h5_build", settings).fingerprint(video.content_hash)
        moments = {name: Moments.empty(dim) for name, dim in STATISTIC_DIMS.items()}
        VideoPartials(video_id=video_id, fingerprint=fingerprint, **moments).write(dataset.partials(video_id))
    return video


@pytest.mark.parametrize(
    ("keep", "kept"),
    [
        ("all", {"preprocess", "depth_camera", "tracks_3d", "hands"}),
        ("none", set()),
        (["depth_camera"], {"depth_camera"}),
    ],
)
def test_only_unkept_intermediates_of_built_videos_go(tmp_path, keep, kept):
    settings = settings_for(tmp_path, keep)
    built, unbuilt = make_video(settings, "00001", True), make_video(settings, "00002", False)
    freed = release_intermediates([built, unbuilt], settings)
    work = WorkLayout(settings.paths.work_dir)
    for stage, paths in intermediates(work, "00001").items():
        assert all(p.exists() == (stage in kept) for p in paths), stage
    assert freed == 100 * sum(len(paths) for stage, paths in intermediates(work, "00001").items() if stage not in kept)
    assert all(p.exists() for paths in intermediates(work, "00002").values() for p in paths)  # not built: kept
    if "preprocess" not in kept:
        assert not work.frames_dir("00001").exists()


def test_a_stale_h5_keeps_its_intermediates(tmp_path):
    settings = settings_for(tmp_path, "none")
    video = make_video(settings, "00001", True)
    changed = Settings(**{**settings.model_dump(), "h5": {"target_size": 128}})
    assert release_intermediates([video], changed) == 0
    assert WorkLayout(settings.paths.work_dir).vipe("00001").exists()


def test_a_deleted_output_with_a_current_marker_is_told_apart_from_a_missing_one(tmp_path):
    settings = settings_for(tmp_path, "none")
    video = make_video(settings, "00001", True)
    depth = build_stage("depth_camera", settings)
    assert not depth.was_deleted(video)  # no marker: never computed
    depth.mark_done(video)
    assert depth.is_done(video) and not depth.was_deleted(video)
    release_intermediates([video], settings)
    assert not depth.is_done(video) and depth.was_deleted(video)
    other = Settings(**{**settings.model_dump(), "preprocess": {"fps": 5.0}})
    assert not build_stage("depth_camera", other).was_deleted(video)  # stale marker: not "deleted"


def test_a_run_removes_the_temporaries_of_this_dataset_and_work_directory_only(tmp_path):
    settings = settings_for(tmp_path, "all")
    work, dataset = WorkLayout(settings.paths.work_dir), DatasetLayout(settings.paths.dataset_dir)
    name = ".{}.0a1b2c3d.trackset.tmp"
    left = [
        dataset.root / name.format("00001.hdf5"),
        dataset.partials("00001").with_name(name.format("00001.json")),
        work.vipe("00001").with_name(name.format("00001.npz")),
        work.marker("tracks_3d", "00001").with_name(name.format("00001.json")),
        work.frames_dir("00001") / name.format("frames.npy"),  # a pending video's own folder
    ]
    kept = [
        work.frames_dir("00002") / name.format("frames.npy"),  # not pending: its folder is not listed
        dataset.root / "pictures" / name.format("00001.png"),  # trackset show may be writing it
        tmp_path / "elsewhere" / name.format("00001.hdf5"),  # not ours
        dataset.root / "00001.hdf5",
    ]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    pending = [VideoRef("00001", Path("v.mp4"), "h")]
    assert sorted(remove_stale_temporaries(settings, pending, importing=False)) == sorted(left)
    assert all(path.exists() for path in kept)

    for path in left:
        path.write_bytes(b"half")
    removed = remove_stale_temporaries(settings, pending, importing=True)  # the work dir is read only
    assert sorted(removed) == sorted(left[:2])
