"""The manifest keeps ids stable forever, appends only, and survives a crash mid-append."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from pathlib import Path

import pytest

from trackset.dataset import manifest as manifest_module
from trackset.dataset.manifest import Manifest, ManifestEntry, discover_videos

EXTENSIONS = (".mp4", ".mov")


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    return folder


@pytest.fixture
def manifest_path(tmp_path: Path) -> Path:
    return tmp_path / "dataset" / "manifest.jsonl"


_clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000_000))


def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` and give it a fresh, distinct mtime (filesystem clocks can be coarse)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = next(_clock)
    os.utime(path, ns=(stamp, stamp))
    return path


def _register(manifest_path: Path, videos: Path):
    return Manifest.load(manifest_path).register(videos, EXTENSIONS)


def _ids(entries: list[ManifestEntry]) -> dict[str, str]:
    return {entry.source: entry.video_id for entry in entries}


def test_discover_is_recursive_sorted_and_skips_hidden_and_other_files(videos, tmp_path, caplog):
    for name in ["b.mp4", "a/z.MOV", "a/b/c.Mp4", "notes.txt", ".hidden.mp4", ".cache/x.mp4", "a/.tmp/y.mp4"]:
        _write(videos / name, b"x")
    (videos / "folder.mp4").mkdir()
    outside = _write(tmp_path / "outside.mp4", b"secret")
    (videos / "link.mp4").symlink_to(outside)
    (videos / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="trackset.dataset.manifest"):
        found = discover_videos(videos, ["MP4", ".mov"])
    assert [p.relative_to(videos).as_posix() for p in found.videos] == ["a/b/c.Mp4", "a/z.MOV", "b.mp4"]
    assert found.skipped.counts == {"extension": 1, "link": 2}
    assert found.skipped.examples == {"extension": ["notes.txt"], "link": ["link.mp4", "linked_dir"]}
    [warning] = [r.getMessage() for r in caplog.records]
    assert "2 files (symbolic link:" in warning and "link.mp4, linked_dir" in warning


def test_discover_refuses_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="videos directory not found"):
        discover_videos(tmp_path / "nope", EXTENSIONS)


def test_ids_are_stable_across_runs_and_nothing_is_rewritten(videos, manifest_path):
    for name in ["b.mp4", "a/a.mp4", "c.mov"]:
        _write(videos / name, name.encode())
    first = _register(manifest_path, videos)
    assert _ids(first.new) == {"a/a.mp4": "00000", "b.mp4": "00001", "c.mov": "00002"}
    assert first.changed == first.unchanged == first.missing == []
    before = manifest_path.read_bytes()

    second = _register(manifest_path, videos)
    assert second.new == second.changed == second.missing == []
    assert second.unchanged == first.new
    assert manifest_path.read_bytes() == before
    assert Manifest.load(manifest_path).entries() == first.new


def test_new_files_get_the_next_ids_even_when_they_sort_first(videos, manifest_path):
    _write(videos / "m.mp4", b"m")
    _register(manifest_path, videos)
    _write(videos / "a.mp4", b"a")
    _write(videos / "z.mp4", b"z")
    result = _register(manifest_path, videos)
    assert _ids(result.new) == {"a.mp4": "00001", "z.mp4": "00002"}
    assert _ids(result.unchanged) == {"m.mp4": "00000"}


def test_changed_content_keeps_the_id_and_the_latest_line_wins(videos, manifest_path):
    path = _write(videos / "clip.mp4", b"first take")
    _write(videos / "other.mp4", b"other")
    _register(manifest_path, videos)
    _write(path, b"second take, longer")
    result = _register(manifest_path, videos)
    assert [(e.video_id, e.sha256) for e in result.changed] == [
        ("00000", hashlib.sha256(b"second take, longer").hexdigest())
    ]
    assert _ids(result.unchanged) == {"other.mp4": "00001"}
    assert len(manifest_path.read_text().splitlines()) == 3
    loaded = {e.source: e for e in Manifest.load(manifest_path).entries()}
    assert loaded["clip.mp4"].sha256 == hashlib.sha256(b"second take, longer").hexdigest()
    assert loaded["clip.mp4"].size == len(b"second take, longer")


def test_removed_files_keep_their_ids_which_are_never_reused(videos, manifest_path):
    for name in ["a.mp4", "b.mp4", "c.mp4"]:
        _write(videos / name, name.encode())
    _register(manifest_path, videos)
    (videos / "c.mp4").unlink()
    (videos / "b.mp4").unlink()
    result = _register(manifest_path, videos)
    assert _ids(result.missing) == {"b.mp4": "00001", "c.mp4": "00002"}

    _write(videos / "d.mp4", b"d")
    result = _register(manifest_path, videos)
    assert _ids(result.new) == {"d.mp4": "00003"}
    assert _ids(result.missing) == {"b.mp4": "00001", "c.mp4": "00002"}

    _write(videos / "b.mp4", b"b.mp4")  # the same file comes back: its old id, same content
    result = _register(manifest_path, videos)
    assert _ids(result.unchanged) == {"a.mp4": "00000", "b.mp4": "00001", "d.mp4": "00003"}
    assert result.new == []


def test_manifest_is_append_only(videos, manifest_path):
    _write(videos / "a.mp4", b"a")
    _register(manifest_path, videos)
    snapshots = [manifest_path.read_bytes()]
    _write(videos / "a.mp4", b"a changed")
    _write(videos / "b.mp4", b"b")
    _register(manifest_path, videos)
    snapshots.append(manifest_path.read_bytes())
    manifest = Manifest.load(manifest_path)
    manifest.quarantine("00001", "ab" * 32, "settings-1", "depth_camera", "out of memory alone on GPU 0")
    snapshots.append(manifest_path.read_bytes())
    for earlier, later in itertools.pairwise(snapshots):
        assert len(later) > len(earlier)
        assert later[: len(earlier)] == earlier
    assert [json.loads(line)["kind"] for line in manifest_path.read_text().splitlines()] == [
        "video",
        "video",
        "video",
        "quarantine",
    ]


def test_unchanged_size_and_mtime_skip_hashing_and_a_touch_rehashes_once(videos, manifest_path, monkeypatch):
    calls: list[str] = []
    real = manifest_module.file_sha256

    def counting(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(manifest_module, "file_sha256", counting)
    for name in ["a.mp4", "b.mp4"]:
        _write(videos / name, name.encode())
    _register(manifest_path, videos)
    assert sorted(calls) == ["a.mp4", "b.mp4"]

    calls.clear()
    _register(manifest_path, videos)
    assert calls == []

    stamp = next(_clock)
    os.utime(videos / "a.mp4", ns=(stamp, stamp))  # touched, same bytes
    result = _register(manifest_path, videos)
    assert calls == ["a.mp4"]
    assert _ids(result.unchanged) == {"a.mp4": "00000", "b.mp4": "00001"}
    assert result.changed == []

    calls.clear()
    _register(manifest_path, videos)
    assert calls == []  # the touch was recorded, so it is not hashed again


@pytest.mark.parametrize(
    "name",
    [
        "x\\..\\..\\evil.mp4",
        "spaces and 'quotes\".mp4",
        "line\nbreak.mp4",
        "ünïcødé 视频.mp4",
        os.fsdecode(b"latin1-\xe9.mp4"),
        "%2E%2E%2F..%2Fescape.mp4",
    ],
)
def test_odd_file_names_just_get_an_id(videos, manifest_path, name):
    _write(videos / name, b"data")
    result = _register(manifest_path, videos)
    [entry] = result.new
    assert entry.video_id == "00000"
    assert entry.source == name
    assert entry.source_path(videos) == (videos / name).resolve()
    assert len(manifest_path.read_bytes().splitlines()) == 1
    assert Manifest.load(manifest_path).entries() == [entry]
    assert _register(manifest_path, videos).unchanged == [entry]


@pytest.mark.parametrize("source", ["../../evil.mp4", "/etc/passwd", "a/../../evil.mp4", "."])
def test_a_tampered_source_cannot_leave_the_videos_folder(videos, manifest_path, source):
    manifest_path.parent.mkdir(parents=True)
    line = {"kind": "video", "video_id": "00000", "source": source, "sha256": "0" * 64, "size": 1, "mtime_ns": 0}
    manifest_path.write_text(json.dumps(line) + "\n")
    [entry] = Manifest.load(manifest_path).entries()
    with pytest.raises(ValueError, match="resolves outside"):
        entry.source_path(videos)


def test_a_symlink_escaping_the_folder_is_refused(videos, tmp_path):
    outside = _write(tmp_path / "secret.mp4", b"secret")
    (videos / "link.mp4").symlink_to(outside)
    entry = ManifestEntry("00000", "link.mp4", "0" * 64, 6, 0)
    with pytest.raises(ValueError, match="resolves outside"):
        entry.source_path(videos)


@pytest.mark.parametrize("fragment", [b'{"kind":"video","video_id":"000', b"\0\0\0\0", b"{", b" "])
def test_a_truncated_last_line_is_ignored_then_dropped_on_append(videos, manifest_path, caplog, fragment):
    _write(videos / "a.mp4", b"a")
    _register(manifest_path, videos)
    complete = manifest_path.read_bytes()
    with open(manifest_path, "ab") as handle:
        handle.write(fragment)

    with caplog.at_level(logging.WARNING, logger="trackset.dataset.manifest"):
        manifest = Manifest.load(manifest_path)
    assert [e.source for e in manifest.entries()] == ["a.mp4"]
    assert any(f"line 2 of {manifest_path}" in r.getMessage() for r in caplog.records)

    _write(videos / "b.mp4", b"b")
    result = manifest.register(videos, EXTENSIONS)
    assert _ids(result.new) == {"b.mp4": "00001"}
    data = manifest_path.read_bytes()
    assert data.startswith(complete)
    [appended] = data[len(complete) :].splitlines()
    assert json.loads(appended)["source"] == "b.mp4"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trackset.dataset.manifest"):
        assert len(Manifest.load(manifest_path).entries()) == 2
    assert caplog.records == []


def test_a_complete_last_line_without_newline_is_kept(videos, manifest_path):
    _write(videos / "a.mp4", b"a")
    _register(manifest_path, videos)
    manifest_path.write_bytes(manifest_path.read_bytes().rstrip(b"\n"))
    _write(videos / "b.mp4", b"b")
    result = _register(manifest_path, videos)
    assert _ids(result.new) == {"b.mp4": "00001"}
    assert _ids(result.unchanged) == {"a.mp4": "00000"}
    assert len(manifest_path.read_bytes().splitlines()) == 2


_GOOD = {"kind": "video", "video_id": "00000", "source": "a.mp4", "sha256": "a" * 64, "size": 1, "mtime_ns": 5}


@pytest.mark.parametrize(
    ("second_line", "match"),
    [
        ("garbage", "malformed manifest line"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**_GOOD, "kind": "note"}), "unknown kind"),
        (json.dumps({**_GOOD, "video_id": "0"}), "invalid video id"),
        (json.dumps({k: v for k, v in _GOOD.items() if k != "sha256"}), "sha256"),
        (json.dumps({**_GOOD, "sha256": "xyz"}), "64 lowercase hex"),
        (json.dumps({**_GOOD, "size": "big"}), "size must be an integer"),
        (json.dumps({**_GOOD, "video_id": "00001"}), "'a.mp4' has id 00001 but was recorded as 00000"),
        (json.dumps({**_GOOD, "source": "b.mp4"}), "id 00000 of 'b.mp4' already belongs to 'a.mp4'"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(manifest_path, second_line, match):
    manifest_path.parent.mkdir(parents=True)
    manifest_path.write_text(json.dumps(_GOOD) + "\n" + second_line + "\n" + json.dumps(_GOOD) + "\n")
    with pytest.raises(ValueError, match=match) as info:
        Manifest.load(manifest_path)
    assert f"{manifest_path}:2:" in str(info.value)


def test_quarantine_holds_until_content_or_settings_change(videos, manifest_path):
    _write(videos / "a.mp4", b"a")
    [entry] = _register(manifest_path, videos).new
    manifest = Manifest.load(manifest_path)
    assert manifest.quarantined("00000", entry.sha256, lambda stage: "settings-1") is None
    manifest.quarantine("00000", entry.sha256, "settings-1", "tracks_3d", "out of memory alone on GPU 1")

    for current in (manifest, Manifest.load(manifest_path)):
        # The key is asked of the stage that quarantined the video.
        keys = {"tracks_3d": "settings-1", "depth_camera": "other"}
        assert current.quarantined("00000", entry.sha256, keys.__getitem__) == "out of memory alone on GPU 1"
        assert current.quarantined("00000", entry.sha256, lambda stage: "settings-2") is None
        assert current.quarantined("00000", "b" * 64, lambda stage: "settings-1") is None

    _write(videos / "a.mp4", b"a, re-encoded")
    [changed] = _register(manifest_path, videos).changed
    reloaded = Manifest.load(manifest_path)
    assert reloaded.quarantined("00000", changed.sha256, lambda stage: "settings-1") is None
    assert reloaded.quarantined("00000", entry.sha256, lambda stage: "settings-1") is not None


def test_two_runs_loaded_together_never_hand_out_one_id_twice(videos, manifest_path):
    early, late = Manifest.load(manifest_path), Manifest.load(manifest_path)
    _write(videos / "a.mp4", b"a")
    assert _ids(late.register(videos, EXTENSIONS).new) == {"a.mp4": "00000"}
    _write(videos / "b.mp4", b"b")
    result = early.register(videos, EXTENSIONS)  # re-reads the file under the lock
    assert _ids(result.new) == {"b.mp4": "00001"}
    assert _ids(result.unchanged) == {"a.mp4": "00000"}
    assert len(manifest_path.read_bytes().splitlines()) == 2


def test_an_unreadable_file_is_returned_not_raised_and_registers_once_readable(videos, manifest_path, monkeypatch):
    _write(videos / "a.mp4", b"a")
    _write(videos / "c.mp4", b"c")
    first = _register(manifest_path, videos)
    _write(videos / "b.mp4", b"b")  # new, unreadable
    _write(videos / "c.mp4", b"c2")  # known and changed, unreadable
    _write(videos / "d.mp4", b"d")  # new, readable
    real_sha = manifest_module.file_sha256

    def sha_or_denied(path: Path) -> str:
        if path.name in ("b.mp4", "c.mp4"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha(path)

    monkeypatch.setattr(manifest_module, "file_sha256", sha_or_denied)
    second = _register(manifest_path, videos)
    assert _ids(first.new) == {"a.mp4": "00000", "c.mp4": "00001"}
    assert [(u.source, u.video_id, u.reason) for u in second.unreadable] == [
        ("b.mp4", None, "Permission denied"),
        ("c.mp4", "00001", "Permission denied"),
    ]
    assert second.unreadable[0].path == videos / "b.mp4"
    assert _ids(second.new) == {"d.mp4": "00002"}
    assert _ids(second.unchanged) == {"a.mp4": "00000"}
    assert second.changed == second.missing == []  # unreadable is neither changed nor gone

    monkeypatch.setattr(manifest_module, "file_sha256", real_sha)
    third = _register(manifest_path, videos)
    assert _ids(third.new) == {"b.mp4": "00003"} and _ids(third.changed) == {"c.mp4": "00001"}
    assert third.unreadable == []


def test_ids_go_past_99999_without_renaming_earlier_ones(videos, manifest_path):
    manifest_path.parent.mkdir(parents=True)
    last = ManifestEntry("99999", "old.mp4", "c" * 64, 1, 0)
    manifest_path.write_text(json.dumps({**last.__dict__}) + "\n")
    _write(videos / "old.mp4", b"x")  # changed content: same id
    _write(videos / "new.mp4", b"y")
    result = _register(manifest_path, videos)
    assert _ids(result.new) == {"new.mp4": "100000"} and _ids(result.changed) == {"old.mp4": "99999"}
    assert [e.video_id for e in Manifest.load(manifest_path).entries()] == ["99999", "100000"]


def test_a_moved_or_renamed_file_keeps_its_id_and_is_not_new(videos, manifest_path, monkeypatch):
    _write(videos / "a.mp4", b"alpha")
    _write(videos / "b.mp4", b"beta")
    _register(manifest_path, videos)
    (videos / "kitchen").mkdir()
    os.replace(videos / "a.mp4", videos / "kitchen" / "take 1.mp4")  # keeps size and mtime
    _write(videos / "c.mp4", b"gamma")
    result = _register(manifest_path, videos)
    assert _ids(result.moved) == {"kitchen/take 1.mp4": "00000"}
    assert _ids(result.new) == {"c.mp4": "00002"} and not result.missing
    reloaded = Manifest.load(manifest_path)
    assert {e.source: e.video_id for e in reloaded.entries()} == {
        "kitchen/take 1.mp4": "00000",
        "b.mp4": "00001",
        "c.mp4": "00002",
    }
    # A new file at the old path is a new video; an unchanged moved file is not hashed again.
    _write(videos / "a.mp4", b"another")
    hashed: list[Path] = []
    monkeypatch.setattr("trackset.dataset.manifest.file_sha256", lambda path: hashed.append(path) or "d" * 64)
    again = Manifest.load(manifest_path).register(videos, EXTENSIONS)
    assert _ids(again.new) == {"a.mp4": "00003"} and not again.moved
    assert hashed == [videos / "a.mp4"]


def test_a_copy_is_a_new_video_and_a_move_line_must_name_the_ids_path(videos, manifest_path):
    _write(videos / "a.mp4", b"alpha")
    _register(manifest_path, videos)
    _write(videos / "copy.mp4", b"alpha")
    assert _ids(_register(manifest_path, videos).new) == {"copy.mp4": "00001"}
    entry = ManifestEntry("00000", "elsewhere.mp4", "e" * 64, 1, 0, moved_from="not-its-path.mp4")
    with manifest_path.open("a") as out:
        out.write(json.dumps(entry.__dict__) + "\n")
    with pytest.raises(ValueError, match=r"id 00000 moves from 'not-its-path.mp4' but belongs to 'a.mp4'"):
        Manifest.load(manifest_path)
