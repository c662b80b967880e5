"""Bad inputs fail only their own video, say why, and leave every other output untouched.

Issue 8, item 1 (fast suite, thread runner). One clean baseline build per module; each
fixture below then runs the flow once over *many* bad cases at a time (a flow run costs far
more than a video here), and each test checks one case or one promise on that shared run:

- every bad case fails alone, in the stage that meets it, with a message naming the video
  id, the stage, the file and the reason, and is listed in ``RunSummary.failures``;
- every other video's H5 (and, where the set of landed videos is the same, the statistics)
  is byte-identical to the clean baseline;
- nothing is written outside the work and dataset directories, and no payload of a hostile
  ``.pt`` file runs.

Videos are small (128x96, H5 size 64) so the cases cost little; nothing here depends on size.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
import stat
from collections import Counter
from pathlib import Path

import av
import h5py
import numpy as np
import pytest
import torch
import yaml

from tests.flows.helpers import SMALL_H, SMALL_S, SMALL_W, digests, merge_sections, small_build, vid
from trackset.engine.run_outcome import VideosFailedError
from trackset.flows.build_dataset import build_dataset
from trackset.flows.cli import main
from trackset.formats.layout import WorkLayout
from trackset.formats.markers import Marker
from trackset.synthetic.backends import SyntheticDepthCamera
from trackset.synthetic.corpus import make_corpus, sidecar_path

# Whole flows on a shared baseline: minutes of work, run by .ci/run's slow phase.
pytestmark = pytest.mark.slow

SEED, FRAMES, SHORT_FRAMES = 2, 20, 14
W, H, S = SMALL_W, SMALL_H, SMALL_S
NUM_CLIPS = 11  # clip_000 .. clip_010 (ids 00000 .. 00010), then short/clip_000 (00011)
SHORT_ID = f"{NUM_CLIPS:05d}"


def overrides(root: Path, **extra) -> dict:
    return merge_sections(small_build(root, points_per_window=48), extra)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_ids(dataset: Path) -> dict[str, str]:
    """Source (relative path) -> video id, from the manifest's video lines."""
    ids: dict[str, str] = {}
    for line in (dataset / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "video":
            ids[record["source"]] = record["video_id"]
    return ids


def copy_clip(videos: Path, clip: str, name: str) -> Path:
    """A copy of a synthetic clip (and its ground-truth sidecar) under another name."""
    source = videos / clip
    target = videos / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    shutil.copyfile(sidecar_path(source), sidecar_path(target))
    return target


def failures_by_id(summary) -> dict[str, list]:
    out: dict[str, list] = {}
    for failure in summary.failures:
        out.setdefault(failure.video_id, []).append(failure)
    return out


def assert_names_everything(failure, video_id: str, stage: str, file_name: str, words: str) -> None:
    """The one line a user reads names the video id, the stage, the file and the reason."""
    text = failure.reason
    assert f"video {video_id}" in text, text
    assert f"stage {stage}" in text, text
    assert file_name in text, text
    assert words.lower() in text.lower(), text
    assert "\n" not in text


def same_content(a: Path, b: Path) -> bool:
    """Equal frames, depth, intrinsics, windows and window poses (not the sampled query points)."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        if sorted(fa["root/tracks"]) != sorted(fb["root/tracks"]):
            return False
        keys = ["root/video", "root/depth", "root/intrinsics"] + [f"root/tracks/{g}/poses" for g in fa["root/tracks"]]
        return all(np.array_equal(fa[k][()], fb[k][()]) for k in keys)


def files_under(root: Path) -> dict[str, int]:
    """Every file under ``root`` (relative path -> mtime_ns)."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def stray_temporaries(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob(".*.tmp")]


# -- ways to break an input ------------------------------------------------------------------


class RunsCode:
    """A pickle payload: unpickling it creates ``path`` (as any code execution could)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def remux_faststart(source: Path, target: Path) -> None:
    """The same stream in an MP4 whose index (moov) comes first, as web downloads have it."""
    with av.open(str(source)) as src, av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            dst.mux(packet)


def truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def encoded(tmp: Path, container: str, codec: str) -> bytes:
    """Bytes of a 30-frame synthetic clip in another container."""
    [path] = make_corpus(
        tmp / container, 1, seed=SEED + 7, num_frames=30, width=W, height=H, codec=codec, container=container
    )
    return path.read_bytes()


def depth_fault(monkeypatch, faults: dict[str, object]) -> Counter:
    """Make the synthetic depth backend return broken depth for videos whose file name is a key.

    A value is a callable taking the backend's result and breaking it in place. Returns a
    counter of backend calls per file name (to prove typed errors are not retried).
    """
    calls: Counter = Counter()
    original = SyntheticDepthCamera.infer

    def infer(self, video, frames, meta):
        result = original(self, video, frames, meta)
        name = Path(video.source).name
        calls[name] += 1
        if name in faults:
            faults[name](result)
        return result

    monkeypatch.setattr(SyntheticDepthCamera, "infer", infer)
    return calls


def _denied(path: object) -> bool:
    """What a non-root user meets: a regular file with no read bit at all."""
    try:
        info = os.stat(path)  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return False
    return stat.S_ISREG(info.st_mode) and not info.st_mode & 0o444


def emulate_non_root_permissions(monkeypatch) -> None:
    """As root, a mode-000 file is still readable; make it unreadable, as for any other user.

    Only the calls trackset makes to read a source are patched (``open``, ``os.access``,
    ``av.open``); for any other file they behave as before. Off root, nothing is patched.
    """
    if os.geteuid() != 0:
        return
    real_open, real_access, real_av_open = builtins.open, os.access, av.open

    def open_(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and _denied(file):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        if mode & os.R_OK and _denied(path):
            return False
        return real_access(path, mode, *args, **kwargs)

    def av_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and _denied(file):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_av_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(av, "open", av_open)


# -- the clean baseline ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """11 clips of 20 frames and one of 14 (its tracks file is "from another video" below)."""
    videos = tmp_path_factory.mktemp("bad-inputs-corpus") / "videos"
    make_corpus(videos, NUM_CLIPS, seed=SEED, num_frames=FRAMES, width=W, height=H)
    make_corpus(videos / "short", 1, seed=SEED + 1, num_frames=SHORT_FRAMES, width=W, height=H)
    return videos


@pytest.fixture(scope="module")
def baseline(corpus, tmp_path_factory):
    """One clean build of the corpus: the bytes every fault is compared with."""
    root = tmp_path_factory.mktemp("bad-inputs-baseline")
    shutil.copytree(corpus, root / "videos")
    summary = build_dataset(overrides=overrides(root))
    assert not summary.failures
    assert sorted(p.stem for p in (root / "dataset").glob("*.hdf5")) == [vid(i) for i in range(NUM_CLIPS + 1)]
    return root, digests(root / "dataset")


def copy_build(baseline_root: Path, root: Path) -> None:
    """A dataset as the baseline left it: sources, intermediates, H5 files and manifest."""
    for name in ("videos", "work", "dataset"):
        shutil.copytree(baseline_root / name, root / name)


# -- bad source files ------------------------------------------------------------------------

# file name -> (stage that must fail, words the reason must hold)
BAD_SOURCES: dict[str, tuple[str, str]] = {
    "zz_01_truncated_moov_at_end.mp4": ("preprocess", "cannot open"),
    "zz_02_truncated_faststart.mp4": ("preprocess", "truncated"),
    "zz_03_truncated.mkv": ("preprocess", "truncated"),
    "zz_04_truncated.avi": ("preprocess", "truncated"),
    "zz_05_zero_length.mp4": ("preprocess", "empty (0 bytes)"),
    "zz_06_not_a_video.mp4": ("preprocess", "cannot open"),
    "zz_07_depth_nan.mp4": ("depth_camera", "no valid depth"),
    "zz_08_depth_inf.mp4": ("depth_camera", "no valid depth"),
    "zz_09_depth_zero.mp4": ("depth_camera", "no valid depth"),
    "zz_10_depth_flat.mp4": ("depth_camera", "frames are flat"),
    "zz_11_camera_nan.mp4": ("depth_camera", "non-finite 'extrinsics'"),
}
DEPTH_FAULTS = {
    "zz_07_depth_nan.mp4": lambda r: r.depths.fill(np.nan),
    "zz_08_depth_inf.mp4": lambda r: (r.depths.fill(np.inf), r.depths[::2].fill(-np.inf)),
    "zz_09_depth_zero.mp4": lambda r: r.depths.fill(0.0),
    "zz_10_depth_flat.mp4": lambda r: r.depths.fill(1.25),
    "zz_11_camera_nan.mp4": lambda r: r.extrinsics.__setitem__((3, 0, 3), np.nan),
}


@pytest.fixture(scope="module")
def bad_sources(corpus, baseline, tmp_path_factory):
    """The good corpus plus every kind of bad source, built from scratch in one run."""
    root = tmp_path_factory.mktemp("bad-sources")
    videos = root / "videos"
    shutil.copytree(corpus, videos)
    scratch = tmp_path_factory.mktemp("bad-sources-scratch")
    clip = videos / "clip_000.mp4"

    (videos / "zz_01_truncated_moov_at_end.mp4").write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    remux_faststart(clip, videos / "zz_02_truncated_faststart.mp4")
    truncate(videos / "zz_02_truncated_faststart.mp4", 0.6)
    (videos / "zz_03_truncated.mkv").write_bytes(encoded(scratch, "matroska", "libx264"))
    truncate(videos / "zz_03_truncated.mkv", 0.5)
    (videos / "zz_04_truncated.avi").write_bytes(encoded(scratch, "avi", "mpeg4"))
    truncate(videos / "zz_04_truncated.avi", 0.4)
    (videos / "zz_05_zero_length.mp4").write_bytes(b"")
    (videos / "zz_06_not_a_video.mp4").write_text("just some text that is not a video\n" * 50)
    for name in DEPTH_FAULTS:
        copy_clip(videos, "clip_000.mp4", name)

    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = depth_fault(monkeypatch, DEPTH_FAULTS)
        summary = build_dataset(overrides=overrides(root))
    return root, summary, calls, manifest_ids(root / "dataset")


@pytest.mark.parametrize("name", sorted(BAD_SOURCES))
def test_a_bad_source_fails_alone_naming_video_stage_file_and_reason(bad_sources, name):
    root, summary, _, ids = bad_sources
    stage, words = BAD_SOURCES[name]
    video_id = ids[name]
    [failure] = failures_by_id(summary)[video_id]
    assert (failure.stage, failure.kind) == (stage, "error")
    assert_names_everything(failure, video_id, stage, name, words)
    assert not (root / "dataset" / f"{video_id}.hdf5").exists()
    assert not (root / "dataset" / "partials" / f"{video_id}.json").exists()
    assert f"| {video_id} | {stage} | error |" in summary.to_markdown()


def test_bad_sources_leave_every_other_output_byte_identical(bad_sources, baseline):
    root, summary, _, ids = bad_sources
    bad_ids = {ids[name] for name in BAD_SOURCES}
    assert {f.video_id for f in summary.failures} == bad_ids
    assert len(summary.failures) == len(bad_ids)  # one failure per bad video, none for the others
    # Failed videos add nothing, so even the statistics equal the clean run's, byte for byte.
    assert digests(root / "dataset") == baseline[1]
    assert stray_temporaries(root / "work", root / "dataset") == []


def test_typed_errors_fail_at_once_without_retries(bad_sources):
    _, _, calls, _ = bad_sources
    for name in DEPTH_FAULTS:
        assert calls[name] == 1, f"{name} was run {calls[name]} times; typed errors are final (retries: 1)"


def test_typed_errors_are_reported_with_one_attempt(bad_sources):
    _, summary, _, ids = bad_sources
    reported = {f.video_id: f.attempts for f in summary.failures if f.stage == "depth_camera"}
    assert reported == {ids[name]: 1 for name in DEPTH_FAULTS}


# -- bad intermediates, hostile names --------------------------------------------------------

TRAVERSAL_NAMES = [
    "zz_trav/%2E%2E%2F%2E%2E%2Fescape.mp4",
    "zz_trav/back\\..\\..\\slash.mp4",
    "zz_trav/$(touch pwned).mp4",
]
HIDDEN_TRAVERSAL = "..%2F..%2Fetc.mp4"  # a dot file: never registered (hidden files are skipped)


def _tracks(root: Path, video_id: str) -> Path:
    return root / "work" / "tracks_3d" / f"{video_id}.pt"


def _hands(root: Path, video_id: str) -> Path:
    return root / "work" / "hand_poses" / f"{video_id}.pt"


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _rewrite(path: Path, change) -> None:
    data = _load(path)
    change(data)
    torch.save(data, path)


# video index -> (file it breaks, words of the reason); each breaks one baseline video
BAD_INTERMEDIATES: dict[int, tuple[str, str, str]] = {
    0: ("tracks_3d", "tracks_3d", "missing key 'windows'"),
    1: ("tracks_3d", "tracks_3d", "has shape"),
    2: ("tracks_3d", "tracks_3d", "has dtype int32"),
    3: ("tracks_3d", "tracks_3d", "video_name is '00004'"),  # same length, another video's file
    4: ("hand_poses", "hands", "missing key 'right_wrist_pose'"),
    5: ("hand_poses", "hands", "'left_valid' has dtype float32"),
    6: ("tracks_3d", "tracks_3d", "num_frames is 14"),  # the short video's file: frame count mismatch
    7: ("tracks_3d", "tracks_3d", "refused to unpickle"),
    8: ("hand_poses", "hands", "refused to unpickle"),
    9: ("vipe", "depth_camera", "unreadable"),
}
TRUNCATED_LATER = 10  # its depth file cut short after its marker was written: recomputed, not failed


def break_intermediates(root: Path, sentinel: Path) -> None:
    def drop(key):
        return lambda data: data.pop(key)

    _rewrite(_tracks(root, vid(0)), drop("windows"))
    _rewrite(_tracks(root, vid(1)), lambda d: d.__setitem__("tracks", [t[..., :2].clone() for t in d["tracks"]]))
    _rewrite(_tracks(root, vid(2)), lambda d: d.__setitem__("tracks", [(t * 100).to(torch.int32) for t in d["tracks"]]))
    shutil.copyfile(_tracks(root, vid(4)), _tracks(root, vid(3)))
    _rewrite(_hands(root, vid(4)), drop("right_wrist_pose"))
    _rewrite(_hands(root, vid(5)), lambda d: d.__setitem__("left_valid", d["left_valid"].float()))
    shutil.copyfile(_tracks(root, SHORT_ID), _tracks(root, vid(6)))
    tracks = _load(_tracks(root, vid(7)))
    tracks["stride"] = RunsCode(sentinel)
    torch.save(tracks, _tracks(root, vid(7)))
    hands = _load(_hands(root, vid(8)))
    hands["left_valid"] = np.array([RunsCode(sentinel)], dtype=object)
    torch.save(hands, _hands(root, vid(8)))
    truncate(root / "work" / "vipe" / f"{vid(9)}.npz", 0.5)
    for index, (folder, stage, _) in BAD_INTERMEDIATES.items():
        # Each as its stage wrote it (a broken model, the script pipeline's file), not damaged
        # after its marker: that would be recomputed (TRUNCATED_LATER).
        suffix = "npz" if folder == "vipe" else "pt"
        restamp(root, stage, root / "work" / folder / f"{vid(index)}.{suffix}")
    truncate(root / "work" / "vipe" / f"{vid(TRUNCATED_LATER)}.npz", 0.5)
    for index in [*BAD_INTERMEDIATES, TRUNCATED_LATER]:
        # Only the partials: the H5 stage re-runs, as after a crash between the H5 and them.
        (root / "dataset" / "partials" / f"{vid(index)}.json").unlink()


def restamp(root: Path, stage: str, output: Path) -> None:
    """Make ``stage``'s marker record ``output`` as it is now: a file its stage wrote."""
    work = WorkLayout(root / "work")
    marker = work.marker(stage, output.stem)
    Marker.of(Marker.read(marker).fingerprint, work.root, [output]).write(marker)


@pytest.fixture(scope="module")
def bad_intermediates(baseline, tmp_path_factory):
    """The baseline build with broken intermediates, hostile names and NaN-speckled depth."""
    top = tmp_path_factory.mktemp("bad-intermediates")
    root = top / "build"
    copy_build(baseline[0], root)
    sentinel = top / "payload-ran"
    # The payloads are live: plain unpickling runs them.
    break_intermediates(root, sentinel)
    torch.load(_tracks(root, vid(7)), weights_only=False)
    assert sentinel.exists()
    sentinel.unlink()

    videos = root / "videos"
    for name in TRAVERSAL_NAMES:
        copy_clip(videos, "clip_000.mp4", name)
    (videos / HIDDEN_TRAVERSAL).write_bytes((videos / "clip_000.mp4").read_bytes())
    copy_clip(videos, "clip_001.mp4", "zz_half_nan_depth.mp4")

    def speckle(result) -> None:
        result.depths[:, ::2, :] = np.nan  # every other row: half the pixels invalid

    before = {"top": files_under(top), "etc": Path("/etc/passwd").stat().st_mtime_ns}
    with pytest.MonkeyPatch.context() as monkeypatch:
        depth_fault(monkeypatch, {"zz_half_nan_depth.mp4": speckle})
        monkeypatch.chdir(top)  # a relative path that escaped would land here
        summary = build_dataset(overrides=overrides(root))
    return top, root, summary, before, sentinel


@pytest.mark.parametrize("index", sorted(BAD_INTERMEDIATES))
def test_a_bad_intermediate_fails_only_its_video_in_the_h5_stage(bad_intermediates, index):
    _, root, summary, _, _ = bad_intermediates
    folder, stage, words = BAD_INTERMEDIATES[index]
    video_id = vid(index)
    [failure] = failures_by_id(summary)[video_id]
    assert (failure.stage, failure.kind) == ("h5_build", "error")
    suffix = "npz" if folder == "vipe" else "pt"
    assert_names_everything(failure, video_id, stage, f"{folder}/{video_id}.{suffix}", words)


def test_bad_intermediates_fail_nothing_else_and_change_no_other_byte(bad_intermediates, baseline):
    _, root, summary, _, _ = bad_intermediates
    assert sorted({f.video_id for f in summary.failures}) == [vid(i) for i in sorted(BAD_INTERMEDIATES)]
    assert len(summary.failures) == len(BAD_INTERMEDIATES)
    dataset = root / "dataset"
    # The untouched video was skipped and keeps its bytes.
    assert sha(dataset / f"{SHORT_ID}.hdf5") == baseline[1][f"{SHORT_ID}.hdf5"]
    assert stray_temporaries(root / "work", dataset) == []


def test_an_intermediate_cut_short_after_its_marker_is_recomputed(bad_intermediates, baseline):
    _, root, summary, _, _ = bad_intermediates
    video_id = vid(TRUNCATED_LATER)
    assert video_id not in failures_by_id(summary)
    assert video_id in {r.video_id for r in summary.records("depth_camera") if r.status == "done"}
    assert sha(root / "dataset" / f"{video_id}.hdf5") == baseline[1][f"{video_id}.hdf5"]


def test_unpickling_a_hostile_intermediate_runs_no_code(bad_intermediates):
    *_, sentinel = bad_intermediates
    assert not sentinel.exists()


def test_a_failed_rebuild_leaves_no_h5_without_partials(bad_intermediates):
    _, root, *_ = bad_intermediates
    dataset = root / "dataset"
    orphans = [p.name for p in dataset.glob("*.hdf5") if not (dataset / "partials" / f"{p.stem}.json").exists()]
    assert orphans == []


def test_ids_not_names_make_paths_and_nothing_lands_outside(bad_intermediates, baseline):
    top, root, summary, before, _ = bad_intermediates
    ids = manifest_ids(root / "dataset")
    assert HIDDEN_TRAVERSAL not in ids
    for name in TRAVERSAL_NAMES:
        video_id = ids[name]
        assert video_id not in failures_by_id(summary)
        # Same content as clip_000, so the same pixels, depth and camera motion, under its id
        # in the dataset directory (query points are sampled per id, so they differ).
        assert same_content(root / "dataset" / f"{video_id}.hdf5", baseline[0] / "dataset" / f"{vid(0)}.hdf5")
    after = files_under(top)
    changed = {path for path, mtime in after.items() if before["top"].get(path) != mtime}
    outside = sorted(p for p in changed if not p.startswith(("build/work/", "build/dataset/")))
    assert outside == []
    assert [p for p in after if p.rsplit("/", 1)[-1] in ("pwned", "escape.hdf5", "etc.mp4")] == []
    assert Path("/etc/passwd").stat().st_mtime_ns == before["etc"]


def test_nan_speckled_depth_lands_with_nan_as_invalid(bad_intermediates):
    _, root, summary, _, _ = bad_intermediates
    video_id = manifest_ids(root / "dataset")["zz_half_nan_depth.mp4"]
    assert video_id not in failures_by_id(summary)
    with h5py.File(root / "dataset" / f"{video_id}.hdf5") as f:
        depth = f["root/depth"][()]
        assert np.isfinite(depth).all() and (depth == 0).any() and (depth > 0).any()
        for group in f["root/tracks"].values():
            for name in group:
                assert np.isfinite(group[name][()]).all(), (group.name, name)
    stats = yaml.safe_load((root / "dataset" / "normalization_stats.yaml").read_text())
    for key in ("depth_mean", "depth_std", "displacement_mean", "displacement_std", "pose_mean", "pose_std"):
        assert np.isfinite(np.asarray(stats[key], dtype=float)).all(), key


def test_restoring_the_bad_intermediates_recovers_the_clean_bytes(bad_intermediates, baseline):
    """Nothing was lost: delete the broken files, run again, and the dataset is the clean one."""
    top, root, summary, _, _ = bad_intermediates
    for index, (folder, _, _) in BAD_INTERMEDIATES.items():
        suffix = "npz" if folder == "vipe" else "pt"
        (root / "work" / folder / f"{vid(index)}.{suffix}").unlink()
    ids = manifest_ids(root / "dataset")
    for name in [*TRAVERSAL_NAMES, "zz_half_nan_depth.mp4"]:
        (root / "videos" / name).unlink()
        for path in (root / "dataset" / f"{ids[name]}.hdf5", root / "dataset" / "partials" / f"{ids[name]}.json"):
            path.unlink()
    again = build_dataset(overrides=overrides(root))
    assert not again.failures
    assert digests(root / "dataset") == baseline[1]


# -- unreadable sources ----------------------------------------------------------------------


def test_an_unreadable_new_source_fails_alone(baseline, tmp_path, monkeypatch):
    """A source nobody may read (mode 000) fails alone; as root, non-root reading is emulated."""
    root = tmp_path
    copy_build(baseline[0], root)
    source = copy_clip(root / "videos", "clip_000.mp4", "zz_unreadable.mp4")
    source.chmod(0)
    emulate_non_root_permissions(monkeypatch)
    with pytest.raises(PermissionError):  # the emulation is in force
        open(source, "rb")
    try:
        summary = build_dataset(overrides=overrides(root))
    finally:
        source.chmod(0o644)
    [failure] = summary.failures
    assert (failure.video_id, failure.stage) == ("zz_unreadable.mp4", "register")
    assert_names_everything(failure, "(not registered)", "register", "zz_unreadable.mp4", "permission denied")
    assert digests(root / "dataset") == baseline[1]
    assert "zz_unreadable.mp4" not in manifest_ids(root / "dataset")  # registered once it can be read


def test_a_known_source_that_becomes_unreadable_fails_alone(baseline, tmp_path, monkeypatch):
    root = tmp_path
    copy_build(baseline[0], root)
    source = root / "videos" / "clip_003.mp4"
    # Registered earlier, unreadable now; its frames are gone, so preprocessing must read it.
    shutil.rmtree(root / "work" / "frames" / vid(3))
    (root / "dataset" / "partials" / f"{vid(3)}.json").unlink()
    (root / "dataset" / f"{vid(3)}.hdf5").unlink()
    source.chmod(0)
    emulate_non_root_permissions(monkeypatch)
    try:
        summary = build_dataset(overrides=overrides(root))
    finally:
        source.chmod(0o644)
    [failure] = summary.failures
    assert failure.stage == "preprocess"
    assert_names_everything(failure, vid(3), "preprocess", "clip_003.mp4", "permission denied")
    h5_now = {k: v for k, v in digests(root / "dataset").items() if k.endswith(".hdf5")}
    h5_before = {k: v for k, v in baseline[1].items() if k.endswith(".hdf5") and k != f"{vid(3)}.hdf5"}
    assert h5_now == h5_before


# -- failure policy and exit status ----------------------------------------------------------


def test_fail_on_video_error_fails_the_run_after_writing_the_rest(baseline, tmp_path):
    root = tmp_path
    copy_build(baseline[0], root)
    dataset = root / "dataset"
    # Two good videos still to build and no statistics yet, and one bad video.
    for index in (1, 5):
        (dataset / f"{vid(index)}.hdf5").unlink()
        (dataset / "partials" / f"{vid(index)}.json").unlink()
    (dataset / "normalization_stats.yaml").unlink()
    (root / "videos" / "zz_not_a_video.mp4").write_text("not a video")
    state = build_dataset(overrides=overrides(root, run={"fail_on_video_error": True}), return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), VideosFailedError)
    # The good videos and the statistics were written before the run failed.
    assert digests(dataset) == baseline[1]

    settings = root / "settings.yaml"
    settings.write_text(yaml.safe_dump(overrides(root)))
    for key, value in {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DASK_LOGGING__DISTRIBUTED": "warning",
    }.items():
        os.environ.setdefault(key, value)  # what main() sets; kept for the session on purpose
    code = main(["run", "--settings", str(settings), "--set", f"paths.dataset_dir={root / 'dataset'}"])
    assert code == 1
    assert digests(root / "dataset") == baseline[1]


def test_the_cli_exits_1_when_the_flow_fails_on_video_errors(baseline, tmp_path, capsys):
    """``run.fail_on_video_error: true`` from the CLI: still a summary and exit status 1."""
    root = tmp_path
    copy_build(baseline[0], root)
    (root / "videos" / "zz_not_a_video.mp4").write_text("not a video")
    settings = root / "settings.yaml"
    settings.write_text(yaml.safe_dump(overrides(root)))
    code = main(["run", "--settings", str(settings), "--set", "run.fail_on_video_error=true"])
    assert code == 1
    out = capsys.readouterr().err
    assert "zz_not_a_video.mp4" in out
