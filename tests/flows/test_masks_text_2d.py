"""The flow with the script's other stages: object-masked 3D tracks with text, then a 2D dataset.

Two short clips of ``make_corpus(metadata=True)`` (a description each; the noun ``box`` for
the first, none for the second), thread runner. The flow must run exactly the stages the
settings include, give only the prompted clip a GPU task of the object masks, and a dataset
directory must keep one track type.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.flows.helpers import SMALL_H, SMALL_W, merge_sections, small_build, vid
from tests.y2r_reader import load_y2r
from trackset.errors import SettingsError
from trackset.flows.build_dataset import build_dataset
from trackset.reports.clip_report import clip_rows
from trackset.synthetic.corpus import describe_scene, load_scene_for, make_corpus

FRAMES = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("masks_text")
    make_corpus(root / "videos", 2, seed=5, num_frames=FRAMES, width=SMALL_W, height=SMALL_H, metadata=True)
    csv_path = root / "videos" / "metadata.csv"
    rows = list(csv.DictReader(csv_path.open()))
    rows[1]["noun"] = ""  # clip_001 has a description but nothing to prompt SAM3 with
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_masked_3d_tracks_with_text_then_a_2d_dataset_beside_it(corpus: Path, monkeypatch):
    import trackset.engine.executor as executor

    tasked: dict[str, list[str]] = {}  # the videos each stage gave tasks
    real = executor.submit_stage_tasks

    def recording(stage, videos, *args, **kwargs):
        tasked.setdefault(stage, []).extend(v.video_id for v in videos)
        return real(stage, videos, *args, **kwargs)

    monkeypatch.setattr(executor, "submit_stage_tasks", recording)
    three_d = merge_sections(small_build(corpus, points_per_window=24), {"h5": {"include_text": True}})
    summary = build_dataset(overrides=three_d)
    assert not summary.failures
    assert [tally.stage for tally in summary.stages] == [
        "preprocess", "depth_camera", "object_masks", "tracks_3d", "hands", "h5_build",
    ]
    assert summary.stage("object_masks").info_totals["unprompted"] == 1
    assert tasked["object_masks"] == [vid(0)] and tasked["depth_camera"] == [vid(0), vid(1)]  # no SAM3 task for 00001
    assert summary.stage("tracks_3d").info_totals["unmasked"] == 1
    dataset = corpus / "dataset"
    loaded = load_y2r(dataset, text_mode=True)
    expected = [describe_scene(load_scene_for(corpus / "videos" / f"clip_{i:03d}.mp4")) for i in range(2)]
    assert [loaded.texts[i] for i in range(2)] == expected and loaded.samples
    rows = clip_rows(corpus / "work", dataset)  # what the demo prints
    assert [(r.prompt, r.text) for r in rows] == [("box.", expected[0]), ("", expected[1])]
    assert 0 < rows[0].mask_percent < 100 and rows[1].mask_percent == 0
    assert all(r.points_per_window > 0 for r in rows)

    two_d = merge_sections(three_d, {"h5": {"track_type": "2d"}, "tracks_2d": {"grid_size": 32}})
    with pytest.raises(SettingsError, match=r"holds '3d' tracks .* never mix"):
        build_dataset(overrides=two_d)  # the same directory: refused
    two_d["paths"]["dataset_dir"] = str(corpus / "dataset-2d")
    summary = build_dataset(overrides=two_d)
    assert not summary.failures
    assert [tally.stage for tally in summary.stages] == ["preprocess", "object_masks", "tracks_2d", "h5_build"]
    assert summary.stage("preprocess").skipped == 2 and summary.stage("object_masks").skipped == 2  # shared work
    loaded = load_y2r(corpus / "dataset-2d", track_type="2d", text_mode=True)
    assert loaded.stats["track_dim"] == 2 and loaded.samples
    assert loaded.sample(0, num_track_ts=10)["query_coords"].shape[1] == 2


def test_an_unprompted_clip_whose_masks_cannot_be_written_in_the_flow_goes_to_a_task(
    corpus: Path, tmp_path: Path, monkeypatch
):
    """A full disk, say, while the flow writes an unprompted clip's masks: the run goes on and
    the clip gets a task, which writes them."""
    import shutil

    import trackset.engine.executor as executor
    import trackset.stages.mask_stage as mask_stage

    shutil.copytree(corpus / "videos", tmp_path / "videos")
    tasked: list[str] = []
    real_submit, real_write = executor.submit_stage_tasks, mask_stage.write_masks
    calls: list[str] = []

    def recording(stage, videos, *args, **kwargs):
        if stage == "object_masks":
            tasked.extend(v.video_id for v in videos)
        return real_submit(stage, videos, *args, **kwargs)

    def full_once(path, *args, **kwargs):
        calls.append(path.name)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(executor, "submit_stage_tasks", recording)
    monkeypatch.setattr(mask_stage, "write_masks", full_once)
    summary = build_dataset(overrides=small_build(tmp_path, points_per_window=24))
    assert not summary.failures
    assert calls[0] == f"{vid(1)}.npz"  # the flow's write of the unprompted clip failed
    assert tasked == [vid(0), vid(1)]  # so it went to a task beside the prompted clip
    assert summary.stage("object_masks").info_totals["unprompted"] == 1
    assert sorted(p.stem for p in (tmp_path / "dataset").glob("*.hdf5")) == [vid(0), vid(1)]
