"""Check a built dataset directory against FORMATS.md (``trackset validate <dataset_dir>``).

Per ``<vid>.hdf5``: the file opens; the datasets of the layout exist with their shapes and
dtypes; ``frame_{t:04d}`` groups exist only where a full window starts (``t <= T - L``);
hand keys come in complete sets of four; every value is finite; u, v lie in [0, 1] and
depths in ``[depth_min_m, depth_max_m]``; step 0 of displacements is exactly zero and of
poses the identity; the position of every kept point at every step is in the image, and so
is every kept wrist's (FORMATS.md's in-image rule, unless ``h5.hands_in_image`` is off).
Each file's provenance attributes are there and agree with the file's name and with its
partials' fingerprint (:func:`trackset.stages.provenance.attribute_problems`). Per dataset:
every H5 has its statistics partials and vice versa, and has the size they recorded when it
was written (with ``deep=True`` also the sha256; partials of versions that recorded neither
are not checked for it), ``normalization_stats.yaml`` has exactly the keys trackset writes
(FORMATS.md's, less the mean and std of a statistic without samples) and equals the
statistics merged from the partials, and ``dataset.json``'s version, video count and
statistics digest are those of the partials and the YAML (:mod:`trackset.dataset.record`).
A 2D dataset (``track_type: 2d``, recorded by the directory itself:
:func:`trackset.dataset.track_type.recorded_track_type`) is checked against its own layout: no
depth, intrinsics, poses or hands, ``(u, v)`` points, the 2D statistics keys. With
``deep=True`` each video's moments are also recomputed from its H5 and compared with its
partials (slow: it reads every value of every file).

Nothing here raises on a bad dataset: every finding is a :class:`Problem` that names the
file, so one corrupt file never hides the others. Files are read one at a time, and within a
file ``root/depth`` in frame chunks, so memory stays flat in the number and length of videos;
the value checks run vectorised over all windows of a file at once.

Examples:
    >>> report = ValidationReport(Path("dataset"))
    >>> report.checked("00000.hdf5", "14 frames, 5 windows")
    >>> report.add("00001.hdf5", "finite", "root/depth: 3 non-finite values")
    >>> report.ok
    False
    >>> for row in report.rows():
    ...     print(row)
    ('00000.hdf5', 'ok', '14 frames, 5 windows')
    ('00001.hdf5', 'FAIL', 'finite: root/depth: 3 non-finite values')
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml
from numpy.typing import ArrayLike, DTypeLike

from trackset.config.settings import H5Settings
from trackset.dataset.record import RUNS_KEPT, DatasetRecord, dataset_version
from trackset.dataset.track_type import recorded_track_type
from trackset.domain import is_video_id, video_id_order
from trackset.formats import h5_schema as schema
from trackset.formats.h5_schema import HAND_SIDES, root_path
from trackset.formats.layout import DatasetLayout
from trackset.formats.markers import file_damage
from trackset.formats.statistics import (
    STATISTIC_DIMS,
    Moments,
    VideoPartials,
    aggregate,
    normalization_stats,
    per_video_moments,
    per_video_moments_2d,
)
from trackset.stages.provenance import attribute_problems

STATS_RTOL = 1e-12
"""Relative tolerance between the YAML and the merged partials (DECISIONS.md, "Determinism")."""

DEEP_RTOL = 1e-9
"""Tolerance of recomputed moments, relative to each component's ``|mean| + std``: the same
float32 values summed in another order differ in the last bits only, an edited value far more."""

POSE_ATOL = 1e-6
"""Step 0 of poses is ``E_s @ inv(E_s)`` in float64, the identity up to rounding, not exactly."""

# Paths named in problems.
_VIDEO = root_path(schema.VIDEO)
_DEPTH = root_path(schema.DEPTH)
_INTRINSICS = root_path(schema.INTRINSICS)
_TRACKS = root_path(schema.TRACKS)
_NUM_FRAMES = root_path(schema.NUM_FRAMES)
_NUM_TRACK_TS = root_path(schema.NUM_TRACK_TS)
_IDENTITY_9D = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=np.float64)
_IDENTITY_6D = _IDENTITY_9D[:6]
_MAX_NAMED = 5  # windows named in one problem line; the rest are counted
_F32_EPS = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class Problem:
    """One finding: the file (relative to the dataset directory), the check and what is wrong."""

    file: str
    check: str
    detail: str


@dataclass
class ValidationReport:
    """Every file checked and every problem found, in the order they were checked.

    Attributes:
        dataset_dir: the directory validated.
        problems: every finding; empty when the dataset is valid.
        summaries: a one-line description of each file checked, for the rows of valid files.
    """

    dataset_dir: Path
    problems: list[Problem] = field(default_factory=list)
    summaries: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add(self, file: str, check: str, detail: str) -> None:
        """Record a problem of ``file``."""
        self.problems.append(Problem(file, check, detail))

    def checked(self, file: str, summary: str) -> None:
        """Record that ``file`` was checked, with a summary shown when it has no problem."""
        self.summaries[file] = summary

    def rows(self) -> list[tuple[str, str, str]]:
        """``(file, status, detail)`` rows for a table: one per problem (status ``FAIL``), and
        one per file without problems (status ``ok``, its summary), in the order checked."""
        by_file: dict[str, list[Problem]] = {}
        for problem in self.problems:
            by_file.setdefault(problem.file, []).append(problem)
        files = list(self.summaries) + [f for f in by_file if f not in self.summaries]
        rows: list[tuple[str, str, str]] = []
        for file in files:
            if file in by_file:
                rows.extend((file, "FAIL", f"{p.check}: {p.detail}") for p in by_file[file])
            else:
                rows.append((file, "ok", self.summaries[file]))
        return rows


def validate_dataset(dataset_dir: Path, h5: H5Settings, std_floor: float, deep: bool = False) -> ValidationReport:
    """Check every H5 file, the partials and ``normalization_stats.yaml`` of a dataset directory.

    Args:
        dataset_dir: the dataset directory (``paths.dataset_dir``).
        h5: the H5 settings the dataset was built with (image size, depth clip range).
        std_floor: the ``statistics.std_floor`` the statistics were written with.
        deep: also recompute each video's moments from its H5 and compare them with its partials.

    Returns:
        The report; ``report.ok`` is False when anything is wrong. Never raises on bad data.
    """
    dataset_dir = Path(dataset_dir)
    report = ValidationReport(dataset_dir)
    if not dataset_dir.is_dir():
        report.add(str(dataset_dir), "open", "not a directory")
        return report
    layout = DatasetLayout(dataset_dir)
    recorded = recorded_track_type(layout)
    track_type = recorded[0] if recorded is not None else h5.track_type

    video_ids: list[str] = []
    for path in sorted(dataset_dir.glob("*.hdf5")):
        if is_video_id(path.stem):
            video_ids.append(path.stem)
        else:
            report.add(
                path.name, "name", "an H5 file must be named <video id>.hdf5 (5 or more digits, zero-padded to 5)"
            )
    video_ids.sort(key=video_id_order)
    if not video_ids:
        report.add(".", "layout", "no <vid>.hdf5 files in the dataset directory")

    partial_ids = layout.partial_ids()
    partials, unreadable = _read_partials(layout, partial_ids, report)

    for video_id in video_ids:
        name = layout.h5(video_id).name
        fingerprint = partials[video_id].fingerprint if video_id in partials else None
        moments = _check_h5(layout.h5(video_id), name, h5, deep, report, track_type, fingerprint)
        if video_id not in partial_ids:
            report.add(name, "partials", f"no partials/{video_id}.json: the video is missing from the statistics")
            continue
        if video_id in partials and partials[video_id].h5 is not None:
            damage = file_damage(layout.h5(video_id), partials[video_id].h5, verify=deep)
            if damage is not None:
                report.add(name, "stamp", damage.replace(str(layout.h5(video_id)), "the file"))
        if deep and moments is not None and video_id in partials:
            _compare_moments(name, moments, partials[video_id], report)
    for video_id in sorted(set(partial_ids) - set(video_ids), key=video_id_order):
        report.add(
            _relative(layout.partials(video_id), dataset_dir), "partials", f"no {video_id}.hdf5 for these partials"
        )

    _check_stats_yaml(layout, partials, unreadable, std_floor, report, track_type)
    _check_dataset_json(layout, partials, unreadable, report)
    return report


def _read_partials(
    layout: DatasetLayout, partial_ids: list[str], report: ValidationReport
) -> tuple[dict[str, VideoPartials], list[str]]:
    partials: dict[str, VideoPartials] = {}
    unreadable: list[str] = []
    for video_id in partial_ids:
        path = layout.partials(video_id)
        name = _relative(path, layout.root)
        try:
            item = VideoPartials.read(path)
        except (ValueError, OSError) as exc:
            unreadable.append(video_id)
            report.add(name, "partials", _first_line(exc))
            continue
        if item.video_id != video_id:
            unreadable.append(video_id)
            report.add(name, "partials", f"holds video_id {item.video_id!r}, not {video_id!r}")
            continue
        partials[video_id] = item
    return partials, unreadable


# ----------------------------------------------------------------------------- one H5 file


def _check_h5(
    path: Path,
    name: str,
    h5: H5Settings,
    deep: bool,
    report: ValidationReport,
    track_type: str = "3d",
    fingerprint: str | None = None,
) -> dict[str, Moments] | None:
    """Check one H5 file into ``report``; return its recomputed moments when ``deep`` and valid.

    ``fingerprint`` is its partials' (None when they cannot be read): the file's provenance
    must name the same.
    """
    checker = _H5Checker(name, h5, deep, track_type)
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        report.add(name, "open", f"cannot open: {_first_line(exc)}")
        report.checked(name, "")  # keeps the file's row in checking order
        return None
    try:
        with f:
            for detail in attribute_problems(f.attrs, path.stem, fingerprint):
                checker.add("provenance", detail)
            checker.run(f)
    except Exception as exc:
        checker.add("read", f"cannot read: {type(exc).__name__}: {_first_line(exc)}")
    report.problems.extend(checker.problems)
    report.checked(name, checker.summary())
    if deep and not checker.problems:
        return checker.moments
    return None


@dataclass
class _Windows:
    """The structurally valid windows of a file, stacked for vectorised value checks."""

    names: list[str]
    query_coords: list[np.ndarray]  # per window (N_w,3)
    displacements: list[np.ndarray]  # per window (L,N_w,3)
    poses: list[np.ndarray]  # per window (L,9)
    hands: dict[str, dict[str, list[np.ndarray]]]  # side -> key suffix -> per hand window
    hand_names: dict[str, list[str]]  # side -> names of the windows holding that hand


class _H5Checker:
    """Checks of one open H5 file, collecting problems instead of raising."""

    def __init__(self, name: str, h5: H5Settings, deep: bool, track_type: str = schema.TRACK_TYPE_3D) -> None:
        self.name = name
        self.track_type = track_type
        self.three_d = track_type == schema.TRACK_TYPE_3D
        self.size = h5.target_size
        # Clipping happens in float32, so the bounds are the float32 roundings of the settings,
        # widened by one ulp to accept a clip done in float64 and rounded afterwards.
        self.depth_lo = float(np.nextafter(np.float32(h5.depth_min_m), np.float32(0)))
        self.depth_hi = float(np.nextafter(np.float32(h5.depth_max_m), np.float32(np.inf)))
        self.clip_hi = float(np.float32(h5.depth_max_m))
        self.depth_min, self.depth_max = h5.depth_min_m, h5.depth_max_m
        self.hands_in_image = h5.hands_in_image
        self.deep = deep
        self.problems: list[Problem] = []
        self.moments: dict[str, Moments] | None = None
        self.num_frames: int | None = None
        self.window_count = 0
        self.track_count = 0
        self.hand_windows: dict[str, int] = {}
        self.depth_moments = Moments.empty(1)
        # Window problems are grouped by (check, dataset, kind) so 181 bad windows make one line.
        self._window_issues: dict[tuple[str, str, str], tuple[str, list[str]]] = {}

    def add(self, check: str, detail: str) -> None:
        self.problems.append(Problem(self.name, check, detail))

    def summary(self) -> str:
        hands = ", ".join(f"{side} hand in {n}" for side, n in self.hand_windows.items() if n) or "no hands"
        frames = "?" if self.num_frames is None else str(self.num_frames)
        return f"{frames} frames, {self.window_count} windows, {self.track_count} tracks, {hands}"

    def window_issue(self, check: str, dataset: str, detail: str, window: str, kind: str = "") -> None:
        """A problem of ``dataset`` in one window; the first window's detail is the example.

        Issues with the same ``(check, dataset, kind)`` are reported as one problem.
        """
        key = (check, dataset, kind)
        if key not in self._window_issues:
            self._window_issues[key] = (detail, [])
        self._window_issues[key][1].append(window)

    def flush_window_issues(self) -> None:
        for (check, dataset, _), (detail, windows) in self._window_issues.items():
            if len(windows) == 1:
                self.add(check, f"{_TRACKS}/{windows[0]}/{dataset}: {detail}")
            else:
                named = ", ".join(windows[:_MAX_NAMED]) + (", ..." if len(windows) > _MAX_NAMED else "")
                self.add(check, f"{dataset} in {len(windows)} windows ({named}); {windows[0]}: {detail}")
        self._window_issues.clear()

    # -- structure -------------------------------------------------------------------------

    def dataset(self, root: h5py.Group, key: str, required: bool = True) -> h5py.Dataset | None:
        item = root.get(key)
        if item is None:
            if required:
                self.add("layout", f"{root_path(key)}: missing")
            return None
        if not isinstance(item, h5py.Dataset):
            self.add("layout", f"{root_path(key)}: a group, expected a dataset")
            return None
        return item

    def expect(self, ds: h5py.Dataset, path: str, shape: tuple[int | None, ...], dtype: DTypeLike) -> bool:
        """Report a shape or dtype mismatch; ``None`` in ``shape`` matches any length."""
        ok = True
        if len(ds.shape) != len(shape) or any(e is not None and a != e for a, e in zip(ds.shape, shape, strict=True)):
            wanted = (
                "(" + ", ".join("*" if e is None else str(e) for e in shape) + ("," if len(shape) == 1 else "") + ")"
            )
            self.add("shape", f"{path}: shape {ds.shape}, expected {wanted}")
            ok = False
        if ds.dtype != np.dtype(dtype):
            self.add("dtype", f"{path}: dtype {ds.dtype}, expected {np.dtype(dtype)}")
            ok = False
        return ok

    def scalar_int(self, root: h5py.Group, key: str) -> int | None:
        ds = self.dataset(root, key)
        if ds is None:
            return None
        if ds.shape != () or ds.dtype.kind not in "iu":
            self.add("dtype", f"{root_path(key)}: {ds.dtype} of shape {ds.shape}, expected an integer scalar")
            return None
        return int(ds[()])

    def run(self, f: h5py.File) -> None:
        root = f.get(schema.ROOT)
        if not isinstance(root, h5py.Group):
            self.add("layout", f"{schema.ROOT}: missing group")
            return
        allowed = schema.ROOT_KEYS if self.three_d else schema.ROOT_KEYS_2D
        for key in sorted(set(root) - allowed):
            self.add("layout", f"{root_path(key)}: not part of the FORMATS.md {self.track_type} layout")
        size = self.size

        frames = None
        video = self.dataset(root, schema.VIDEO)
        if video is not None:
            self.expect(video, _VIDEO, (None, 3, size, size), np.uint8)
            frames = video.shape[0] if video.ndim == 4 else None
        num_frames = self.scalar_int(root, schema.NUM_FRAMES)
        if num_frames is not None and frames is not None and num_frames != frames:
            self.add("value", f"{_NUM_FRAMES}: {num_frames}, but {_VIDEO} has {frames} frames")
        frames = frames if frames is not None else num_frames
        self.num_frames = frames

        depth = self.dataset(root, schema.DEPTH) if self.three_d else None
        if depth is not None and self.expect(depth, _DEPTH, (frames, size, size), np.float32):
            self.check_depth(depth)

        intrinsics = self.dataset(root, schema.INTRINSICS) if self.three_d else None
        if intrinsics is not None and self.expect(intrinsics, _INTRINSICS, (3, 3), np.float32):
            k = intrinsics[()].astype(np.float64)
            if not np.isfinite(k).all():
                self.add("finite", f"{_INTRINSICS}: non-finite values")
            elif not (k[0, 0] > 0 and k[1, 1] > 0 and k[2].tolist() == [0.0, 0.0, 1.0]):
                self.add("range", f"{_INTRINSICS}: not a camera matrix (fx, fy > 0, last row 0 0 1): {k.tolist()}")

        length = self.scalar_int(root, schema.NUM_TRACK_TS)
        if length is not None and length < 1:
            self.add("value", f"{_NUM_TRACK_TS}: {length}, expected a positive window length")
            length = None

        track_type = self.dataset(root, schema.TRACK_TYPE)
        if track_type is not None:
            value = track_type[()] if track_type.shape == () else None
            value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if value != self.track_type:
                self.add(
                    "value",
                    f"{root_path(schema.TRACK_TYPE)}: {value!r}, expected the dataset's {self.track_type!r}",
                )
        text = self.dataset(root, schema.TEXT, required=False)
        if text is not None and (text.shape != () or text.dtype.kind not in "OSU"):
            self.add("dtype", f"{root_path(schema.TEXT)}: {text.dtype} of shape {text.shape}, expected a string scalar")

        tracks = root.get(schema.TRACKS)
        if tracks is None:
            self.add("layout", f"{_TRACKS}: missing group")
        elif not isinstance(tracks, h5py.Group):
            self.add("layout", f"{_TRACKS}: a dataset, expected a group")
        elif length is None:
            self.add("layout", f"{_TRACKS}: not checked, {_NUM_TRACK_TS} is unusable")
        else:
            windows = self.collect_windows(tracks, frames, length)
            self.flush_window_issues()
            self.check_window_values(windows)
            self.flush_window_issues()

    def check_depth(self, depth: h5py.Dataset) -> None:
        """Finite, and every non-zero value within the clip range; read in frame chunks."""
        nonfinite = out_of_range = 0
        first_bad: int | None = None
        moments = Moments.empty(1)
        for start in range(0, depth.shape[0], schema.DEPTH_CHUNK_FRAMES):
            chunk = depth[start : start + schema.DEPTH_CHUNK_FRAMES]
            finite = np.isfinite(chunk)
            valid = finite & (chunk != 0)
            bad = valid & ((chunk < self.depth_lo) | (chunk > self.depth_hi))
            n_nonfinite, n_bad = int((~finite).sum()), int(bad.sum())
            if (n_nonfinite or n_bad) and first_bad is None:
                first_bad = start + int(np.flatnonzero((~finite | bad).any(axis=(1, 2)))[0])
            nonfinite += n_nonfinite
            out_of_range += n_bad
            if self.deep and not (nonfinite or out_of_range):
                # The same chunking and order as the H5 stage, so the moments agree bitwise.
                moments = moments.merge(Moments.of(chunk[chunk > 0].reshape(-1, 1)))
        if nonfinite:
            self.add("finite", f"{_DEPTH}: {nonfinite} non-finite values (first in frame {first_bad})")
        if out_of_range:
            self.add(
                "range",
                f"{_DEPTH}: {out_of_range} non-zero values outside [{self.depth_min}, {self.depth_max}] m "
                f"(first in frame {first_bad})",
            )
        self.depth_moments = moments

    def collect_windows(self, tracks: h5py.Group, frames: int | None, length: int) -> _Windows:
        """Check names, keys, shapes and dtypes of every window group and read the valid ones."""
        windows = _Windows([], [], [], [], {side: {k: [] for k in schema.HAND_SHAPES} for side in HAND_SIDES}, {})
        last_start = None if frames is None else frames - length
        named: list[tuple[int, str]] = []
        beyond: list[str] = []
        for key in tracks:
            start = schema.parse_window_group(key)
            if start is None:
                self.add("windows", f"{_TRACKS}/{key}: not a {schema.WINDOW_GROUP_FORMAT} group name")
                continue
            if last_start is not None and start > last_start:
                beyond.append(key)
                continue
            named.append((start, key))
        if beyond:
            listed = ", ".join(beyond[:_MAX_NAMED]) + (", ..." if len(beyond) > _MAX_NAMED else "")
            self.add(
                "windows",
                f"{_TRACKS}: {len(beyond)} window group(s) start after T-L = {frames}-{length} = {last_start}, "
                f"where no full window fits: {listed}",
            )
        for _, key in sorted(named):
            group = tracks[key]
            if not isinstance(group, h5py.Group):
                self.add("layout", f"{_TRACKS}/{key}: a dataset, expected a group")
                continue
            self.read_window(group, key, length, windows)
        self.window_count = len(named)
        self.track_count = sum(q.shape[0] for q in windows.query_coords)
        self.hand_windows = {side: len(names) for side, names in windows.hand_names.items()}
        return windows

    def read_window(self, group: h5py.Group, key: str, length: int, windows: _Windows) -> None:
        # One listing of the group's names: every h5py lookup costs tens of microseconds,
        # and a long video has hundreds of windows.
        present = set(group)
        shapes = schema.window_shapes(self.track_type)
        for extra in sorted(present - (schema.WINDOW_KEYS if self.three_d else set(shapes))):
            self.window_issue("layout", extra, f"not part of the FORMATS.md {self.track_type} layout", key)
        sizes = {schema.STEPS: length}  # POINTS is bound by the first dataset that has it
        arrays: dict[str, np.ndarray] = {}
        for name, shape in shapes.items():
            item = group[name] if name in present else None
            if not isinstance(item, h5py.Dataset):
                self.window_issue("layout", name, "missing" if item is None else "a group, expected a dataset", key)
                continue
            if self.window_dataset_ok(item, name, shape, sizes, key):
                arrays[name] = item[()]
                sizes.update(schema.bound_sizes(shape, item.shape, sizes))
        if len(arrays) == len(shapes):
            windows.names.append(key)
            windows.query_coords.append(arrays[schema.QUERY_COORDS])
            windows.displacements.append(arrays[schema.DISPLACEMENTS])
            if self.three_d:
                windows.poses.append(arrays[schema.POSES])
        for side in HAND_SIDES if self.three_d else ():
            names = {suffix: schema.hand_key(side, suffix) for suffix in schema.HAND_SHAPES}
            missing = [name for name in names.values() if name not in present]
            if len(missing) == len(names):
                continue  # this hand is not valid at every step of the window
            if missing:
                self.window_issue(
                    "hands", schema.hand_key(side, "*"), f"incomplete set, missing {', '.join(missing)}", key
                )
                continue
            hand: dict[str, np.ndarray] = {}
            for suffix, shape in schema.HAND_SHAPES.items():
                item = group[names[suffix]]
                if not isinstance(item, h5py.Dataset):
                    self.window_issue("layout", names[suffix], "a group, expected a dataset", key)
                    continue
                wanted = schema.resolve_shape(shape, sizes)
                if item.shape != wanted:
                    self.window_issue("shape", names[suffix], f"shape {item.shape}, expected {wanted}", key)
                elif item.dtype != np.float32:
                    self.window_issue("dtype", names[suffix], f"dtype {item.dtype}, expected float32", key)
                else:
                    hand[suffix] = item[()]
            if len(hand) == len(schema.HAND_SHAPES):
                windows.hand_names.setdefault(side, []).append(key)
                for suffix, value in hand.items():
                    windows.hands[side][suffix].append(value)

    def window_dataset_ok(
        self, item: h5py.Dataset, name: str, shape: tuple[int | str, ...], sizes: Mapping[str, int], key: str
    ) -> bool:
        if not schema.shape_matches(item.shape, shape, sizes):
            self.window_issue("shape", name, f"shape {item.shape}, expected {schema.describe_shape(shape, sizes)}", key)
            return False
        if item.dtype != np.float32:
            self.window_issue("dtype", name, f"dtype {item.dtype}, expected float32", key)
            return False
        return True

    # -- values, vectorised over every window of the file ---------------------------------

    def check_window_values(self, windows: _Windows) -> None:
        names = windows.names
        if names:
            self.check_points(windows)
        if names and self.three_d:
            poses = np.stack(windows.poses).astype(np.float64)  # (W,L,9)
            nonfinite = (~np.isfinite(poses)).sum(axis=(1, 2))
            self.per_window("finite", schema.POSES, nonfinite, names, "non-finite values: {}")
            with np.errstate(invalid="ignore"):
                off = np.abs(poses[:, 0] - _IDENTITY_9D).max(axis=1)
            self.per_window(
                "step0",
                schema.POSES,
                (off > POSE_ATOL) & (nonfinite == 0),
                names,
                "step 0 is not the identity [1,0,0,0,1,0,0,0,0]",
            )
        hands: dict[str, dict[str, np.ndarray]] = {}
        for side, hand_names in windows.hand_names.items():
            hands[side] = {k: np.stack(v).astype(np.float64) for k, v in windows.hands[side].items()}
            self.check_hand(side, hands[side], hand_names)
        if self.deep:
            self.moments = self.recompute_moments(windows, hands)

    def per_window(self, check: str, dataset: str, counts: np.ndarray, names: list[str], detail: str) -> None:
        for w in np.flatnonzero(counts):
            self.window_issue(check, dataset, detail.format(int(counts[w])), names[w], kind=detail)

    def check_points(self, windows: _Windows) -> None:
        names = windows.names
        counts = np.array([q.shape[0] for q in windows.query_coords])
        owner = np.repeat(np.arange(len(names)), counts)  # window of each point
        query = np.concatenate(windows.query_coords).astype(np.float64)  # (M,3), or (M,2) in 2D
        disp = np.concatenate(windows.displacements, axis=1).astype(np.float64)  # (L,M,3), or (L,M,2)
        if not self.three_d:  # no depth: the depth rules below see a depth that passes them
            query = np.concatenate([query, np.full((len(query), 1), self.depth_min)], axis=1)
            disp = np.concatenate([disp, np.zeros((*disp.shape[:2], 1))], axis=2)

        def by_window(bad_points: ArrayLike) -> np.ndarray:
            return np.bincount(owner, weights=bad_points, minlength=len(names)).astype(np.int64)

        q_finite = np.isfinite(query).all(axis=1)
        d_finite = np.isfinite(disp).all(axis=(0, 2))
        nonfinite = "points with non-finite values: {}"
        self.per_window("finite", schema.QUERY_COORDS, by_window(~q_finite), names, nonfinite)
        self.per_window("finite", schema.DISPLACEMENTS, by_window(~d_finite), names, nonfinite)
        with np.errstate(invalid="ignore"):
            uv_bad = q_finite & ((query[:, :2] < 0) | (query[:, :2] > 1)).any(axis=1)
            d_bad = q_finite & ((query[:, 2] < self.depth_lo) | (query[:, 2] > self.depth_hi))
            step0_bad = d_finite & (disp[0] != 0).any(axis=1)
            # Positions q + disp are rebuilt from float32 values, each rounded once: allow a
            # few ulps of the operands. Depth is only bounded where the query was not clipped
            # from above, since displacements use unclipped depth (FORMATS.md conventions).
            pos = query[None] + disp
            tol = 4 * _F32_EPS * (np.abs(query[None]) + np.abs(disp))
            both = q_finite & d_finite
            # A query already out of range is reported once, not again for every step.
            pos_uv_bad = (
                both & ~uv_bad & ((pos[..., :2] < -tol[..., :2]) | (pos[..., :2] > 1 + tol[..., :2])).any(axis=(0, 2))
            )
            unclipped = query[:, 2] < self.clip_hi
            pos_d_bad = both & ~d_bad & unclipped & (pos[..., 2] <= -tol[..., 2]).any(axis=0)
        self.per_window("range", schema.QUERY_COORDS, by_window(uv_bad), names, "points with u or v outside [0, 1]: {}")
        self.per_window(
            "range",
            schema.QUERY_COORDS,
            by_window(d_bad),
            names,
            f"points with depth outside [{self.depth_min}, {self.depth_max}] m: {{}}",
        )
        self.per_window("step0", schema.DISPLACEMENTS, by_window(step0_bad), names, "points with a non-zero step 0: {}")
        self.per_window(
            "range",
            schema.DISPLACEMENTS,
            by_window(pos_uv_bad),
            names,
            "points leaving the image (u or v of query + displacement outside [0, 1]): {}",
        )
        self.per_window(
            "range",
            schema.DISPLACEMENTS,
            by_window(pos_d_bad),
            names,
            "points reaching depth <= 0 (query + displacement): {}",
        )

    def check_hand(self, side: str, hand: dict[str, np.ndarray], names: list[str]) -> None:
        finite = {k: np.isfinite(v).reshape(len(v), -1).all(axis=1) for k, v in hand.items()}
        for suffix, ok in finite.items():
            self.per_window("finite", schema.hand_key(side, suffix), (~ok).astype(int), names, "non-finite values")
        uvd, rot = schema.HAND_UVD_DISPLACEMENTS, schema.HAND_ROT_DISPLACEMENTS
        with np.errstate(invalid="ignore"):
            uvd_bad = finite[uvd] & (hand[uvd][:, 0] != 0).any(axis=1)
            rot_bad = finite[rot] & (np.abs(hand[rot][:, 0] - _IDENTITY_6D) > POSE_ATOL).any(axis=1)
        self.per_window("step0", schema.hand_key(side, uvd), uvd_bad.astype(int), names, "step 0 is not zero")
        if self.hands_in_image:
            query, disp = hand[schema.HAND_QUERY_UVD][:, None], hand[uvd]  # (V,1,3), (V,L,3)
            pos = query + disp
            tol = 4 * _F32_EPS * (np.abs(query) + np.abs(disp))  # as for points: operands rounded once
            with np.errstate(invalid="ignore"):
                outside = (pos[..., :2] < -tol[..., :2]) | (pos[..., :2] > 1 + tol[..., :2])
                behind = pos[..., 2] <= -tol[..., 2]
            leaves = finite[schema.HAND_QUERY_UVD] & finite[uvd] & (outside.any(axis=2) | behind).any(axis=1)
            self.per_window(
                "range",
                schema.hand_key(side, uvd),
                leaves.astype(int),
                names,
                "the wrist leaves the image (u or v of query + displacement outside [0, 1], or depth <= 0)",
            )
        self.per_window(
            "step0",
            schema.hand_key(side, rot),
            rot_bad.astype(int),
            names,
            "step 0 is not the identity [1,0,0,0,1,0]",
        )

    def recompute_moments(
        self, windows: _Windows, hands: dict[str, dict[str, np.ndarray]]
    ) -> dict[str, Moments] | None:
        """The H5 stage's moments (:func:`~trackset.formats.statistics.per_video_moments`) of the
        values read, hands in :data:`~trackset.formats.h5_schema.HAND_SIDES` order as the stage writes
        them. Float64 copies of float32 values give the same moments bit for bit."""
        if self.problems or self._window_issues:
            return None  # values that failed a check make no comparable moments
        if not self.three_d:
            return per_video_moments_2d(windows.displacements)
        sides = [side for side in HAND_SIDES if side in hands]
        return per_video_moments(
            self.depth_moments,
            windows.query_coords,
            windows.displacements,
            windows.poses,
            [hands[side][schema.HAND_UVD_DISPLACEMENTS] for side in sides],
            [hands[side][schema.HAND_ROT_DISPLACEMENTS] for side in sides],
        )


def _compare_moments(
    name: str, moments: Mapping[str, Moments], partials: VideoPartials, report: ValidationReport
) -> None:
    """Recomputed moments against the stored partials: counts exactly, mean and variance to
    :data:`DEEP_RTOL` of each component's ``|mean| + std``."""
    for stat in STATISTIC_DIMS:
        got, stored = moments[stat], getattr(partials, stat)
        if got.count != stored.count:
            report.add(name, "moments", f"{stat}: {got.count} samples in the H5, {stored.count} in its partials")
            continue
        if got.count == 0:
            continue
        scale = np.abs(stored.mean) + stored.std
        mean_off = np.abs(got.mean - stored.mean) > DEEP_RTOL * scale
        var_off = np.abs(got.variance - stored.variance) > DEEP_RTOL * np.square(scale)
        for label, off, values, ref in (
            ("mean", mean_off, got.mean, stored.mean),
            ("variance", var_off, got.variance, stored.variance),
        ):
            if off.any():
                i = int(np.flatnonzero(off)[0])
                got_value, stored_value = float(values[i]), float(ref[i])
                report.add(
                    name, "moments", f"{stat} {label}[{i}]: {got_value!r} from the H5, {stored_value!r} in its partials"
                )


