"""Builds in waves (thread runner, fast suite): the same bytes as one barrier, bounded disk,
ids that last, one build per dataset."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.flows.helpers import SMALL_H, SMALL_W, digests, merge_sections, small_build, vid
from tests.y2r_reader import load_y2r
from trackset.config.settings import Settings
from trackset.dataset.lock import DatasetBusyError, DatasetLock
from trackset.dataset.manifest import ManifestEntry
from trackset.dataset.validate import validate_dataset
from trackset.flows.build_dataset import build_dataset
from trackset.synthetic.corpus import make_corpus

NUM_VIDEOS, FRAMES, SEED = 3, 12, 3
INTERMEDIATE_DIRS = ("frames", "vipe", "tracks_3d", "hand_poses")


def overrides(root: Path, **extra) -> dict:
    return merge_sections(small_build(root, points_per_window=24), extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("waves-corpus") / "videos"
    make_corpus(videos, NUM_VIDEOS, seed=SEED, num_frames=FRAMES, width=SMALL_W, height=SMALL_H)
    return videos


@pytest.fixture(scope="module")
def one_barrier(corpus, tmp_path_factory) -> dict[str, str]:
    """Digests of a build of the whole corpus as one wave: what every other build must match."""
    root = tmp_path_factory.mktemp("one-wave")
    shutil.copytree(corpus, root / "videos")
    summary = build_dataset(overrides=overrides(root, run={"wave_size": 100}))
    assert not summary.failures
    return digests(root / "dataset")


def fresh(corpus: Path, root: Path) -> Path:
    shutil.copytree(corpus, root / "videos")
    return root


def intermediate_files(work: Path) -> list[Path]:
    return [p for name in INTERMEDIATE_DIRS for p in (work / name).rglob("*") if p.is_file()]


def test_three_waves_give_the_bytes_of_one_and_land_early_h5_files_first(corpus, one_barrier, tmp_path):
    root = fresh(corpus, tmp_path)
    summary = build_dataset(overrides=overrides(root, run={"wave_size": 1}))  # three waves of one
    assert not summary.failures
    assert digests(root / "dataset") == one_barrier
    # The first wave's H5 file was written before the last wave's depth: videos streamed.
    first_h5 = (root / "dataset" / f"{vid(0)}.hdf5").stat().st_mtime_ns
    last_depth = (root / "work" / "vipe" / f"{vid(2)}.npz").stat().st_mtime_ns
    assert first_h5 < last_depth
    for outcome in summary.stages:  # every stage saw every video exactly once
        got = sorted(r.video_id for r in summary.records(outcome.stage))
        assert got == [vid(i) for i in range(NUM_VIDEOS)], outcome.stage


def test_without_kept_intermediates_nothing_remains_and_a_changed_setting_recomputes_from_source(
    corpus, tmp_path, caplog
):
    root = fresh(corpus, tmp_path)
    lean = overrides(root, run={"wave_size": 2, "keep_intermediates": "none"})  # waves of 2 and 1
    assert not build_dataset(overrides=lean).failures
    assert intermediate_files(root / "work") == []
    assert sorted(p.stem for p in (root / "dataset").glob("*.hdf5")) == [vid(i) for i in range(NUM_VIDEOS)]

    again = build_dataset(overrides=lean)
    assert again.videos_pending == 0 and all(not again.records(o.stage) for o in again.stages)

    shorter = merge_sections(lean, {"tracks_3d": {"window_length": 6}})
    with caplog.at_level("INFO"):
        changed = build_dataset(overrides=shorter)
    for outcome in changed.stages:  # everything from the source: the intermediates were gone
        assert {r.status for r in changed.records(outcome.stage)} == {"done"}, outcome.stage
    assert "preprocess: 2 videos recompute from their source" in caplog.text
    clean = fresh(corpus, tmp_path / "clean")
    build_dataset(overrides=merge_sections(overrides(clean), {"tracks_3d": {"window_length": 6}}))
    assert digests(root / "dataset") == digests(clean / "dataset")


def test_a_moved_video_keeps_its_id_and_is_not_recomputed(corpus, one_barrier, tmp_path):
    root = fresh(corpus, tmp_path)
    build_dataset(overrides=overrides(root))
    (root / "videos" / "kitchen").mkdir()
    for suffix in (".mp4", ".scene.json"):
        os.replace(root / "videos" / f"clip_002{suffix}", root / "videos" / "kitchen" / f"renamed{suffix}")
    summary = build_dataset(overrides=overrides(root))
    assert summary.videos_pending == 0 and not summary.failures
    lines = [json.loads(line) for line in (root / "dataset" / "manifest.jsonl").read_text().splitlines()]
    assert lines[-1] == {**lines[-1], "video_id": vid(2), "source": "kitchen/renamed.mp4", "moved_from": "clip_002.mp4"}
    assert digests(root / "dataset") == one_barrier


def test_ids_past_99999_build_end_to_end_and_load_in_the_readers_order(corpus, tmp_path):
    root = fresh(corpus, tmp_path)
    (root / "dataset").mkdir()
    earlier = ManifestEntry("99997", "long-gone.mp4", "0" * 64, 1, 0)  # ids 0..99997 were handed out before
    (root / "dataset" / "manifest.jsonl").write_text(json.dumps(earlier.__dict__) + "\n")
    summary = build_dataset(overrides=overrides(root, run={"wave_size": 2}))
    assert not summary.failures
    expected = ["99998", "99999", "100000"]
    assert sorted(r.video_id for r in summary.records("h5_build")) == sorted(expected)
    report = validate_dataset(root / "dataset", Settings(h5={"target_size": 64}).h5, 1e-6)
    assert report.ok, report.problems
    loaded = load_y2r(root / "dataset")
    assert [Path(name).stem for name in loaded.files] == expected
    assert loaded.samples and loaded.sample(0, num_track_ts=10)["displacements"].shape[0] == 10


def test_a_second_run_on_a_held_dataset_fails_at_once_naming_the_holder(corpus, tmp_path):
    root = fresh(corpus, tmp_path)
    with DatasetLock(root / "dataset", flow_run_id="the-nightly-build"):
        with pytest.raises(DatasetBusyError, match=r"being built by another run \(host .*flow run the-nightly-build"):
            build_dataset(overrides=overrides(root))
        assert sorted(p.name for p in (root / "dataset").iterdir()) == [".trackset.lock"]  # nothing touched
    assert not (root / "work").exists()
