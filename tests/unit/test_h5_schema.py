"""The schema's names are FORMATS.md's, and window group names parse only when canonical."""

from __future__ import annotations

import pytest

from trackset.formats import h5_schema as schema

# Written out from FORMATS.md ("HDF5 layout"), not taken from the implementation.
FORMATS_ROOT_KEYS = {"video", "depth", "intrinsics", "tracks", "num_frames", "num_track_ts", "track_type", "text"}
FORMATS_WINDOW_KEYS = {
    "query_coords": ("N", 3),
    "displacements": ("L", "N", 3),
    "poses": ("L", 9),
    **{
        f"{side}_wrist_{suffix}": shape
        for side in ("left", "right")
        for suffix, shape in {
            "query_uvd": (3,),
            "uvd_displacements": ("L", 3),
            "query_rot_6d": (6,),
            "rot_displacements": ("L", 6),
        }.items()
    },
}


def test_root_keys_are_the_formats_layout():
    assert schema.ROOT_KEYS == FORMATS_ROOT_KEYS
    assert schema.root_path(schema.TRACKS) == "root/tracks"
    assert schema.TRACK_TYPE_3D == "3d"


def test_window_keys_and_shapes_are_the_formats_layout():
    declared = dict(schema.WINDOW_SHAPES)
    for side in schema.HAND_SIDES:
        declared.update({schema.hand_key(side, suffix): shape for suffix, shape in schema.HAND_SHAPES.items()})
    assert declared == FORMATS_WINDOW_KEYS
    assert schema.WINDOW_KEYS == set(FORMATS_WINDOW_KEYS)


@pytest.mark.parametrize("start", [0, 7, 9999, 10000, 123456])
def test_window_group_names_round_trip(start):
    assert schema.parse_window_group(schema.window_group(start)) == start


@pytest.mark.parametrize(
    "name",
    ["frame_1", "frame_00001", "frame_-001", "frame_0001\n", "frame_\u0660\u0660\u0660\u0661", "Frame_0001", "frame_"],
)
def test_non_canonical_window_group_names_do_not_parse(name):
    assert schema.parse_window_group(name) is None
