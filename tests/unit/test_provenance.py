"""What every H5 file says made it: the stages it came through, their models and settings.

Expectations are written out here (sha256 of the bytes written, the stage lists of the
registry's docstring), not derived with the module's own helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from trackset import __version__
from trackset.config.settings import Settings
from trackset.domain import VideoRef
from trackset.stages.provenance import attribute_problems, file_attributes, file_sha256
from trackset.stages.registry import stage_config

VIDEO = VideoRef("00012", Path("clip.mp4"), "c" * 64)


def test_an_h5_names_the_stages_it_came_through_and_their_settings():
    config = stage_config("h5_build", Settings(tracks_3d={"window_length": 8}))
    attrs = file_attributes(config.provenance, VIDEO, "fp")
    stages = ["preprocess", "depth_camera", "object_masks", "tracks_3d", "hands", "h5_build"]
    assert json.loads(attrs["trackset.stages"]) == stages
    assert attrs["trackset.version"] == __version__
    assert (attrs["trackset.video_id"], attrs["trackset.content_sha256"], attrs["trackset.fingerprint"]) == (
        "00012",
        "c" * 64,
        "fp",
    )
    assert json.loads(attrs["trackset.tracks_3d.settings"])["section"]["window_length"] == 8
    assert json.loads(attrs["trackset.h5_build.settings"])["window_length"] == 8
    assert json.loads(attrs["trackset.tracks_3d.inputs"]) == ["depth_camera", "object_masks"]
    for stage in ("depth_camera", "object_masks", "tracks_3d", "hands"):
        assert (attrs[f"trackset.{stage}.backend"], attrs[f"trackset.{stage}.model"]) == ("synthetic", "synthetic")
        assert attrs[f"trackset.{stage}.seed"] == 12  # the synthetic noise and sampling are seeded by the video id
    assert "trackset.preprocess.backend" not in attrs  # CPU code: its version is trackset's


def test_a_2d_dataset_with_human_removal_names_its_own_stages():
    settings = Settings(h5={"track_type": "2d"}, clean_frames={"enabled": True})
    attrs = file_attributes(stage_config("h5_build", settings).provenance, VIDEO, "fp")
    assert json.loads(attrs["trackset.stages"]) == [
        "preprocess",
        "human_masks",
        "clean_frames",
        "object_masks",
        "tracks_2d",
        "h5_build",
    ]


def test_a_real_model_is_named_by_its_distribution_and_its_weights_by_content(tmp_path):
    weights = tmp_path / "tapip3d_final.pth"
    weights.write_bytes(b"tapip3d weights")
    vipe = tmp_path / "vipe"
    (vipe / "torch").mkdir(parents=True)
    (vipe / "torch" / "moge.pt").write_bytes(b"moge")
    settings = Settings(
        depth_camera={"backend": "real", "weights_dir": str(vipe)},
        tracks_3d={"backend": "real", "weights_path": str(weights)},
        object_masks={"backend": "real"},
    )
    attrs = file_attributes(stage_config("h5_build", settings).provenance, VIDEO, "fp")
    assert attrs["trackset.tracks_3d.weights_path.sha256"] == hashlib.sha256(b"tapip3d weights").hexdigest()
    folder = hashlib.sha256(f"torch/moge.pt\0{hashlib.sha256(b'moge').hexdigest()}\n".encode()).hexdigest()
    assert attrs["trackset.depth_camera.weights_dir.sha256"] == folder
    assert attrs["trackset.object_masks.checkpoint_path.sha256"] == "none"  # SAM3 downloads its own
    assert attrs["trackset.depth_camera.model"] == "nvidia-vipe (not installed here)"
    assert attrs["trackset.tracks_3d.model"].startswith("checkout")
    assert "trackset.tracks_3d.seed" not in attrs and attrs["trackset.hands.seed"] == 12
    assert attribute_problems(attrs, "00012", "fp") == []


def test_a_checkpoint_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    checkpoint = tmp_path / "sam3.pt"
    checkpoint.write_bytes(b"first")
    opened = []
    real_open = Path.open

    def counting_open(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    settings = Settings(object_masks={"backend": "real", "checkpoint_path": str(checkpoint)})
    for _ in range(3):  # the flow builds a stage's config several times per run
        stage_config("h5_build", settings)
    assert opened == [checkpoint]
    first = file_sha256(checkpoint)
    checkpoint.write_bytes(b"other")  # same size: only the modification time tells
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 1_000_000))
    assert file_sha256(checkpoint) == hashlib.sha256(b"other").hexdigest() != first


def test_provenance_keys_the_worker_cache_but_not_the_fingerprint(tmp_path):
    """A re-downloaded checkpoint at the same path (or a new trackset version) does not redo a
    finished dataset, but a worker builds a fresh stage, so it writes what made the file."""
    checkpoint = tmp_path / "sam3.pt"
    checkpoint.write_bytes(b"first")
    settings = Settings(object_masks={"backend": "real", "checkpoint_path": str(checkpoint)})
    before = stage_config("h5_build", settings)
    checkpoint.write_bytes(b"second, longer")
    after = stage_config("h5_build", settings)
    assert after.provenance != before.provenance
    assert after.lineage == before.lineage and after.fingerprint("c" * 64) == before.fingerprint("c" * 64)
    assert after.cache_key() != before.cache_key()


def test_a_file_built_from_the_scripts_intermediates_names_only_its_own_build():
    attrs = file_attributes(stage_config("h5_build", Settings()).provenance, VIDEO, "fp", imported=True)
    assert json.loads(attrs["trackset.stages"]) == ["h5_build"]
    assert attrs["trackset.imported"] == "the y2r script pipeline's intermediates"
    assert not [key for key in attrs if key.startswith(("trackset.tracks_3d.", "trackset.hands."))]
    assert attribute_problems(attrs, "00012", "fp") == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"trackset.video_id": "00013"}, "trackset.video_id: 00013, but the file is named for 00012"),
        ({"trackset.stages": '["preprocess"]'}, "is not a list of stages ending in h5_build"),
        ({"trackset.hands.settings": "not json"}, "trackset.hands.settings: not a JSON object"),
        ({"trackset.hands.backend": "magic"}, "trackset.hands.backend: 'magic' without a model"),
        ({"trackset.version": 1}, "trackset.version: not a string"),
    ],
    ids=["video id", "stages", "settings", "backend", "version type"],
)
def test_wrong_provenance_is_named(change, problem):
    attrs = {**file_attributes(stage_config("h5_build", Settings()).provenance, VIDEO, "fp"), **change}
    assert any(problem in found for found in attribute_problems(attrs, "00012", "fp")), attribute_problems(
        attrs, "00012", "fp"
    )


def test_a_missing_entry_is_named():
    attrs = file_attributes(stage_config("h5_build", Settings()).provenance, VIDEO, "fp")
    del attrs["trackset.tracks_3d.inputs"]
    assert attribute_problems(attrs, "00012", "fp") == ["trackset.tracks_3d.inputs: missing"]
