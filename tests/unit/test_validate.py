"""``validate_dataset`` on a tiny hand-built dataset: clean passes, each corruption is named.

The dataset is three short videos built the way the H5 stage builds them (``build_arrays``,
``write_h5`` with the provenance attributes of ``file_attributes``, partials from
``video_moments``) plus the statistics YAML and ``dataset.json`` of ``write_dataset_files``.
It is built once per module; each corruption test works on a copy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from trackset.config.settings import H5Settings, Settings
from trackset.dataset import validate as validate_module
from trackset.dataset.record import RUNS_KEPT, RunInfo, write_dataset_files
from trackset.dataset.validate import Problem, ValidationReport, validate_dataset
from trackset.domain import VideoRef
from trackset.formats.h5_layout import build_arrays, video_moments, write_h5
from trackset.formats.intermediates import DepthCamera, Hand, HandPoses, Tracks3d
from trackset.formats.layout import DatasetLayout
from trackset.formats.markers import FileStamp
from trackset.formats.statistics import VideoPartials
from trackset.stages.provenance import file_attributes
from trackset.stages.registry import stage_config

T, L, H, W, S = 8, 4, 24, 32, 16
FX, CX, CY = 20.0, 16.0, 12.0
STD_FLOOR = 1e-6
SETTINGS = H5Settings(target_size=S)
VIDEOS = ("00000", "00001", "00002")


def make_video(seed: int, with_hand: bool) -> tuple[np.ndarray, DepthCamera, Tracks3d, HandPoses | None]:
    """A camera sliding along +x and turning slightly about y; slowly moving points in view."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 2.0, (T, H, W)).astype(np.float32)
    depths[:, :2] = 3.0  # clipped to depth_max_m
    depths[:, 2:4] = 0.0  # invalid
    k = np.array([[FX, 0, CX], [0, FX, CY], [0, 0, 1]])
    extrinsics = np.tile(np.eye(4), (T, 1, 1))
    for t in range(T):
        angle = 0.01 * t
        c, s = np.cos(angle), np.sin(angle)
        extrinsics[t, :3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
        extrinsics[t, :3, 3] = [-0.01 * t, 0.0, 0.0]
    z = rng.uniform(1.0, 2.0, 12)
    world = np.stack([rng.uniform(-0.2, 0.2, 12) * z, rng.uniform(-0.2, 0.2, 12) * z, z], axis=1)
    velocity = rng.uniform(-0.005, 0.005, (12, 3))  # metres per frame
    windows, tracks = [], []
    for start in range(T - L + 1):
        # Points at every step of the window, in the camera of its first frame.
        at_step = world[None] + velocity[None] * (start + np.arange(L))[:, None, None]
        windows.append((start, start + L))
        tracks.append(at_step @ extrinsics[start, :3, :3].T + extrinsics[start, :3, 3])
    hands = None
    if with_hand:
        wrist = np.tile(np.eye(4), (T, 1, 1))
        wrist[:, :3, 3] = [0.05, 0.02, 0.8]
        nan_hand = Hand(
            np.zeros(T, bool),
            np.full((T, 4, 4), np.nan),
            np.full((T, 15, 3, 3), np.nan),
            np.full((T, 21, 3), np.nan),
            np.full(10, np.nan),
        )
        left = Hand(np.ones(T, bool), wrist, np.zeros((T, 15, 3, 3)), np.zeros((T, 21, 3)), np.zeros(10))
        hands = HandPoses(left, nan_hand, k, T)
    depth = DepthCamera(depths, np.tile(k, (T, 1, 1)), extrinsics)
    return frames, depth, Tracks3d(windows, tracks, k, T, L, 1), hands


def build_dataset(root: Path) -> None:
    layout = DatasetLayout(root)
    provenance = stage_config("h5_build", Settings(h5=SETTINGS)).provenance
    for index, video_id in enumerate(VIDEOS):
        frames, depth, tracks, hands = make_video(index, with_hand=index != 2)
        arrays = build_arrays(video_id, frames, depth, tracks, hands, SETTINGS, L)
        fingerprint = f"fingerprint-{index}"
        attributes = file_attributes(
            provenance, VideoRef(video_id, root / f"{index}.mp4", f"{index}" * 64), fingerprint
        )
        write_h5(layout.h5(video_id), arrays, attributes=attributes)
        partials = VideoPartials(video_id=video_id, fingerprint=fingerprint, **video_moments(arrays))
        partials.write(layout.partials(video_id))
    write_dataset_files(layout, STD_FLOOR, RunInfo("run-1", "a-run", len(VIDEOS)), datetime.now(timezone.utc))


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "dataset"
    build_dataset(root)
    return root


@pytest.fixture
def dataset(clean, tmp_path) -> Path:
    """A private copy of the clean dataset to corrupt."""
    return Path(shutil.copytree(clean, tmp_path / "dataset"))


def validate(root: Path, deep: bool = False) -> ValidationReport:
    return validate_dataset(root, SETTINGS, STD_FLOOR, deep=deep)


def problem_files(report: ValidationReport) -> set[str]:
    return {p.file for p in report.problems}


def test_clean_dataset_is_valid(clean):
    report = validate(clean, deep=True)
    assert report.ok, report.problems
    assert [row[0] for row in report.rows()] == [
        *(f"{v}.hdf5" for v in VIDEOS),
        "normalization_stats.yaml",
        "dataset.json",
    ]
    assert {row[1] for row in report.rows()} == {"ok"}
    assert report.rows()[0][2] == f"{T} frames, {T - L + 1} windows, {12 * (T - L + 1)} tracks, left hand in 5"


def test_clean_dataset_has_the_cases_the_checks_need(clean):
    """Guards the fixture: clipped depths, zeros, hands in some windows, a real rotation."""
    with h5py.File(clean / "00000.hdf5") as f:
        depth = f["root/depth"][()]
        assert (depth == 0).any() and (depth == np.float32(2.5)).any()
        assert "left_wrist_query_uvd" in f["root/tracks/frame_0000"]
        assert f["root/tracks/frame_0001/poses"][1, 0] != 1.0  # rotated camera
    with h5py.File(clean / "00002.hdf5") as f:
        assert "left_wrist_query_uvd" not in f["root/tracks/frame_0000"]


# --- corruptions: (name, function of the dataset dir, file that must be named, check) ------


def truncate(root: Path) -> None:
    path = root / "00001.hdf5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(root: Path) -> None:
    (root / "00001.hdf5").write_bytes(b"not an hdf5 file" * 100)


def edit_h5(video_id: str, edit: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        with h5py.File(root / f"{video_id}.hdf5", "r+") as f:
            edit(f)

    return corrupt


def set_value(path: str, index: tuple[int, ...], value: float) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f[path][index] = value

    return edit


def delete(path: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[path]

    return edit


def retype(path: str, dtype: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        data = f[path][()]
        del f[path]
        f.create_dataset(path, data=data.astype(dtype))

    return edit


def replace(path: str, data: object) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[path]
        f.create_dataset(path, data=data)

    return edit


def window_beyond_end(f: h5py.File) -> None:
    f.copy(f["root/tracks/frame_0000"], f"root/tracks/frame_{T - L + 1:04d}")


def change_stats_mean(root: Path) -> None:
    path = root / "normalization_stats.yaml"
    stats = yaml.safe_load(path.read_text())
    stats["displacement_mean"][0] += 1e-6
    path.write_text(yaml.safe_dump(stats, sort_keys=False))


def drop_partials(root: Path) -> None:
    (root / "partials" / "00001.json").unlink()


def set_attribute(key: str, value: str | int) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[key] = value

    return edit


def delete_attribute(key: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f.attrs[key]

    return edit


def drop_attributes(f: h5py.File) -> None:
    for key in list(f.attrs):
        del f.attrs[key]


CORRUPTIONS = [
    ("truncated H5", truncate, "00001.hdf5", "open"),
    ("not an H5 file", garbage, "00001.hdf5", "open"),
    (
        "NaN in displacements",
        edit_h5("00002", set_value("root/tracks/frame_0002/displacements", (2, 0, 1), np.nan)),
        "00002.hdf5",
        "finite",
    ),
    (
        "u out of range",
        edit_h5("00000", set_value("root/tracks/frame_0001/query_coords", (3, 0), 1.5)),
        "00000.hdf5",
        "range",
    ),
    ("missing dataset", edit_h5("00001", delete("root/depth")), "00001.hdf5", "layout"),
    ("missing window dataset", edit_h5("00001", delete("root/tracks/frame_0003/poses")), "00001.hdf5", "layout"),
    ("wrong dtype", edit_h5("00000", retype("root/tracks/frame_0000/displacements", "float64")), "00000.hdf5", "dtype"),
    ("frame group beyond T-L", edit_h5("00002", window_beyond_end), "00002.hdf5", "windows"),
    ("stats mean changed", change_stats_mean, "normalization_stats.yaml", "stats"),
    ("partials missing", drop_partials, "00001.hdf5", "partials"),
    (
        "fingerprint attribute changed",
        edit_h5("00001", set_attribute("trackset.fingerprint", "other")),
        "00001.hdf5",
        "provenance",
    ),
    ("provenance removed", edit_h5("00002", drop_attributes), "00002.hdf5", "provenance"),
    (
        "seed attribute changed",
        edit_h5("00000", set_attribute("trackset.tracks_3d.seed", 5)),
        "00000.hdf5",
        "provenance",
    ),
    ("model attribute removed", edit_h5("00000", delete_attribute("trackset.hands.model")), "00000.hdf5", "provenance"),
    ("depth beyond clip range", edit_h5("00000", set_value("root/depth", (1, 5, 5), 2.6)), "00000.hdf5", "range"),
    ("NaN in depth", edit_h5("00000", set_value("root/depth", (1, 5, 5), np.nan)), "00000.hdf5", "finite"),
    (
        "query depth out of range",
        edit_h5("00000", set_value("root/tracks/frame_0000/query_coords", (0, 2), 0.05)),
        "00000.hdf5",
        "range",
    ),
    (
        "displacement step 0 non-zero",
        edit_h5("00001", set_value("root/tracks/frame_0000/displacements", (0, 1, 0), 1e-7)),
        "00001.hdf5",
        "step0",
    ),
    (
        "pose step 0 not identity",
        edit_h5("00001", set_value("root/tracks/frame_0004/poses", (0, 6), 0.01)),
        "00001.hdf5",
        "step0",
    ),
    (
        "point leaves the image",
        edit_h5("00000", set_value("root/tracks/frame_0001/displacements", (2, 4, 1), 2.0)),
        "00000.hdf5",
        "range",
    ),
    (
        "point behind the camera",
        edit_h5("00000", set_value("root/tracks/frame_0001/displacements", (3, 4, 2), -5.0)),
        "00000.hdf5",
        "range",
    ),
    (
        "wrist leaves the image",
        edit_h5("00000", set_value("root/tracks/frame_0001/left_wrist_uvd_displacements", (2, 0), 2.0)),
        "00000.hdf5",
        "range",
    ),
    (
        "wrist behind the camera",
        edit_h5("00001", set_value("root/tracks/frame_0002/left_wrist_uvd_displacements", (3, 2), -5.0)),
        "00001.hdf5",
        "range",
    ),
    (
        "incomplete hand set",
        edit_h5("00000", delete("root/tracks/frame_0002/left_wrist_query_rot_6d")),
        "00000.hdf5",
        "hands",
    ),
    ("wrong track type", edit_h5("00001", replace("root/track_type", "2d")), "00001.hdf5", "value"),
    ("num_frames disagrees", edit_h5("00002", replace("root/num_frames", T + 1)), "00002.hdf5", "value"),
    (
        "intrinsics shape",
        edit_h5("00002", replace("root/intrinsics", np.eye(4, dtype=np.float32))),
        "00002.hdf5",
        "shape",
    ),
]


@pytest.mark.parametrize(("corrupt", "file", "check"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_corruption_is_detected_and_names_the_file(dataset, corrupt, file, check):
    corrupt(dataset)
    report = validate(dataset)
    assert not report.ok
    assert any(p.file == file and p.check == check for p in report.problems), report.problems
    # The other H5 files are still checked and stay clean.
    others = {f"{v}.hdf5" for v in VIDEOS} - {file}
    assert not problem_files(report) & others, report.problems
    assert "FAIL" in {row[1] for row in report.rows() if row[0] == file}
    h5_rows = [row[0] for row in report.rows() if row[0].endswith(".hdf5")]
    assert h5_rows == sorted(h5_rows)  # rows keep the checking order, failing files included


@pytest.mark.parametrize(
    ("path", "data", "detail"),
    [
        ("query_coords", np.zeros((12, 2)), "shape (12, 2), expected (N, 3)"),
        ("displacements", np.zeros((L - 1, 12, 3)), f"shape ({L - 1}, 12, 3), expected (L, N, 3) = ({L}, 12, 3)"),
        ("displacements", np.zeros((L, 11, 3)), f"shape ({L}, 11, 3), expected (L, N, 3) = ({L}, 12, 3)"),
        ("poses", np.zeros((L, 6)), f"shape ({L}, 6), expected (L, 9) = ({L}, 9)"),
        ("left_wrist_uvd_displacements", np.zeros((L - 1, 3)), f"shape ({L - 1}, 3), expected ({L}, 3)"),
        ("left_wrist_query_rot_6d", np.zeros(5), "shape (5,), expected (6,)"),
    ],
    ids=["query_coords", "displacements L", "displacements N", "poses", "hand L", "hand 6d"],
)
def test_window_shapes_are_named_with_their_symbols(dataset, path, data, detail):
    edit_h5("00000", replace(f"root/tracks/frame_0001/{path}", data.astype(np.float32)))(dataset)
    assert validate(dataset).problems == [Problem("00000.hdf5", "shape", f"root/tracks/frame_0001/{path}: {detail}")]


def test_hand_in_image_rule_follows_the_setting(dataset):
    """A wrist outside the image is a problem only for a dataset built with h5.hands_in_image."""
    edit_h5("00000", set_value("root/tracks/frame_0001/left_wrist_uvd_displacements", (2, 0), 2.0))(dataset)
    assert [(p.check, p.detail.split(":")[0]) for p in validate(dataset).problems] == [
        ("range", "root/tracks/frame_0001/left_wrist_uvd_displacements")
    ]
    lenient = validate_dataset(dataset, SETTINGS.model_copy(update={"hands_in_image": False}), STD_FLOOR)
    assert lenient.ok, lenient.problems


@pytest.mark.parametrize(
    "name",
    ["0001.hdf5", "000001.hdf5", "00001\n.hdf5", "\u0660\u0660\u0660\u0660\u0661.hdf5", "1e3_0.hdf5"],
    ids=["4 digits", "zero-padded past 5", "newline", "Arabic-Indic digits", "not digits"],
)
def test_an_h5_not_named_by_a_video_id_is_reported(dataset, name):
    shutil.copy(dataset / "00000.hdf5", dataset / name)
    report = validate(dataset)
    assert [(p.file, p.check) for p in report.problems] == [(name, "name")], report.problems


def test_partials_without_h5_name_the_partials(dataset):
    (dataset / "00002.hdf5").unlink()
    report = validate(dataset)
    assert Problem("partials/00002.json", "partials", "no 00002.hdf5 for these partials") in report.problems


def test_malformed_partials_name_the_partials_file(dataset):
    (dataset / "partials" / "00000.json").write_text("{}")
    report = validate(dataset)
    assert {(p.file, p.check) for p in report.problems} == {
        ("partials/00000.json", "partials"),
        ("normalization_stats.yaml", "stats"),  # not comparable without every partials file
        ("dataset.json", "record"),  # nor is the dataset's version
    }


def stamp_partials(root: Path) -> None:
    """Give every partials file the stamp of its H5, as the H5 stage writes them now."""
    layout = DatasetLayout(root)
    for video_id in VIDEOS:
        partials = VideoPartials.read(layout.partials(video_id))
        dataclasses.replace(partials, h5=FileStamp.of(layout.h5(video_id))).write(layout.partials(video_id))


def test_an_h5_that_is_not_the_size_its_partials_recorded_is_named(dataset):
    stamp_partials(dataset)
    assert validate(dataset).ok
    h5 = dataset / "00001.hdf5"
    size = h5.stat().st_size
    with open(h5, "ab") as out:
        out.write(b"\0" * 10)  # still opens: HDF5 ignores trailing bytes
    report = validate(dataset)
    assert report.problems == [
        Problem("00001.hdf5", "stamp", f"the file has {size + 10:,} bytes, its marker recorded {size:,}")
    ]


def test_only_deep_compares_the_checksum_of_each_h5(dataset):
    stamp_partials(dataset)
    h5 = dataset / "00002.hdf5"
    with h5py.File(h5, "r+") as f:  # same size, other bytes
        f["root/video"][0, 0, 0, 0] ^= 0xFF
    assert validate(dataset).ok
    problems = validate(dataset, deep=True).problems
    assert (
        Problem(
            "00002.hdf5",
            "stamp",
            "the file does not have the sha256 its marker recorded (checked under run.verify_checksums)",
        )
        in problems
    )


def test_deep_recomputes_moments_from_the_h5(dataset):
    """A changed value that stays valid passes the fast checks; only deep mode finds it."""
    with h5py.File(dataset / "00001.hdf5", "r+") as f:
        f["root/tracks/frame_0002/displacements"][1, 0, 2] += 0.001
    assert validate(dataset).ok
    report = validate(dataset, deep=True)
    assert {(p.file, p.check) for p in report.problems} == {("00001.hdf5", "moments")}
    # Plain floats, not numpy reprs: "displacement mean[2]: 1.23 from the H5, 1.22 in its partials".
    match = re.fullmatch(r"displacement mean\[2\]: (\S+) from the H5, (\S+) in its partials", report.problems[0].detail)
    assert match is not None, report.problems[0].detail
    assert float(match.group(1)) > float(match.group(2))


def test_deep_moments_are_the_h5_stage_moments_bit_for_bit(clean, monkeypatch):
    """validate and the H5 stage share one moments rule: even with no tolerance they agree."""
    monkeypatch.setattr(validate_module, "DEEP_RTOL", 0.0)
    report = validate(clean, deep=True)
    assert report.ok, report.problems


def test_deep_detects_a_different_sample_count(dataset):
    with h5py.File(dataset / "00000.hdf5", "r+") as f:
        f["root/depth"][0, 8, 8] = 0.0  # one valid depth pixel fewer
    report = validate(dataset, deep=True)
    assert [(p.file, p.check) for p in report.problems] == [("00000.hdf5", "moments")]
    assert "depth:" in report.problems[0].detail


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda s: s.pop("pose_std"), "missing keys: pose_std"),
        (lambda s: s.update(depth_num_samples=s["depth_num_samples"] + 1), "depth_num_samples"),
        (lambda s: s.update(hand_uvd_disp_mean=None), "hand_uvd_disp_mean: None in the file"),
        (lambda s: s.update(extra_key=1), "keys not written by trackset: extra_key"),
        (lambda s: s.update(std_floored=["depth_std"]), "std_floored"),
    ],
    ids=["missing key", "count", "None", "extra key", "std_floored"],
)
def test_stats_yaml_edits(dataset, edit, fragment):
    path = dataset / "normalization_stats.yaml"
    stats = yaml.safe_load(path.read_text())
    edit(stats)
    path.write_text(yaml.safe_dump(stats, sort_keys=False))
    report = validate(dataset)
    # dataset.json names the statistics file it was written with: that is no longer this one.
    assert [(p.file, p.check) for p in report.problems] == [
        ("normalization_stats.yaml", "stats"),
        ("dataset.json", "record"),
    ]
    assert fragment in report.problems[0].detail
    assert "statistics_sha256" in report.problems[1].detail


def test_stats_yaml_missing(dataset):
    (dataset / "normalization_stats.yaml").unlink()
    assert validate(dataset).problems == [Problem("normalization_stats.yaml", "stats", "missing")]


def test_many_bad_windows_make_one_line(dataset):
    with h5py.File(dataset / "00000.hdf5", "r+") as f:
        for start in range(T - L + 1):
            f[f"root/tracks/frame_{start:04d}/query_coords"][0, 1] = -0.5
    report = validate(dataset)
    lines = [p.detail for p in report.problems]
    assert len(lines) == 1 and f"in {T - L + 1} windows" in lines[0] and "frame_0000" in lines[0]


def test_not_a_directory_and_empty_directory(tmp_path):
    assert validate(tmp_path / "absent").problems == [Problem(str(tmp_path / "absent"), "open", "not a directory")]
    report = validate(tmp_path)
    assert {(p.file, p.check) for p in report.problems} == {
        (".", "layout"),
        ("normalization_stats.yaml", "stats"),
        ("dataset.json", "record"),
    }


def edit_record(root: Path, **changes: object) -> None:
    path = root / "dataset.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_record_names_the_version_of_these_partials(dataset):
    edit_record(dataset, dataset_version="0" * 64)
    report = validate(dataset)
    assert [(p.file, p.check) for p in report.problems] == [("dataset.json", "record")]
    assert report.problems[0].detail.startswith(f"dataset_version {'0' * 64}, but the 3 partials give ")


def test_a_rebuilt_video_changes_the_version_the_record_must_name(dataset):
    """New partials (a video rebuilt with other settings) give another version: a record left
    from before names the old one, and the file's provenance no longer matches its partials."""
    partials = VideoPartials.read(dataset / "partials" / "00001.json")
    VideoPartials(**{**partials.__dict__, "fingerprint": "rebuilt"}).write(dataset / "partials" / "00001.json")
    report = validate(dataset)
    assert {(p.file, p.check) for p in report.problems} == {("00001.hdf5", "provenance"), ("dataset.json", "record")}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"videos": 4}, "videos: 4, but there are 3 partials"),
        ({"runs_total": 0}, "1 runs listed of 0"),
        ({"dataset_version": 7}, "DatasetRecord.dataset_version: 7 is not a str"),
        ({"runs": [{"flow_run_id": "x"}]}, "RunEntry: missing"),
    ],
    ids=["videos", "runs total", "type", "run entry"],
)
def test_record_edits_are_named(dataset, changes, fragment):
    edit_record(dataset, **changes)
    report = validate(dataset)
    assert [(p.file, p.check) for p in report.problems] == [("dataset.json", "record")]
    assert fragment in report.problems[0].detail


def test_a_record_listing_more_runs_than_it_keeps_is_reported(dataset):
    run = json.loads((dataset / "dataset.json").read_text())["runs"][0]
    edit_record(dataset, runs=[run] * (RUNS_KEPT + 1), runs_total=RUNS_KEPT + 1)
    assert [p.detail for p in validate(dataset).problems] == [
        f"{RUNS_KEPT + 1} runs listed of {RUNS_KEPT + 1}: at most {RUNS_KEPT}, and no more than the total"
    ]


def test_a_missing_record_is_reported(dataset):
    (dataset / "dataset.json").unlink()
    assert [(p.file, p.check) for p in validate(dataset).problems] == [("dataset.json", "record")]