# ----------------------------------------------------------------------------- statistics YAML


def _check_stats_yaml(
    layout: DatasetLayout,
    partials: Mapping[str, VideoPartials],
    unreadable: list[str],
    std_floor: float,
    report: ValidationReport,
    track_type: str = "3d",
) -> None:
    name = layout.stats_yaml.name
    if not layout.stats_yaml.is_file():
        report.add(name, "stats", "missing")
        return
    try:
        stats = yaml.safe_load(layout.stats_yaml.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        report.add(name, "stats", f"cannot read: {_first_line(exc)}")
        return
    if not isinstance(stats, dict):
        report.add(name, "stats", f"expected a mapping of keys, got {type(stats).__name__}")
        return
    if unreadable:
        report.add(name, "stats", f"not compared: partials of {', '.join(unreadable)} are unreadable")
        return
    try:
        expected = normalization_stats(aggregate(partials.values(), track_type), std_floor, track_type)
    except ValueError as exc:
        report.add(name, "stats", f"not compared: the partials do not merge: {_first_line(exc)}")
        return
    missing = [key for key in expected if key not in stats]
    if missing:
        report.add(name, "stats", f"missing keys: {', '.join(missing)}")
    extra = [key for key in stats if key not in expected]
    if extra:
        report.add(name, "stats", f"keys not written by trackset: {', '.join(map(str, extra))}")
    # One line for all differing values: a stale YAML usually differs everywhere.
    mismatches = [compare_value(key, stats[key], want) for key, want in expected.items() if key in stats]
    mismatches = [m for m in mismatches if m is not None]
    if mismatches:
        more = f"; {len(mismatches) - 1} more keys differ" if len(mismatches) > 1 else ""
        report.add(name, "stats", f"{mismatches[0]} (merged from {len(partials)} partials){more}")
    report.checked(name, f"matches the statistics merged from {len(partials)} partials")


def _check_dataset_json(
    layout: DatasetLayout, partials: Mapping[str, VideoPartials], unreadable: list[str], report: ValidationReport
) -> None:
    """``dataset.json`` against the partials (its version, video count) and the statistics YAML."""
    name = layout.dataset_json.name
    if not layout.dataset_json.is_file():
        report.add(name, "record", "missing: every run writes it at its end (the dataset's version and its runs)")
        return
    try:
        record = DatasetRecord.from_json(layout.dataset_json.read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        report.add(name, "record", f"cannot read: {_first_line(exc)}")
        return
    if unreadable:
        report.add(name, "record", f"not compared: partials of {', '.join(unreadable)} are unreadable")
    else:
        version = dataset_version((video_id, item.fingerprint) for video_id, item in partials.items())
        if record.dataset_version != version:
            report.add(
                name,
                "record",
                f"dataset_version {record.dataset_version}, but the {len(partials)} partials give {version}",
            )
        if record.videos != len(partials):
            report.add(name, "record", f"videos: {record.videos}, but there are {len(partials)} partials")
    if layout.stats_yaml.is_file():
        digest = hashlib.sha256(layout.stats_yaml.read_bytes()).hexdigest()
        if record.statistics_sha256 != digest:
            report.add(
                name,
                "record",
                f"statistics_sha256 {record.statistics_sha256}, but {layout.stats_yaml.name} is {digest}",
            )
    if len(record.runs) > RUNS_KEPT or record.runs_total < len(record.runs):
        report.add(
            name,
            "record",
            f"{len(record.runs)} runs listed of {record.runs_total}: at most {RUNS_KEPT}, and no more than the total",
        )
    report.checked(name, f"version {record.dataset_version[:12]}, {record.videos} videos, {record.runs_total} runs")


def compare_value(key: str, got: Any, want: Any, rtol: float = STATS_RTOL) -> str | None:
    """Compare a YAML value with its expected value; ``None`` when equal, else what differs.

    Integers (sample counts) must match exactly, floats to ``rtol`` relative, ``None`` must
    stay ``None`` and lists must have the same length.

    Examples:
        >>> compare_value("depth_num_samples", 3, 3) is None
        True
        >>> compare_value("depth_mean", 1.0 + 1e-14, 1.0) is None
        True
        >>> compare_value("pose_mean", [0.5, 0.25], [0.5, 0.26])
        'pose_mean[1]: 0.25 in the file, 0.26 expected'
        >>> compare_value("hand_uvd_disp_mean", 0.0, None)
        'hand_uvd_disp_mean: 0.0 in the file, None expected'
        >>> compare_value("depth_num_samples", 3.0, 3)
        'depth_num_samples: 3.0 in the file, 3 expected'
    """
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{key}: {_brief(got)} in the file, a list of {len(want)} expected"
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            mismatch = compare_value(f"{key}[{index}]", g, w, rtol)
            if mismatch is not None:
                return mismatch
        return None
    if want is None or isinstance(want, str | bool):
        equal = got is want if want is None else (type(got) is type(want) and got == want)
    elif isinstance(want, int):
        equal = isinstance(got, int) and not isinstance(got, bool) and got == want
    elif isinstance(want, float):
        equal = isinstance(got, int | float) and not isinstance(got, bool) and math.isclose(got, want, rel_tol=rtol)
    else:  # pragma: no cover - normalization_stats writes only the types above
        equal = got == want
    return None if equal else f"{key}: {_brief(got)} in the file, {want!r} expected"


# ----------------------------------------------------------------------------- helpers


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _brief(text[0] if text else type(exc).__name__, 200)


def _brief(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
