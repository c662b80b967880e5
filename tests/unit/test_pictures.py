"""Pictures of a video's H5 (``trackset show``): the overlays land where the tracks project.

The H5 is written with the layout's own writers from hand-made arrays on a plain grey video,
so every drawn pixel is known: each point's dot sits at its query (u, v) * S in the colour
of its query depth on the ``turbo`` scale over ``h5.depth_min_m``..``h5.depth_max_m``, its
trail ends at its last step in the colour of that step's depth, and the wrists are squares
of their own colours. Expected pixels and colours are worked out here from those arrays and
OpenCV's colour map, never with ``trackset.reports.pictures``' helpers.
"""

from __future__ import annotations

import os

import av
import cv2
import numpy as np
import pytest

from trackset.config.settings import H5Settings
from trackset.formats.h5_layout import HandWindows, VideoArrays, write_h5
from trackset.formats.h5_layout_2d import VideoArrays2d, write_h5_2d
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import Moments
from trackset.reports.pictures import Window, render_frame, run_pictures, write_pictures, write_run_pictures

T, L, GREY = 14, 10, 128
STARTS = np.arange(T - L + 1)
SETTINGS = H5Settings()
LO, HI = SETTINGS.depth_min_m, SETTINGS.depth_max_m
# Four points far apart, on pixel centres of both sizes tested (multiples of 1/64), at
# depths that are exact steps of the 256-colour scale.
QUERY_UV = np.array([[12, 12], [44, 12], [12, 38], [44, 38]]) / 64
QUERY_STEP = np.array([0, 60, 180, 255])  # colour-map index of each point's query depth
END_STEP = np.array([30, 120, 150, 255])  # ... and of its depth at the last step
U_PER_STEP = 1 / 144  # every point moves right, 1/16 of the frame over the window
WRIST_QUERY = {"left": np.array([28 / 64, 54 / 64, 0.8]), "right": np.array([54 / 64, 54 / 64, 1.2])}
LEFT_RGB, RIGHT_RGB = (255, 0, 255), (255, 255, 255)


def depth_at(step: np.ndarray) -> np.ndarray:
    return LO + step / 255 * (HI - LO)


def turbo_rgb(step: int) -> tuple[int, ...]:
    bgr = cv2.applyColorMap(np.array([[step]], np.uint8), cv2.COLORMAP_TURBO)[0, 0]
    return tuple(int(c) for c in bgr[::-1])


