"""Which stages a run includes, what each reads, and fingerprints that follow the data flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from trackset.config.settings import Settings
from trackset.domain import STAGE_ORDER, VideoRef
from trackset.stages.registry import GPU_STAGES, STAGES, enabled_stages, prior_peak_bytes, stage_config, stage_inputs

HUMAN_REMOVAL = {"clean_frames": {"enabled": True}}
TWO_D = {"h5": {"track_type": "2d"}}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ["preprocess", "depth_camera", "object_masks", "tracks_3d", "hands", "h5_build"]),
        ({"object_masks": {"enabled": False}}, ["preprocess", "depth_camera", "tracks_3d", "hands", "h5_build"]),
        (
            HUMAN_REMOVAL,
            [
                "preprocess",
                "human_masks",
                "clean_frames",
                "depth_camera",
                "object_masks",
                "tracks_3d",
                "hands",
                "h5_build",
            ],
        ),
        (TWO_D, ["preprocess", "object_masks", "tracks_2d", "h5_build"]),
        (
            {**TWO_D, "tracks_2d": {"subtract_human_masks": True}},
            ["preprocess", "human_masks", "object_masks", "tracks_2d", "h5_build"],
        ),
    ],
    ids=["default", "no-masks", "human-removal", "2d", "2d-subtract"],
)
def test_enabled_stages_follow_the_settings_and_keep_gpu_stages_contiguous(overrides, expected):
    stages = enabled_stages(Settings(**overrides))
    assert stages == expected
    gpu = [STAGES[name].resources.uses_gpu for name in stages]
    first, last = gpu.index(True), len(gpu) - 1 - gpu[::-1].index(True)
    assert all(gpu[first : last + 1])  # the planner's split_lanes needs one block of GPU stages


def test_every_stage_names_the_script_stage_it_replaces():
    assert {name: STAGES[name].replaces for name in STAGE_ORDER} == {
        "preprocess": "preprocess",
        "human_masks": "gsam_human",
        "clean_frames": "diffueraser",
        "depth_camera": "vipe",
        "object_masks": "gsam",
        "tracks_3d": "tapip3d",
        "tracks_2d": "cotracker",
        "hands": "wilor",
        "h5_build": "create_h5_dataset",
    }


def test_inputs_follow_the_data_flow():
    removal = Settings(**HUMAN_REMOVAL)
    assert stage_inputs("tracks_3d", removal) == ("depth_camera", "clean_frames", "object_masks")
    assert stage_inputs("object_masks", removal) == ("preprocess", "clean_frames")
    assert stage_inputs("hands", removal) == ("depth_camera",)  # hands see the original frames
    assert stage_inputs("h5_build", Settings(**TWO_D)) == ("tracks_2d",)
    assert stage_config("tracks_3d", removal).clean and not stage_config("tracks_3d", Settings()).clean


def lineages(settings: Settings) -> dict[str, str]:
    return {name: stage_config(name, settings).lineage for name in STAGE_ORDER}


@pytest.mark.parametrize(
    ("change", "affected"),
    [
        (
            {"clean_frames": {"enabled": True, "mask_dilation_iter": 3}},
            {"clean_frames", "object_masks", "tracks_3d", "tracks_2d", "h5_build"},
        ),
        ({"object_masks": {"key_frame": -1}}, {"object_masks", "tracks_3d", "tracks_2d", "h5_build"}),
        ({"human_masks": {"key_frame": 0}}, {"human_masks"}),  # nothing reads person masks without human removal
        ({"tracks_3d": {"mask_erosion_px": 3}}, {"tracks_3d", "h5_build"}),
        ({"h5": {"include_text": True}}, {"h5_build"}),
    ],
    ids=["human-removal", "object-masks", "unused-person-masks", "erosion", "text"],
)
def test_a_setting_changes_the_fingerprints_of_what_it_reaches_only(change, affected):
    before, after = lineages(Settings()), lineages(Settings(**change))
    assert {name for name in STAGE_ORDER if before[name] != after[name]} == affected


def test_depth_and_hands_keep_their_fingerprints_when_human_removal_is_on():
    before, after = lineages(Settings()), lineages(Settings(**HUMAN_REMOVAL))
    assert before["depth_camera"] == after["depth_camera"] and before["hands"] == after["hands"]
    assert before["tracks_3d"] != after["tracks_3d"]


def test_a_clips_metadata_enters_only_that_clips_fingerprints(tmp_path: Path):
    videos = tmp_path / "videos"
    videos.mkdir()
    settings = Settings(paths={"videos_dir": videos}, h5={"include_text": True})
    refs = [VideoRef(f"{i:05d}", videos / f"clip_{i}.mp4", "h") for i in range(2)]
    metadata = videos / "metadata.csv"

    def fingerprints() -> dict[tuple[str, str], str]:
        return {
            (stage, ref.video_id): stage_config(stage, settings).video_fingerprint(ref)
            for stage in ("object_masks", "tracks_3d", "hands", "h5_build")
            for ref in refs
        }

    metadata.write_text("clip_id,text,noun\nclip_0,open the box,box\nclip_1,lift the mug,mug\n")
    first = fingerprints()
    metadata.write_text("clip_id,text,noun\nclip_0,open the box,box\nclip_1,lift the cup,cup\n")
    second = fingerprints()
    changed = {key for key in first if first[key] != second[key]}
    assert changed == {("object_masks", "00001"), ("tracks_3d", "00001"), ("h5_build", "00001")}
    metadata.write_text("clip_id,text,noun\nclip_0,shut the box,box\nclip_1,lift the cup,cup\n")
    assert {key for key, value in fingerprints().items() if value != second[key]} == {("h5_build", "00000")}


def test_gpu_stages_carry_the_footprints_of_their_real_models():
    real = Settings(**{name: {"backend": "real"} for name in GPU_STAGES})
    gib = {name: prior_peak_bytes(name, real) / 2**30 for name in GPU_STAGES}
    assert gib["object_masks"] == gib["human_masks"] == 10  # SAM3: ~8-10 GB per worker (y2r config.yaml)
    assert gib["clean_frames"] == 12 and gib["tracks_2d"] == 4
    assert all(prior_peak_bytes(name, Settings()) is None for name in GPU_STAGES)  # synthetic: measured
