"""``dataset.json``: the dataset's version follows its videos' fingerprints; its runs stay few."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import numpy as np

from trackset.dataset.record import RUNS_KEPT, DatasetRecord, RunInfo, write_dataset_files
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import Moments, VideoPartials

START = datetime(2027, 1, 5, 2, 0, tzinfo=timezone.utc)


def add_video(layout: DatasetLayout, video_id: str, fingerprint: str) -> None:
    """Partials of a video with one depth sample and one displacement (enough to aggregate)."""
    one = Moments.of(np.ones((1, 3)))
    VideoPartials(
        video_id=video_id,
        fingerprint=fingerprint,
        displacement=one,
        depth=Moments.of(np.ones((1, 1))),
        pose=Moments.empty(9),
        hand_uvd=Moments.empty(3),
        hand_rot=Moments.empty(6),
    ).write(layout.partials(video_id))


def expected_version(pairs: list[tuple[str, str]]) -> str:
    return hashlib.sha256("".join(f"{vid}\t{fp}\n" for vid, fp in pairs).encode()).hexdigest()


def test_the_version_is_a_digest_of_ids_and_fingerprints_and_names_the_statistics(tmp_path):
    layout = DatasetLayout(tmp_path)
    add_video(layout, "00001", "fp1")
    add_video(layout, "00000", "fp0")
    update = write_dataset_files(layout, 1e-6, RunInfo("id-1", "first", videos_built=2), START)
    assert update.changed and update.previous_version is None
    record = DatasetRecord.read(layout.dataset_json)
    assert record == update.record
    assert record.dataset_version == expected_version([("00000", "fp0"), ("00001", "fp1")])
    assert record.statistics_sha256 == hashlib.sha256(layout.stats_yaml.read_bytes()).hexdigest()
    assert (record.videos, record.track_type, record.runs_total) == (2, "3d", 1)
    [run] = record.runs
    assert (run.flow_run_id, run.flow_run_name, run.videos_built, run.finished) == (
        "id-1",
        "first",
        2,
        "2027-01-05T02:00:00+00:00",
    )


def test_a_run_that_changes_nothing_is_not_listed_and_keeps_the_version(tmp_path):
    layout = DatasetLayout(tmp_path)
    add_video(layout, "00000", "fp0")
    first = write_dataset_files(layout, 1e-6, RunInfo("id-1", "first", 1), START)
    again = write_dataset_files(layout, 1e-6, RunInfo("id-2", "nothing-new"), START + timedelta(days=1))
    assert not again.changed and again.record == first.record
    add_video(layout, "00000", "fp0-rebuilt")  # other settings: another fingerprint
    changed = write_dataset_files(layout, 1e-6, RunInfo("id-3", "rebuilt", 1), START + timedelta(days=2))
    assert changed.changed and changed.previous_version == first.record.dataset_version
    assert [run.flow_run_name for run in changed.record.runs] == ["first", "rebuilt"]


def test_months_of_nightly_refreshes_keep_the_file_small(tmp_path):
    layout = DatasetLayout(tmp_path)
    nights = RUNS_KEPT + 5
    for night in range(nights):
        add_video(layout, f"{night:05d}", f"fp{night}")
        write_dataset_files(layout, 1e-6, RunInfo(f"id-{night}", f"night-{night}", 1), START + timedelta(days=night))
    record = json.loads(layout.dataset_json.read_text())
    assert record["runs_total"] == nights
    assert [run["flow_run_name"] for run in record["runs"]] == [f"night-{n}" for n in range(5, nights)]
    assert record["videos"] == nights


def test_an_unreadable_record_is_started_anew(tmp_path):
    layout = DatasetLayout(tmp_path)
    add_video(layout, "00000", "fp0")
    layout.dataset_json.write_text("{not json")
    update = write_dataset_files(layout, 1e-6, RunInfo("id-1", "first", 1), START)
    assert update.changed and update.record.runs_total == 1
