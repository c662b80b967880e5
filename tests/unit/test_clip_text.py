"""``metadata.csv``: rows name clips, ``root/text`` comes from it, y2r's ``text_mode`` reads it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import h5py
import pytest

from tests.unit.test_mask_stages import add_video, run, settings_for
from tests.y2r_reader import load_y2r
from trackset.dataset.record import RunInfo, write_dataset_files
from trackset.domain import VideoRef
from trackset.formats.clip_metadata import ClipMetadata, MetadataError, find_row, video_keys
from trackset.formats.layout import DatasetLayout
from trackset.stages.registry import build_stage
from trackset.synthetic.scene import SceneSpec

STAGES = ["depth_camera", "object_masks", "tracks_3d", "hands", "h5_build"]


def test_rows_name_videos_by_path_stem_or_number(tmp_path: Path):
    csv = tmp_path / "metadata.csv"
    csv.write_text('clip_id,text,noun\n42,"wipe, then dry",sponge\nkitchen/clip_1,open it,\nclip_1,close it,lid\n')
    videos = tmp_path / "videos"
    by_stem = VideoRef("00000", videos / "00042.mp4", "h")
    nested = VideoRef("00001", videos / "kitchen" / "clip_1.mp4", "h")
    flat = VideoRef("00002", videos / "clip_1.webm", "h")
    assert find_row(by_stem, csv, videos, "source").text == "wipe, then dry"  # CSV quoting, 42 = 00042
    assert find_row(nested, csv, videos, "source").text == "open it"  # the path wins over the stem
    assert find_row(nested, csv, videos, "source").noun is None  # an empty cell is no noun
    assert find_row(flat, csv, videos, "source").noun == "lid"
    assert find_row(VideoRef("00042", videos / "x.mp4", "h"), csv, videos, "video_id").noun == "sponge"
    assert video_keys(nested, videos, "source") == ["kitchen/clip_1", "clip_1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("id,text\n1,a\n", "no 'clip_id' column"), ("clip_id,text\n7,a\n007,b\n", "line 3: clip_id '007' appears twice")],
)
def test_an_unusable_file_says_why(tmp_path: Path, content: str, message: str):
    path = tmp_path / "metadata.csv"
    path.write_text(content)
    with pytest.raises(MetadataError, match=message):
        ClipMetadata.read(path)


@pytest.fixture(scope="module")
def with_text(tmp_path_factory):
    """Two clips, one with a description, built with ``h5.include_text``."""
    root = tmp_path_factory.mktemp("text")
    settings = settings_for(root, h5={"include_text": True, "target_size": 48})
    spec = SceneSpec.from_seed(5, num_frames=8, width=128, height=96)
    videos = [add_video(settings, spec, f"{i:05d}", f"clip_{i:03d}") for i in range(2)]
    (settings.paths.videos_dir / "metadata.csv").write_text(
        "clip_id,text,noun\nclip_000,stack the boxes,box\nclip_001,,box\n"
    )
    for name in STAGES[:-1]:
        for video in videos:
            run(settings, [name], video)
    h5 = build_stage("h5_build", settings)
    outcomes = [h5.run_isolated(video) for video in videos]
    return settings, videos, outcomes


def test_the_description_becomes_root_text_and_y2r_text_mode_reads_it(with_text):
    settings, _, outcomes = with_text
    assert outcomes[0].info["text"] == 1
    with h5py.File(DatasetLayout(settings.paths.dataset_dir).h5("00000")) as f:
        text = f["root/text"]
        assert text.shape == () and h5py.check_string_dtype(text.dtype).encoding == "utf-8"
        assert text[()].decode() == "stack the boxes"
    write_dataset_files(
        DatasetLayout(settings.paths.dataset_dir), settings.statistics.std_floor, RunInfo(), datetime.now(timezone.utc)
    )
    loaded = load_y2r(settings.paths.dataset_dir, text_mode=True, track_type="3d")
    assert loaded.texts == {0: "stack the boxes"} and loaded.samples
    sample = loaded.sample(0, num_track_ts=6)
    assert (
        sample["query_coords"].shape[1] == 3 and sample["poses"].shape == (6, 9) and sample["depth"].shape == (48, 48)
    )


def test_a_clip_without_a_description_fails_naming_the_file_and_clip(with_text):
    settings, _, outcomes = with_text
    failure = outcomes[1]
    assert failure.video_id == "00001" and failure.stage == "h5_build"
    assert "metadata.csv" in failure.reason and "an empty 'text' for clip_id 'clip_001'" in failure.reason
    assert not DatasetLayout(settings.paths.dataset_dir).h5("00001").exists()  # nothing silently empty


def test_fixing_the_row_rebuilds_that_clip_only(with_text):
    settings, videos, _ = with_text
    h5 = build_stage("h5_build", settings)
    assert h5.is_done(videos[0]) and not h5.is_done(videos[1])
    (settings.paths.videos_dir / "metadata.csv").write_text(
        "clip_id,text,noun\nclip_000,stack the boxes,box\nclip_001,slide the box left,box\n"
    )
    assert h5.is_done(videos[0])
    assert h5.run_isolated(videos[1]).info["text"] == 1
