"""Done means whole: markers record each output's size and checksum, and a damaged output is redone."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from trackset.config.settings import Settings
from trackset.domain import VideoRef
from trackset.formats.layout import DatasetLayout, WorkLayout
from trackset.formats.markers import FileStamp, Marker
from trackset.formats.statistics import STATISTIC_DIMS, Moments, VideoPartials
from trackset.stages.registry import build_stage, stage_config

VIDEO = VideoRef("00004", Path("clip.mp4"), "content-hash")


def settings_for(root: Path, **run) -> Settings:
    paths = {"videos_dir": root / "videos", "work_dir": root / "work", "dataset_dir": root / "dataset"}
    return Settings(paths=paths, run=run)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def preprocessed(settings: Settings):
    """The preprocess stage with its two outputs written and marked done."""
    stage = build_stage("preprocess", settings)
    work = WorkLayout(settings.paths.work_dir)
    write(work.frames_npy(VIDEO.video_id), b"\x93NUMPY" + bytes(1000))
    write(work.frames_meta(VIDEO.video_id), b'{"num_frames": 4}')
    stage.mark_done(VIDEO)
    return stage, work


def test_a_marker_records_the_size_and_sha256_of_each_output(tmp_path):
    stage, work = preprocessed(settings_for(tmp_path))
    marker = json.loads(work.marker("preprocess", VIDEO.video_id).read_text())
    frames = work.frames_npy(VIDEO.video_id).read_bytes()
    assert marker == {
        "fingerprint": stage.fingerprint(VIDEO),
        "outputs": {
            "frames/00004/frames.npy": {"size": len(frames), "sha256": hashlib.sha256(frames).hexdigest()},
            "frames/00004/meta.json": {"size": 17, "sha256": hashlib.sha256(b'{"num_frames": 4}').hexdigest()},
        },
    }
    assert stage.is_done(VIDEO)


@pytest.mark.parametrize("size", [0, 500])
def test_a_truncated_or_emptied_output_is_redone_with_one_line_naming_it(tmp_path, caplog, size):
    stage, work = preprocessed(settings_for(tmp_path))
    frames = work.frames_npy(VIDEO.video_id)
    frames.write_bytes(frames.read_bytes()[:size])
    with caplog.at_level(logging.WARNING, logger="trackset"):
        assert not stage.is_done(VIDEO)
        assert not stage.is_done(VIDEO)  # the flow, the task, a retry: said once
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"preprocess: recomputing video 00004: {frames} has {size:,} bytes, its marker recorded 1,006"
    assert not work.marker("preprocess", VIDEO.video_id).exists()


def test_a_torn_marker_is_redone_naming_it(tmp_path, caplog):
    stage, work = preprocessed(settings_for(tmp_path))
    marker = work.marker("preprocess", VIDEO.video_id)
    marker.write_text(marker.read_text()[:40])
    with caplog.at_level(logging.WARNING, logger="trackset"):
        assert not stage.is_done(VIDEO)
    assert f"{marker}: unreadable completion marker" in caplog.text


def test_a_marker_of_an_earlier_version_is_still_read_and_only_an_empty_output_redone(tmp_path, caplog):
    """An upgrade must not recompute a built corpus: fingerprint-only markers stay done."""
    stage, work = preprocessed(settings_for(tmp_path))
    marker = work.marker("preprocess", VIDEO.video_id)
    marker.write_text(json.dumps({"fingerprint": stage.fingerprint(VIDEO)}))  # what earlier versions wrote
    frames = work.frames_npy(VIDEO.video_id)
    frames.write_bytes(frames.read_bytes()[:100])  # not detectable without a recorded size
    assert stage.is_done(VIDEO)
    frames.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="trackset"):
        assert not stage.is_done(VIDEO)
    assert f"{frames} is empty" in caplog.text


def test_checksums_are_compared_only_under_verify_checksums(tmp_path, caplog):
    stage, work = preprocessed(settings_for(tmp_path))
    frames = work.frames_npy(VIDEO.video_id)
    data = bytearray(frames.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: bit rot
    frames.write_bytes(bytes(data))
    assert stage.is_done(VIDEO)  # a stat only, by default
    verifying = build_stage("preprocess", settings_for(tmp_path, verify_checksums=True))
    with caplog.at_level(logging.WARNING, logger="trackset"):
        assert not verifying.is_done(VIDEO)
    assert f"{frames} does not have the sha256 its marker recorded" in caplog.text


def test_verify_checksums_is_neither_in_the_fingerprint_nor_in_the_model_cache_key(tmp_path):
    plain, verifying = (stage_config("depth_camera", settings_for(tmp_path, verify_checksums=v)) for v in (False, True))
    assert verifying.verify_checksums and not plain.verify_checksums
    assert plain.fingerprint("c") == verifying.fingerprint("c") and plain.cache_key() == verifying.cache_key()


def built_h5(settings: Settings, partials_h5: bool = True):
    """The H5 stage with a current H5 and partials, as it leaves them."""
    stage = build_stage("h5_build", settings)
    dataset = DatasetLayout(settings.paths.dataset_dir)
    h5 = write(dataset.h5(VIDEO.video_id), b"\x89HDF" + bytes(2000))
    moments = {name: Moments.empty(dim) for name, dim in STATISTIC_DIMS.items()}
    stamp = FileStamp.of(h5) if partials_h5 else None
    VideoPartials(video_id=VIDEO.video_id, fingerprint=stage.fingerprint(VIDEO), **moments, h5=stamp).write(
        dataset.partials(VIDEO.video_id)
    )
    return stage, h5, dataset.partials(VIDEO.video_id)


def test_an_emptied_h5_is_rebuilt_naming_it_and_leaves_the_statistics(tmp_path, caplog):
    stage, h5, partials = built_h5(settings_for(tmp_path))
    assert json.loads(partials.read_text())["h5"]["size"] == 2004
    assert stage.is_done(VIDEO)
    h5.write_bytes(b"")  # truncate -s 0
    with caplog.at_level(logging.WARNING, logger="trackset"):
        assert not stage.is_done(VIDEO)
    assert caplog.records[0].getMessage() == (
        f"h5_build: recomputing video 00004: {h5} has 0 bytes, its marker recorded 2,004"
    )
    assert not partials.exists()  # a damaged H5 is not counted in the statistics


def test_partials_of_an_earlier_version_keep_their_h5_done(tmp_path):
    stage, h5, partials = built_h5(settings_for(tmp_path), partials_h5=False)
    assert "h5" not in json.loads(partials.read_text())
    assert stage.is_done(VIDEO)
    h5.write_bytes(b"")
    assert not stage.is_done(VIDEO)


def test_a_marker_round_trips_and_refuses_a_bad_stamp():
    marker = Marker("f", {"vipe/00001.npz": FileStamp(3, "a" * 64)})
    assert Marker.from_json_text(marker.to_json_text()) == marker
    assert Marker.from_json_text('{"fingerprint": "f"}') == Marker("f")
    with pytest.raises(ValueError, match="a file stamp needs a size >= 0 and a sha256"):
        Marker.from_json_text('{"fingerprint": "f", "outputs": {"x": {"size": "3", "sha256": "00"}}}')
