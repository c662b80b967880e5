"""Paths come from validated ids only, and writes are atomic."""

from __future__ import annotations

import pytest

from trackset.formats.layout import DatasetLayout, WorkLayout, atomic_path, check_video_id, write_text_atomic


@pytest.mark.parametrize(
    "bad", ["../../etc", "0001", "000001", "0000a", "", "00 01", "/0000", "00001\n", "\u0661\u0662\u0663\u0664\u0665"]
)
def test_paths_refuse_anything_but_canonical_ids(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid video id"):
        WorkLayout(tmp_path).vipe(bad)
    with pytest.raises(ValueError):
        check_video_id(bad)


def test_layout_paths(tmp_path):
    work, dataset = WorkLayout(tmp_path / "w"), DatasetLayout(tmp_path / "d")
    assert work.tracks_3d("00003") == tmp_path / "w" / "tracks_3d" / "00003.pt"
    assert work.frames_npy("00003") == tmp_path / "w" / "frames" / "00003" / "frames.npy"
    assert dataset.h5("00003") == tmp_path / "d" / "00003.hdf5"


def test_ids_past_99999_grow_a_digit_and_name_paths(tmp_path):
    assert DatasetLayout(tmp_path).h5("100000") == tmp_path / "100000.hdf5"
    assert WorkLayout(tmp_path).marker("h5_build", "1234567").name == "1234567.json"


def test_partial_ids_sorted_by_number_and_filtered(tmp_path):
    dataset = DatasetLayout(tmp_path)
    for name in ("00010", "100000", "00002", "notes", "99999", "00001", "0100000"):
        write_text_atomic(tmp_path / "partials" / f"{name}.json", "{}")
    assert dataset.partial_ids() == ["00001", "00002", "00010", "99999", "100000"]


def test_atomic_path_leaves_previous_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
