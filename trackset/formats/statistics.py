"""Exact, mergeable normalisation statistics.

The script pipeline concatenated every value of every video in memory and recomputed the
statistics from scratch, so a resumed run only counted the newly processed videos
(FORMATS.md, "Known defects"). Here each video keeps its own moments ``(count, mean, M2)``
in float64 (:class:`VideoPartials`, a small JSON file beside its H5); the final step merges
them with Chan et al.'s pairwise formula in sorted video-id order, so the result covers the
whole dataset, agrees with a single pass over all values to ~1e-12, and is byte-identical
from run to run (DECISIONS.md, "Determinism").

Examples:
    >>> a = Moments.of(np.array([1.0, 2.0]))
    >>> b = Moments.of(np.array([3.0, 4.0, 5.0]))
    >>> merged = a.merge(b)
    >>> merged.count, merged.mean.tolist(), merged.variance.tolist()
    (5, [3.0], [2.0])
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from trackset.domain import check_video_id, video_id_order
from trackset.formats.h5_schema import TRACK_DIMS, TRACK_TYPE_2D, TRACK_TYPE_3D
from trackset.formats.layout import write_text_atomic
from trackset.formats.markers import FileStamp

logger = logging.getLogger(__name__)

#: Every statistic a video contributes, with its number of components (of a 3D video; a 2D
#: video's displacements have 2, and it has no depth, pose or hand samples).
STATISTIC_DIMS: dict[str, int] = {"displacement": 3, "depth": 1, "pose": 9, "hand_uvd": 3, "hand_rot": 6}


def statistic_dims(track_type: str) -> dict[str, int]:
    """:data:`STATISTIC_DIMS` of a ``track_type`` video.

    Examples:
        >>> statistic_dims("2d")["displacement"], statistic_dims("3d")["displacement"]
        (2, 3)
    """
    if track_type not in TRACK_DIMS:
        raise ValueError(f"unsupported track_type {track_type!r}: expected one of {sorted(TRACK_DIMS)}")
    return {**STATISTIC_DIMS, "displacement": TRACK_DIMS[track_type]}


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

#: Keys of ``normalization_stats.yaml`` that FORMATS.md requires, in its order. trackset
#: writes ``std_floored`` after them, and leaves out the mean and std of a statistic without
#: samples (:func:`normalization_stats`).
STATS_YAML_KEYS: tuple[str, ...] = (
    "imagenet_mean",
    "imagenet_std",
    "track_type",
    "track_dim",
    "displacement_mean",
    "displacement_std",
    "displacement_num_samples",
    "depth_mean",
    "depth_std",
    "depth_num_samples",
    "pose_mean",
    "pose_std",
    "pose_num_samples",
    "hand_uvd_disp_mean",
    "hand_uvd_disp_std",
    "hand_rot_disp_mean",
    "hand_rot_disp_std",
    "hand_pose_num_samples",
)
#: The keys of a 2D dataset's ``normalization_stats.yaml``: what the script's
#: ``create_h5_dataset.py`` writes for ``track_type: 2d`` (its ``norm_stats`` before the
#: ``if track_type == '3d'`` block; depth, pose and hand keys are 3D only), and all that y2r's
#: ``NormalizationStats`` reads for 2D (imagenet mean and std, track type and dim,
#: displacement mean and std of (u, v)).
STATS_YAML_KEYS_2D: tuple[str, ...] = STATS_YAML_KEYS[:7]
STD_FLOORED_KEY = "std_floored"


class StatisticKeys(NamedTuple):
    """Where one statistic of :data:`STATISTIC_DIMS` lands in ``normalization_stats.yaml``.

    Attributes:
        statistic: its name in :data:`STATISTIC_DIMS` and :class:`VideoPartials`.
        prefix: of its ``<prefix>_mean`` and ``<prefix>_std`` keys.
        count_key: the key of its sample count.
    """

    statistic: str
    prefix: str
    count_key: str


#: Every statistic's YAML keys, in :data:`STATISTIC_DIMS` order. The hand statistics are
#: "*_disp_*" in FORMATS.md and share one count (their counts are equal by construction).
STATISTIC_KEYS: tuple[StatisticKeys, ...] = (
    StatisticKeys("displacement", "displacement", "displacement_num_samples"),
    StatisticKeys("depth", "depth", "depth_num_samples"),
    StatisticKeys("pose", "pose", "pose_num_samples"),
    StatisticKeys("hand_uvd", "hand_uvd_disp", "hand_pose_num_samples"),
    StatisticKeys("hand_rot", "hand_rot_disp", "hand_pose_num_samples"),
)


@dataclass(frozen=True, eq=False)
class Moments:
    """Count, mean and sum of squared deviations (M2) of ``d``-component samples.

    Arrays are float64 copies made read-only, so a ``Moments`` can be shared without anyone
    changing the numbers behind another's back. Equality is bitwise (``-0.0 != 0.0``),
    because byte-identical outputs are what determinism promises.

    Attributes:
        count: number of samples (rows).
        mean: per-component mean, shape ``(d,)``.
        m2: per-component sum of squared deviations from the mean, shape ``(d,)``.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int | np.integer) or self.count < 0:
            raise ValueError(f"count must be a non-negative integer, got {self.count!r}")
        mean = np.array(self.mean, dtype=np.float64)
        m2 = np.array(self.m2, dtype=np.float64)
        if mean.ndim != 1 or mean.shape[0] < 1 or m2.shape != mean.shape:
            raise ValueError(f"mean and m2 must both have shape (d,) with d >= 1, got {mean.shape} and {m2.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(m2).all()):
            raise ValueError("mean and m2 must be finite")
        if (m2 < 0).any():
            raise ValueError("m2 must be non-negative")
        if self.count == 0 and (mean.any() or m2.any()):
            # One canonical empty value keeps merges with empty sides bit-exact.
            raise ValueError("empty moments must have zero mean and m2")
        mean.setflags(write=False)
        m2.setflags(write=False)
        object.__setattr__(self, "count", int(self.count))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "m2", m2)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Moments):
            return NotImplemented
        return (
            self.count == other.count
            and self.mean.tobytes() == other.mean.tobytes()
            and self.m2.tobytes() == other.m2.tobytes()
            and self.dim == other.dim
        )

    def __repr__(self) -> str:
        return f"Moments(count={self.count}, mean={self.mean.tolist()}, m2={self.m2.tolist()})"

    @property
    def dim(self) -> int:
        """Number of components ``d``."""
        return int(self.mean.shape[0])

    @classmethod
    def empty(cls, dim: int) -> Moments:
        """Moments of no samples: the identity of :meth:`merge`.

        Examples:
            >>> Moments.empty(3).count
            0
        """
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of the rows of an ``(n, d)`` array (an ``(n,)`` array is ``d = 1``).

        Computed in float64 with two passes (mean, then squared deviations from it), which
        is what keeps the merged result within ~1e-12 of numpy over all values at once.

        Raises:
            ValueError: on any other shape, or on non-finite values (one NaN would silently
                poison the statistics of the whole dataset).

        Examples:
            >>> m = Moments.of(np.array([[1.0, 10.0], [3.0, 10.0]], dtype=np.float32))
            >>> m.count, m.mean.tolist(), m.m2.tolist()
            (2, [2.0, 10.0], [2.0, 0.0])
        """
        data = np.asarray(values, dtype=np.float64)
        if data.ndim == 1:
            data = data.reshape(-1, 1)
        if data.ndim != 2 or data.shape[1] < 1:
            raise ValueError(f"values must have shape (n,) or (n, d) with d >= 1, got {np.shape(values)}")
        if data.shape[0] == 0:
            return cls.empty(data.shape[1])
        if not np.isfinite(data).all():
            raise ValueError("values must be finite")
        mean = data.mean(axis=0)
        m2 = np.square(data - mean).sum(axis=0)
        return cls(data.shape[0], mean, m2)

    @classmethod
    def of_counts(cls, values: np.ndarray, counts: np.ndarray) -> Moments:
        """Moments of one-component samples in which ``values[i]`` occurs ``counts[i]`` times.

        A histogram is far cheaper than the samples when they take few distinct values: a
        float16 depth map has at most 65,536, so the H5 stage bins its millions of pixels by
        bit pattern instead of making float64 copies of them. Each ``count * value`` product
        is exact in float64 (a float32 value times a count below 2**29), so the result agrees
        with :meth:`of` over the expanded samples to rounding.

        Raises:
            ValueError: on shapes that differ, negative counts, or a non-finite value that
                occurs at least once.

        Examples:
            >>> a = Moments.of_counts(np.array([1.0, 3.0, np.nan]), np.array([1, 3, 0]))
            >>> a == Moments.of(np.array([1.0, 3.0, 3.0, 3.0]))
            True
        """
        v = np.asarray(values, dtype=np.float64)
        w = np.asarray(counts)
        if v.ndim != 1 or w.shape != v.shape or w.dtype.kind not in "iu":
            raise ValueError(
                f"values and integer counts must have one shape (n,), got {v.shape} and {w.shape} {w.dtype}"
            )
        if (w < 0).any():
            raise ValueError("counts must be non-negative")
        present = w > 0
        v, w = v[present], w[present].astype(np.int64)
        count = int(w.sum())
        if count == 0:
            return cls.empty(1)
        if not np.isfinite(v).all():
            raise ValueError("values must be finite")
        mean = (w * v).sum() / count
        m2 = (w * np.square(v - mean)).sum()
        return cls(count, np.array([mean]), np.array([m2]))

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both sample sets (Chan, Golub and LeVeque's pairwise update).

        Usable as ``a.merge(b)`` or ``Moments.merge(a, b)``. An empty side returns the other
        unchanged, so empty videos never perturb a single bit of the result.

        Examples:
            >>> Moments.empty(1).merge(Moments.of(np.array([2.0, 4.0]))).mean.tolist()
            [3.0]
        """
        if self.dim != other.dim:
            raise ValueError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        # Python ints: count_a * count_b does not overflow on billions of depth pixels.
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + np.square(delta) * (self.count * other.count / count)
        return Moments(count, mean, m2)

    @staticmethod
    def merge_all(items: Iterable[Moments]) -> Moments:
        """Left fold of :meth:`merge` in the given order (floating point merges do not commute
        bitwise, so callers that need determinism fix the order).

        Raises:
            ValueError: when ``items`` is empty (its dimension would be unknown).

        Examples:
            >>> Moments.merge_all([Moments.of(np.array([1.0])), Moments.of(np.array([3.0]))]).mean.tolist()
            [2.0]
        """
        result: Moments | None = None
        for item in items:
            result = item if result is None else result.merge(item)
        if result is None:
            raise ValueError("merge_all needs at least one Moments (start from Moments.empty(dim))")
        return result

    @property
    def variance(self) -> np.ndarray:
        """Population variance (ddof 0), ``m2 / count``, as FORMATS.md specifies.

        Raises:
            ValueError: for empty moments, whose variance is undefined (never guessed).
        """
        if self.count == 0:
            raise ValueError("variance of empty moments is undefined")
        return self.m2 / self.count

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof 0)."""
        return np.sqrt(self.variance)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict; Python's float repr, which ``json`` uses, round-trips float64.

        Examples:
            >>> Moments.of(np.array([0.1, 0.2])).to_json()
            {'count': 2, 'mean': [0.15000000000000002], 'm2': [0.005000000000000001]}
        """
        return {"count": self.count, "mean": [float(x) for x in self.mean], "m2": [float(x) for x in self.m2]}

    @classmethod
    def from_json(cls, obj: Any) -> Moments:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on anything malformed."""
        if not isinstance(obj, dict) or set(obj) != {"count", "mean", "m2"}:
            raise ValueError(f"moments must be an object with keys count, mean, m2, got {_brief(obj)}")
        for key in ("mean", "m2"):
            values = obj[key]
            if not isinstance(values, list) or not all(_is_number(x) for x in values):
                raise ValueError(f"moments {key} must be a list of numbers, got {_brief(values)}")
        if isinstance(obj["count"], bool) or not isinstance(obj["count"], int):
            raise ValueError(f"moments count must be an integer, got {_brief(obj['count'])}")
        return cls(obj["count"], np.array(obj["mean"], dtype=np.float64), np.array(obj["m2"], dtype=np.float64))


@dataclass(frozen=True)
class VideoPartials:
    """One video's moments of every statistic, plus the fingerprint and stamp of the H5 they came from.

    Written after the H5 and read by resume: when ``fingerprint`` matches and the H5 still
    has the size ``h5`` recorded, the video is done and its moments are reused instead of
    re-reading the H5 (:mod:`trackset.formats.markers`). Partials written before stamps were
    recorded have ``h5`` None.
    """

    video_id: str
    fingerprint: str
    displacement: Moments
    depth: Moments
    pose: Moments
    hand_uvd: Moments
    hand_rot: Moments
    h5: FileStamp | None = None

    def __post_init__(self) -> None:
        check_video_id(self.video_id)
        if not isinstance(self.fingerprint, str):
            raise ValueError(f"fingerprint must be a string, got {_brief(self.fingerprint)}")
        if not isinstance(self.displacement, Moments):
            raise ValueError(f"displacement must be Moments, got {self.displacement!r}")
        for name, dim in statistic_dims(self.track_type).items():
            moments = getattr(self, name)
            if not isinstance(moments, Moments) or moments.dim != dim:
                raise ValueError(f"{name} must be Moments of dimension {dim}, got {moments!r}")
        if self.track_type == TRACK_TYPE_2D:
            sampled = [name for name in ("depth", "pose", "hand_uvd") if getattr(self, name).count]
            if sampled:
                raise ValueError(f"video {self.video_id} has 2d tracks but {', '.join(sampled)} samples")
        _check_hand_counts(self.hand_uvd, self.hand_rot, f"video {self.video_id}")

    @property
    def track_type(self) -> str:
        """``"2d"`` when the displacements have two components (u, v), else ``"3d"``."""
        return TRACK_TYPE_2D if self.displacement.dim == TRACK_DIMS[TRACK_TYPE_2D] else TRACK_TYPE_3D

    def moments(self) -> dict[str, Moments]:
        """The five statistics by name, in :data:`STATISTIC_DIMS` order."""
        return {name: getattr(self, name) for name in STATISTIC_DIMS}

    def to_json_text(self) -> str:
        """Deterministic JSON: sorted keys, fixed separators, float repr, trailing newline."""
        obj: dict[str, Any] = {
            "video_id": self.video_id,
            "fingerprint": self.fingerprint,
            "moments": {name: m.to_json() for name, m in self.moments().items()},
        }
        if self.h5 is not None:
            obj["h5"] = self.h5.to_json()
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"

    @classmethod
    def from_json_text(cls, text: str) -> VideoPartials:
        """Inverse of :meth:`to_json_text` (``h5`` optional: earlier partials have none);
        raises ``ValueError`` on anything malformed."""
        obj = json.loads(text)
        if not isinstance(obj, dict) or set(obj) - {"h5"} != {"video_id", "fingerprint", "moments"}:
            raise ValueError(f"expected keys fingerprint, moments, video_id (and h5), got {_brief(obj)}")
        moments = obj["moments"]
        if not isinstance(moments, dict) or set(moments) != set(STATISTIC_DIMS):
            raise ValueError(f"moments must have keys {sorted(STATISTIC_DIMS)}, got {_brief(moments)}")
        parsed = {}
        for name in STATISTIC_DIMS:
            try:
                parsed[name] = Moments.from_json(moments[name])
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        h5 = FileStamp.from_json(obj["h5"]) if "h5" in obj else None
        return cls(video_id=obj["video_id"], fingerprint=obj["fingerprint"], **parsed, h5=h5)

    def write(self, path: Path) -> None:
        """Write atomically, so a crash never leaves partials that look complete."""
        write_text_atomic(Path(path), self.to_json_text())

    @classmethod
    def read(cls, path: Path) -> VideoPartials:
        """Read a partials file.

        Raises:
            ValueError: naming the file, when its content is malformed.
        """
        path = Path(path)
        try:
            return cls.from_json_text(path.read_text(encoding="utf-8"))
        except ValueError as exc:  # includes JSON and UTF-8 decoding errors
            raise ValueError(f"{path}: malformed statistics partials: {exc}") from None


def partials_track_type(path: Path) -> str:
    """The track type a partials file records (its displacement has 2 or 3 components),
    without validating the rest of it: what a registration needs, once per run.

    Raises:
        ValueError: the file is not partials JSON.
    """
    try:
        mean = json.loads(Path(path).read_text(encoding="utf-8"))["moments"]["displacement"]["mean"]
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed statistics partials: {exc}") from None
    return TRACK_TYPE_2D if len(mean) == TRACK_DIMS[TRACK_TYPE_2D] else TRACK_TYPE_3D


def aggregate(partials: Iterable[VideoPartials], track_type: str = TRACK_TYPE_3D) -> dict[str, Moments]:
    """Merge every video's moments, statistic by statistic, in sorted video-id order.

    The order is fixed here, not by the caller, because floating point merges differ in the
    last bits with the order and the statistics YAML must be byte-identical across runs.

    Raises:
        ValueError: when a video id appears twice (it would be counted twice), or a video's
            tracks are not of ``track_type`` (2D and 3D videos never share statistics).

    Examples:
        >>> aggregate([])["pose"].count, aggregate([], "2d")["displacement"].dim
        (0, 2)
    """
    ordered = sorted(partials, key=lambda p: video_id_order(p.video_id))
    for previous, current in itertools.pairwise(ordered):
        if previous.video_id == current.video_id:
            raise ValueError(f"statistics partials of video {current.video_id} given twice")
    for item in ordered:
        if item.track_type != track_type:
            raise ValueError(f"video {item.video_id} has {item.track_type} tracks in a {track_type} dataset")
    return {
        name: Moments.merge_all([Moments.empty(dim), *(getattr(p, name) for p in ordered)])
        for name, dim in statistic_dims(track_type).items()
    }


def normalization_stats(
    merged: Mapping[str, Moments], std_floor: float, track_type: str = TRACK_TYPE_3D
) -> dict[str, Any]:
    """The content of ``normalization_stats.yaml``: :data:`STATS_YAML_KEYS` in order, then
    :data:`STD_FLOORED_KEY`.

    Each std component below ``std_floor`` is raised to it and named in ``std_floored``,
    since the reader only adds 1e-8 and a zero std would blow normalised values up. A
    statistic without samples has no ``_mean`` and ``_std`` keys, only its count of 0:
    never a made-up mean 0 / std 1 (a known defect of the script pipeline), and never
    ``null``, which y2r's ``NormalizationStats`` would turn into ``np.array(None)``. Omitting
    them is what the scripts do for hands (y2r then sets ``has_hand_stats = False``); for the
    other statistics the reader fails at once with a ``KeyError`` naming the key, not later
    inside a normalisation. Each case logs a warning.

    Args:
        merged: the five statistics of :data:`STATISTIC_DIMS`, e.g. from :func:`aggregate`.
        std_floor: smallest std written (``statistics.std_floor`` setting).
        track_type: ``"3d"``, or ``"2d"``, whose file has :data:`STATS_YAML_KEYS_2D` only
            (displacements of (u, v); no depth, pose or hand statistics), as the scripts write it.

    Raises:
        ValueError: on missing, extra or wrongly sized statistics, unequal hand counts, an
            unsupported ``track_type`` or a non-positive ``std_floor``.

    Examples:
        >>> merged = aggregate([])
        >>> merged["depth"] = Moments.of(np.array([1.0, 1.0, 1.0]))
        >>> stats = normalization_stats(merged, std_floor=1e-6)
        >>> stats["depth_mean"], stats["depth_std"], stats["depth_num_samples"], stats["std_floored"]
        (1.0, 1e-06, 3, ['depth_std'])
        >>> "pose_mean" in stats, "pose_std" in stats, stats["pose_num_samples"]
        (False, False, 0)
        >>> two_d = aggregate([], "2d")
        >>> two_d["displacement"] = Moments.of(np.array([[0.0, 0.5], [0.5, 0.0]]))
        >>> list(normalization_stats(two_d, std_floor=1e-6, track_type="2d"))  # doctest: +NORMALIZE_WHITESPACE
        ['imagenet_mean', 'imagenet_std', 'track_type', 'track_dim', 'displacement_mean', 'displacement_std',
         'displacement_num_samples', 'std_floored']
    """
    dims = statistic_dims(track_type)
    if not (np.isfinite(std_floor) and std_floor > 0):
        raise ValueError(f"std_floor must be a positive finite number, got {std_floor!r}")
    if set(merged) != set(dims):
        raise ValueError(f"expected statistics {sorted(dims)}, got {sorted(merged)}")
    for name, dim in dims.items():
        if merged[name].dim != dim:
            raise ValueError(f"statistic {name} must have dimension {dim}, got {merged[name].dim}")
    _check_hand_counts(merged["hand_uvd"], merged["hand_rot"], "merged statistics")
    keys = STATS_YAML_KEYS_2D if track_type == TRACK_TYPE_2D else STATS_YAML_KEYS
    if track_type == TRACK_TYPE_2D:
        sampled = [name for name in ("depth", "pose", "hand_uvd") if merged[name].count]
        if sampled:
            raise ValueError(f"a 2d dataset has no {', '.join(sampled)} samples, got some")

    values: dict[str, Any] = {
        "imagenet_mean": list(IMAGENET_MEAN),
        "imagenet_std": list(IMAGENET_STD),
        "track_type": track_type,
        "track_dim": TRACK_DIMS[track_type],
    }
    floored: list[str] = []
    empty: list[str] = []
    for name, prefix, count_key in STATISTIC_KEYS:
        if count_key not in keys:
            continue
        moments = merged[name]
        values[count_key] = moments.count
        if moments.count == 0:
            empty.append(name)
            continue
        std_values = moments.std.tolist()
        for index, value in enumerate(std_values):
            if value < std_floor:
                std_values[index] = float(std_floor)
                floored.append(f"{prefix}_std" if moments.dim == 1 else f"{prefix}_std[{index}]")
        mean_values = moments.mean.tolist()
        values[f"{prefix}_mean"] = mean_values[0] if moments.dim == 1 else mean_values
        values[f"{prefix}_std"] = std_values[0] if moments.dim == 1 else std_values
    values[STD_FLOORED_KEY] = floored
    for name in empty:
        logger.warning("statistic %s has no samples: its mean and std are left out, with 0 samples", name)
    if floored:
        logger.warning("std below std_floor=%g raised to it: %s", std_floor, ", ".join(floored))
    return {key: values[key] for key in (*keys, STD_FLOORED_KEY) if key in values}


def per_video_moments(
    depth_pixels: Moments,
    query_coords: Sequence[np.ndarray],
    displacements: Sequence[np.ndarray],
    poses: np.ndarray | Sequence[np.ndarray],
    hand_uvd_displacements: Sequence[np.ndarray],
    hand_rot_displacements: Sequence[np.ndarray],
) -> dict[str, Moments]:
    """One video's moments of every statistic, by FORMATS.md's rules, from its H5 values.

    The H5 stage calls this on the values it writes and ``validate --deep`` on the values it
    reads back, so both count the same samples in the same order: every displacement row of
    every window (step 0 included), every valid depth pixel plus every query depth > 0,
    every pose row, every hand displacement row.

    Args:
        depth_pixels: moments of the valid (non-zero) pixels of ``root/depth``, summed by
            the caller as it makes or reads them.
        query_coords: per window, ``(N_w, 3)`` (u, v, d).
        displacements: per window, ``(L, N_w, 3)``.
        poses: per window, ``(L, 9)``; a ``(W, L, 9)`` array is fine.
        hand_uvd_displacements: per block of rows (a hand, or a window of a hand), ``(..., 3)``.
        hand_rot_displacements: the same blocks, ``(..., 6)``.

    Returns:
        The five statistics of :data:`STATISTIC_DIMS`, in its order.

    Examples:
        >>> m = per_video_moments(
        ...     Moments.of(np.array([2.0])),
        ...     [np.array([[0.5, 0.5, 1.0], [0.5, 0.5, 0.0]])],
        ...     [np.zeros((2, 2, 3))],
        ...     np.zeros((1, 2, 9)),
        ...     [],
        ...     [],
        ... )
        >>> m["displacement"].count, m["depth"].count, m["depth"].mean.tolist(), m["pose"].count, m["hand_rot"].count
        (4, 2, [1.5], 2, 0)
    """
    query_depth = np.concatenate([q[:, 2] for q in query_coords]) if len(query_coords) else np.zeros(0)
    return {
        "displacement": _moments_of_rows(displacements, STATISTIC_DIMS["displacement"]),
        "depth": depth_pixels.merge(Moments.of(query_depth[query_depth > 0].reshape(-1, 1))),
        "pose": _moments_of_rows(poses, STATISTIC_DIMS["pose"]),
        "hand_uvd": _moments_of_rows(hand_uvd_displacements, STATISTIC_DIMS["hand_uvd"]),
        "hand_rot": _moments_of_rows(hand_rot_displacements, STATISTIC_DIMS["hand_rot"]),
    }


def per_video_moments_2d(displacements: Sequence[np.ndarray]) -> dict[str, Moments]:
    """One 2D video's moments from its H5 values: every ``(u, v)`` displacement row of every
    window (step 0 included), as for 3D; the other statistics are empty.

    Examples:
        >>> m = per_video_moments_2d([np.zeros((2, 3, 2))])
        >>> m["displacement"].count, m["displacement"].dim, m["depth"].count
        (6, 2, 0)
    """
    dims = statistic_dims(TRACK_TYPE_2D)
    out = {name: Moments.empty(dim) for name, dim in dims.items()}
    out["displacement"] = _moments_of_rows(displacements, dims["displacement"])
    return out


def _moments_of_rows(blocks: np.ndarray | Sequence[np.ndarray], dim: int) -> Moments:
    """Moments of the ``dim``-component rows of every block, blocks in the given order."""
    rows = [np.reshape(block, (-1, dim)) for block in blocks]
    return Moments.of(np.concatenate(rows) if rows else np.zeros((0, dim)))


def write_stats_yaml(path: Path, stats: Mapping[str, Any]) -> None:
    """Write the statistics YAML atomically with deterministic bytes.

    Keys keep their given order; lists of scalars are written in flow style on one line
    (``default_flow_style=None``); floats use Python's shortest round-tripping repr, so
    reading the file back gives the exact float64 values. numpy scalars and arrays are
    converted to plain Python first (``yaml.safe_dump`` refuses them).
    """
    text = yaml.safe_dump(
        _to_plain(dict(stats)), sort_keys=False, default_flow_style=None, width=1 << 16, allow_unicode=False
    )
    write_text_atomic(Path(path), text)


def _to_plain(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into plain Python values.

    Examples:
        >>> _to_plain({"a": np.float32(0.5), "b": np.arange(2), "c": (np.int64(3), None)})
        {'a': 0.5, 'b': [0, 1], 'c': [3, None]}
    """
    if isinstance(value, Mapping):
        return {str(key): _to_plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _check_hand_counts(hand_uvd: Moments, hand_rot: Moments, where: str) -> None:
    """Hand position and rotation displacements come in pairs, so their counts must agree."""
    if hand_uvd.count != hand_rot.count:
        raise ValueError(
            f"{where}: hand_uvd has {hand_uvd.count} samples but hand_rot has {hand_rot.count}; "
            "every hand displacement row must contribute to both"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _brief(value: Any, limit: int = 80) -> str:
    """A short repr for error messages, so a huge malformed file does not flood the log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