def window_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``query (N,3)`` and ``displacements (L,N,3)``, the same in every window."""
    query = np.c_[QUERY_UV, depth_at(QUERY_STEP)].astype(np.float32)
    k = np.arange(L)[:, None]
    disp = np.zeros((L, len(query), 3), np.float32)
    disp[..., 0] = U_PER_STEP * k
    disp[..., 2] = (depth_at(END_STEP) - depth_at(QUERY_STEP)) * k / (L - 1)
    return query, disp


def poses() -> np.ndarray:
    """``(W, L, 9)``: no turn, the camera moving 1 cm right and 2 cm forward per step."""
    out = np.zeros((len(STARTS), L, 9), np.float32)
    out[..., 0] = out[..., 4] = 1.0
    out[..., 6] = 0.01 * np.arange(L)
    out[..., 8] = 0.02 * np.arange(L)
    return out


def hand(side: str) -> HandWindows:
    windows = len(STARTS)
    moves = np.zeros((windows, L, 3), np.float32)
    moves[..., 1] = -0.003 * np.arange(L)
    rot = np.tile(np.array([1, 0, 0, 0, 1, 0], np.float32), (windows, 1))
    return HandWindows(
        valid=np.ones(windows, bool),
        query_uvd=np.tile(WRIST_QUERY[side].astype(np.float32), (windows, 1)),
        uvd_displacements=moves,
        query_rot_6d=rot,
        rot_displacements=np.tile(rot[:, None], (1, L, 1)),
    )


def grey_video(size: int) -> np.ndarray:
    return np.full((T, 3, size, size), GREY, np.uint8)


def write_3d(dataset, size: int) -> None:
    query, disp = window_arrays()
    arrays = VideoArrays(
        video=grey_video(size),
        depth=np.ones((T, size, size), np.float32),
        depth_moments=Moments(0, np.zeros(1), np.zeros(1)),
        intrinsics=np.eye(3, dtype=np.float32),
        starts=STARTS,
        query_coords=[query] * len(STARTS),
        displacements=[disp] * len(STARTS),
        poses=poses(),
        hands={side: hand(side) for side in ("left", "right")},
        num_track_ts=L,
    )
    write_h5(DatasetLayout(dataset).h5("00000"), arrays)


def pixel(uv: np.ndarray, size: int) -> tuple[int, int]:
    """(row, column) of the canvas pixel at (u, v): the H5 pixel's block, scaled to >= 256."""
    scale = max(1, 256 // size)
    column, row = (np.rint(np.asarray(uv) * size) * scale + scale // 2).astype(int)
    return int(row), int(column)


@pytest.fixture(params=[256, 64], ids=["S256", "S64"])
def size(request):
    return request.param


@pytest.fixture
def pictures(tmp_path, size):
    dataset = tmp_path / "dataset"
    write_3d(dataset, size)
    return dataset, write_pictures(dataset, "00000", tmp_path / "pictures", SETTINGS)


def read_png(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def first_tile(sheet: np.ndarray, size: int) -> np.ndarray:
    side = size * max(1, 256 // size)
    return sheet[:side, :side]


def test_dots_sit_at_the_projected_queries_in_the_colour_of_their_depth(pictures, size):
    _, (_, png) = pictures
    frame = first_tile(read_png(png), size)  # the window starting at frame 0
    for uv, step in zip(QUERY_UV, QUERY_STEP, strict=True):
        assert tuple(frame[pixel(uv, size)]) == turbo_rgb(int(step))
    assert tuple(frame[pixel([0.45, 0.40], size)]) == (GREY,) * 3  # nothing drawn between the points


def test_trails_end_at_the_last_step_in_the_colour_of_its_depth(pictures, size):
    _, (_, png) = pictures
    frame = first_tile(read_png(png), size)
    for uv, step in zip(QUERY_UV, END_STEP, strict=True):
        end = uv + np.array([U_PER_STEP * (L - 1), 0])
        assert tuple(frame[pixel(end, size)]) == turbo_rgb(int(step))


def test_both_wrists_are_drawn_in_their_own_colours(pictures, size):
    _, (_, png) = pictures
    frame = first_tile(read_png(png), size)
    assert tuple(frame[pixel(WRIST_QUERY["left"][:2], size)]) == LEFT_RGB
    assert tuple(frame[pixel(WRIST_QUERY["right"][:2], size)]) == RIGHT_RGB


def test_mp4_has_a_picture_per_frame_and_the_sheet_a_tile_per_window_start(pictures, size):
    _, (mp4, png) = pictures
    assert mp4.name == "00000.mp4" and png.name == "00000.png"
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == T
    tile_height, tile_width = frames[0].shape[:2]
    sheet = read_png(png)
    assert sheet.shape[:2] == (2 * tile_height, 3 * tile_width)  # 5 window starts: 2 rows of 3
    side = size * max(1, 256 // size)
    # Lossy H.264, but the dot of the nearest point is still there, in roughly its colour.
    near = np.asarray(frames[0][pixel(QUERY_UV[3], size)], int)
    assert np.abs(near - turbo_rgb(int(QUERY_STEP[3]))).max() < 40
    # Frames past the last window start show the bare frame.
    bare = frames[-1][:side, :side].astype(int)
    assert np.abs(bare - GREY).max() < 8


def test_the_panel_holds_the_camera_and_never_covers_the_frame(size):
    query, disp = window_arrays()
    frame = np.full((size, size, 3), GREY, np.uint8)

    still = Window(0, query[None] + disp, np.tile(poses()[0, :1], (L, 1)), {})
    moving = Window(0, query[None] + disp, poses()[0], {})
    a, b = render_frame(frame, 0, still, (LO, HI)), render_frame(frame, 0, moving, (LO, HI))
    side = size * max(1, 256 // size)
    assert a.shape == b.shape and a.shape[0] % 2 == 0 and a.shape[1] % 2 == 0 and a.shape[1] > side
    assert np.array_equal(a[:, :side], b[:, :side])
    assert not np.array_equal(a[:, side:], b[:, side:])  # the camera's path is drawn in the panel


def test_2d_tracks_are_drawn_without_depth(tmp_path):
    query, disp = window_arrays()
    arrays = VideoArrays2d(
        video=grey_video(256),
        starts=STARTS,
        query_coords=[query[:, :2]] * len(STARTS),
        displacements=[disp[..., :2]] * len(STARTS),
        num_track_ts=L,
    )
    write_h5_2d(DatasetLayout(tmp_path / "dataset").h5("00000"), arrays)
    _, png = write_pictures(tmp_path / "dataset", "00000", tmp_path / "out", SETTINGS)
    frame = first_tile(read_png(png), 256)
    for uv in QUERY_UV:
        assert tuple(frame[pixel(uv, 256)]) == (255, 255, 0)


def test_a_missing_video_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no H5 of video 00042: .*00042.hdf5 does not exist"):
        write_pictures(tmp_path, "00042", tmp_path / "out", SETTINGS)


def test_run_pictures_skip_what_cannot_be_drawn_and_link_only_current_ones(tmp_path):
    dataset = tmp_path / "dataset"
    write_3d(dataset, 64)
    written = write_run_pictures(dataset, ["00000", "00001"], SETTINGS)  # 00001 has no H5
    assert [p.video_id for p in written] == ["00000"]
    assert written[0].mp4 == dataset / "pictures" / "00000.mp4"
    assert run_pictures(dataset, ["00000", "00001"]) == written
    h5 = DatasetLayout(dataset).h5("00000")
    later = os.stat(written[0].png).st_mtime_ns + 10**9
    os.utime(h5, ns=(later, later))  # the video was rebuilt after its pictures
    assert run_pictures(dataset, ["00000"]) == []
