"""The names of the per-video HDF5 layout (FORMATS.md, "HDF5 layout"), in one place.

The writer (:func:`trackset.formats.h5_layout.write_h5`) and the checker (:mod:`trackset.dataset.validate`)
spell every path with these names, so the layout a file is written with and the layout it
is checked against cannot drift apart. Shapes are symbolic: :data:`STEPS` (``"L"``) is the
window length (``root/num_track_ts``), :data:`POINTS` (``"N"``) the number of points kept in
the window.

This module imports nothing else of trackset and no h5py, so anything may import it.

Examples:
    >>> root_path(DEPTH), window_group(7), hand_key("left", HAND_QUERY_UVD)
    ('root/depth', 'frame_0007', 'left_wrist_query_uvd')
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: A dimension of a symbolic shape: a fixed length, or the name of a size known per window.
Dim = int | str

#: The hands of a video, in the order their datasets are written and their moments merged.
HAND_SIDES: tuple[str, ...] = ("left", "right")

#: The group that holds everything of a video's file.
ROOT = "root"

# Names directly under ``root``.
VIDEO = "video"
DEPTH = "depth"
INTRINSICS = "intrinsics"
TRACKS = "tracks"  # the group of the window groups
NUM_FRAMES = "num_frames"
NUM_TRACK_TS = "num_track_ts"
TRACK_TYPE = "track_type"
TEXT = "text"  # optional language description
ROOT_KEYS: frozenset[str] = frozenset({VIDEO, DEPTH, INTRINSICS, TRACKS, NUM_FRAMES, NUM_TRACK_TS, TRACK_TYPE, TEXT})

#: The values of ``root/track_type``: 3D tracks (TAPIP3D, with depth, poses and hands) or
#: 2D tracks (CoTracker, pixels only), as the script pipeline's ``create_h5_dataset.py``.
TRACK_TYPE_3D = "3d"
TRACK_TYPE_2D = "2d"
#: Components of a track point: (u, v, d) or (u, v); ``track_dim`` of the statistics.
TRACK_DIMS: dict[str, int] = {TRACK_TYPE_3D: 3, TRACK_TYPE_2D: 2}
#: What a 2D file has directly under ``root`` (the 3D layout less depth and intrinsics).
ROOT_KEYS_2D: frozenset[str] = frozenset({VIDEO, TRACKS, NUM_FRAMES, NUM_TRACK_TS, TRACK_TYPE, TEXT})

#: The name of the group of the window starting at frame ``t``, as a ``str.format`` template.
WINDOW_GROUP_FORMAT = "frame_{t:04d}"
_WINDOW_GROUP = re.compile(r"frame_([0-9]+)")

STEPS = "L"  # the window length
POINTS = "N"  # the points kept in a window

# Datasets of every window group, with their symbolic shapes, in the order they are written.
QUERY_COORDS = "query_coords"
DISPLACEMENTS = "displacements"
POSES = "poses"
WINDOW_SHAPES: dict[str, tuple[Dim, ...]] = {
    QUERY_COORDS: (POINTS, 3),
    DISPLACEMENTS: (STEPS, POINTS, 3),
    POSES: (STEPS, 9),
}
#: The datasets of a 2D window group: (u, v) only, no camera poses and no hands (the
#: script's 2D writer; its reader reads poses for 3D only).
WINDOW_SHAPES_2D: dict[str, tuple[Dim, ...]] = {
    QUERY_COORDS: (POINTS, 2),
    DISPLACEMENTS: (STEPS, POINTS, 2),
}

# Suffixes of a hand's datasets after ``<side>_wrist_``, with their symbolic shapes, in the
# order they are written. A window holds all four of a hand, or none when that hand is not
# valid at every step.
HAND_QUERY_UVD = "query_uvd"
HAND_UVD_DISPLACEMENTS = "uvd_displacements"
HAND_QUERY_ROT_6D = "query_rot_6d"
HAND_ROT_DISPLACEMENTS = "rot_displacements"
HAND_SHAPES: dict[str, tuple[Dim, ...]] = {
    HAND_QUERY_UVD: (3,),
    HAND_UVD_DISPLACEMENTS: (STEPS, 3),
    HAND_QUERY_ROT_6D: (6,),
    HAND_ROT_DISPLACEMENTS: (STEPS, 6),
}

#: Frames of ``root/depth`` per chunk when its moments are summed: the writer and ``validate``
#: chunk alike so that both sum the same values in the same order, and a long video never
#: needs a float64 copy of all its pixels at once.
DEPTH_CHUNK_FRAMES = 32


def root_path(key: str) -> str:
    """The path of a name directly under ``root``.

    Examples:
        >>> root_path(NUM_TRACK_TS)
        'root/num_track_ts'
    """
    return f"{ROOT}/{key}"


def window_group(start: int) -> str:
    """The name of the group of the window starting at frame ``start``.

    Examples:
        >>> window_group(3), window_group(12345)
        ('frame_0003', 'frame_12345')
    """
    return WINDOW_GROUP_FORMAT.format(t=int(start))


def parse_window_group(name: str) -> int | None:
    """The start frame named by a window group, or ``None`` when ``name`` is not exactly what
    :func:`window_group` writes (readers look a window up by that exact name).

    Examples:
        >>> parse_window_group("frame_0042"), parse_window_group("frame_42"), parse_window_group("poses")
        (42, None, None)
    """
    match = _WINDOW_GROUP.fullmatch(name)
    if match is None:
        return None
    start = int(match.group(1))
    return start if name == window_group(start) else None


def hand_key(side: str, suffix: str) -> str:
    """The dataset name of one of a hand's :data:`HAND_SHAPES` suffixes.

    Examples:
        >>> hand_key("right", HAND_ROT_DISPLACEMENTS)
        'right_wrist_rot_displacements'
    """
    return f"{side}_wrist_{suffix}"


#: Every dataset name a window group may hold.
WINDOW_KEYS: frozenset[str] = frozenset(
    {*WINDOW_SHAPES, *(hand_key(side, suffix) for side in HAND_SIDES for suffix in HAND_SHAPES)}
)


def window_shapes(track_type: str) -> dict[str, tuple[Dim, ...]]:
    """The datasets every window group of a ``track_type`` file holds, with their shapes.

    Examples:
        >>> window_shapes(TRACK_TYPE_2D)[DISPLACEMENTS], list(window_shapes(TRACK_TYPE_3D))
        (('L', 'N', 2), ['query_coords', 'displacements', 'poses'])
    """
    return WINDOW_SHAPES_2D if track_type == TRACK_TYPE_2D else WINDOW_SHAPES


def resolve_shape(shape: tuple[Dim, ...], sizes: Mapping[str, int]) -> tuple[Dim, ...]:
    """A symbolic shape with the sizes known so far filled in.

    Examples:
        >>> resolve_shape(WINDOW_SHAPES[DISPLACEMENTS], {STEPS: 4})
        (4, 'N', 3)
    """
    return tuple(sizes.get(dim, dim) if isinstance(dim, str) else dim for dim in shape)


def shape_matches(actual: tuple[int, ...], shape: tuple[Dim, ...], sizes: Mapping[str, int]) -> bool:
    """True when ``actual`` has the symbolic ``shape``; a size not known yet matches any length.

    Examples:
        >>> shape = WINDOW_SHAPES[DISPLACEMENTS]
        >>> shape_matches((4, 12, 3), shape, {STEPS: 4}), shape_matches((5, 12, 3), shape, {STEPS: 4})
        (True, False)
    """
    wanted = resolve_shape(shape, sizes)
    return len(actual) == len(wanted) and all(isinstance(w, str) or a == w for a, w in zip(actual, wanted, strict=True))


def bound_sizes(shape: tuple[Dim, ...], actual: tuple[int, ...], sizes: Mapping[str, int]) -> dict[str, int]:
    """The sizes that a dataset of the symbolic ``shape`` fixes and ``sizes`` does not know yet.

    Examples:
        >>> bound_sizes(WINDOW_SHAPES[QUERY_COORDS], (12, 3), {STEPS: 4})
        {'N': 12}
    """
    return {dim: n for dim, n in zip(shape, actual, strict=False) if isinstance(dim, str) and dim not in sizes}


def describe_shape(shape: tuple[Dim, ...], sizes: Mapping[str, int]) -> str:
    """A symbolic shape for a problem line, followed by its known sizes when there are any.

    Examples:
        >>> describe_shape(WINDOW_SHAPES[DISPLACEMENTS], {STEPS: 4, POINTS: 12})
        '(L, N, 3) = (4, 12, 3)'
        >>> describe_shape(WINDOW_SHAPES[QUERY_COORDS], {STEPS: 4})
        '(N, 3)'
    """
    symbolic = "(" + ", ".join(map(str, shape)) + ")"
    resolved = "(" + ", ".join(map(str, resolve_shape(shape, sizes))) + ")"
    return symbolic if resolved == symbolic else f"{symbolic} = {resolved}"
