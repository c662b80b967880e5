"""Paths come from validated ids only, and writes are atomic, durable and follow the umask."""

from __future__ import annotations

import os
import stat

import pytest

from trackset.formats.layout import (
    DatasetLayout,
    WorkLayout,
    atomic_path,
    check_video_id,
    ensure_file,
    is_temporary_name,
    remove_temporaries,
    write_text_atomic,
)


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


def fsync_recorder(monkeypatch) -> list[tuple[str, str]]:
    """Record, in order, every ``os.fsync`` (with the path of its descriptor) and ``os.replace``."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_path_fsyncs_the_file_before_the_rename_and_its_folder_after(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "00001.hdf5"
    events = fsync_recorder(monkeypatch)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"h5")
    assert events == [("fsync", str(tmp)), ("replace", str(target)), ("fsync", str(tmp_path / "d"))]
    assert target.read_bytes() == b"h5"


def test_every_folder_atomic_path_creates_is_fsynced_into_its_parent(tmp_path, monkeypatch):
    target = tmp_path / "markers" / "depth_camera" / "00001.json"
    events = fsync_recorder(monkeypatch)
    write_text_atomic(target, "{}")
    synced = [path for kind, path in events if kind == "fsync"]
    assert synced[:2] == [str(tmp_path), str(tmp_path / "markers")]  # each new folder's entry
    assert synced[-1] == str(target.parent) and len(synced) == 4  # then the file, then its folder


def test_a_failed_write_syncs_and_renames_nothing(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    events = fsync_recorder(monkeypatch)
    with pytest.raises(OSError), atomic_path(tmp_path / "d" / "out.npz"):
        raise OSError(28, "No space left on device")
    assert events == [] and list((tmp_path / "d").iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "new" / "normalization_stats.yaml", "a: 1\n")
        with atomic_path(tmp_path / "new" / "00001.hdf5") as tmp, open(tmp, "wb") as out:
            out.write(b"h5")
    finally:
        os.umask(previous)
    for name in ("normalization_stats.yaml", "00001.hdf5"):
        assert stat.S_IMODE((tmp_path / "new" / name).stat().st_mode) == mode, name
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o777 & ~umask


def test_temporary_names_are_recognised_and_only_they_are_removed(tmp_path):
    with atomic_path(tmp_path / "00001.hdf5") as tmp:
        assert is_temporary_name(tmp.name) and tmp.name.startswith(".00001.hdf5.")
    ours = [tmp_path / ".00002.hdf5.0a1b2c3d.trackset.tmp", tmp_path / ".frames.npy.k2_x9qzu.tmp"]  # and mkstemp's
    theirs = ["notes.tmp", ".swap.tmp", "report.0a1b2c3d.trackset.tmp", ".x.abc.tmp", "00001.hdf5"]
    for path in ours + [tmp_path / name for name in theirs if name != "00001.hdf5"]:
        path.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".00003.hdf5.0a1b2c3d.trackset.tmp").write_bytes(b"x")  # not entered
    assert sorted(remove_temporaries([tmp_path, tmp_path / "missing"])) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*theirs, "sub"])
    assert (tmp_path / "sub" / ".00003.hdf5.0a1b2c3d.trackset.tmp").exists()


def test_a_file_created_for_appending_is_fsynced_into_its_folder(tmp_path, monkeypatch):
    events = fsync_recorder(monkeypatch)
    ensure_file(tmp_path / "dataset" / "manifest.jsonl")
    assert events == [("fsync", str(tmp_path)), ("fsync", str(tmp_path / "dataset"))]
    events.clear()
    ensure_file(tmp_path / "dataset" / "manifest.jsonl")  # there: nothing to do
    assert events == [] and (tmp_path / "dataset" / "manifest.jsonl").read_bytes() == b""
