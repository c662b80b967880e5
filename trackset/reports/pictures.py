"""Pictures of one video's H5 file: an MP4 and a PNG contact sheet with the tracks drawn in.

The script pipeline wrote a visualisation video per stage (``vis_flag``); trackset writes
none while it builds, so these pictures are how a person checks a built video by eye
(``trackset show VIDEO_ID``, or ``run.pictures_videos`` for the first videos of a build).
They are drawn from the H5 alone, i.e. from exactly what the training code will read:

- every point of the window that starts at the frame, as a dot at its query position and a
  trail over the window's L steps, u, v = (query + displacement) * S; dot and trail take the
  colour of the point's depth on a fixed ``turbo`` scale from ``h5.depth_min_m`` (dark blue)
  to ``h5.depth_max_m`` (dark red), so one colour means one depth in every video;
- both wrists, when the window keeps them, as squares with trails: left magenta, right white
  (neither is a colour of the depth scale);
- the camera's motion over the window in a panel beside the frame: its path seen from above
  (x to the right, z, the viewing direction, up) and where it looks at the last step.

Frame t of the MP4 shows the window starting at t; the last L - 1 frames, which start no
window, show the bare frame. The contact sheet is a grid of a few window starts spread over
the video. An H5 smaller than 256 pixels is scaled up by a whole factor first so that the
panel's text stays legible; the drawing itself is exact to the pixel (nearest-neighbour
scaling, no anti-aliasing), which is what ``tests/unit/test_pictures.py`` checks.

Examples:
    >>> canvas_scale(256), canvas_scale(64), canvas_scale(100)
    (1, 4, 2)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import h5py
import numpy as np

from trackset.config.settings import H5Settings
from trackset.formats import h5_schema as schema
from trackset.formats.layout import DatasetLayout, atomic_path
from trackset.reports import markdown

logger = logging.getLogger(__name__)

#: Where a build's pictures go, under the dataset directory.
PICTURES_DIR = "pictures"
#: Frames per second of the MP4: the rate ``preprocess.fps`` samples videos at by default.
FPS = 10.0
#: The smallest canvas side a picture is scaled up to (by a whole factor).
MIN_CANVAS = 256
#: Window starts shown on a contact sheet, and tiles per row.
SHEET_TILES, SHEET_COLUMNS = 6, 3

LEFT_WRIST_RGB = (255, 0, 255)
RIGHT_WRIST_RGB = (255, 255, 255)
WRIST_RGB = {"left": LEFT_WRIST_RGB, "right": RIGHT_WRIST_RGB}
#: The one colour of 2D tracks, which have no depth.
TRACK_2D_RGB = (255, 255, 0)
PANEL_RGB = (24, 24, 24)
TEXT_RGB = (230, 230, 230)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SHIFT = 4  # sub-pixel bits of cv2's drawing calls
_TURBO = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1].copy()


@dataclass(frozen=True)
class Window:
    """What one ``frame_{t:04d}`` group says, in absolute terms.

    Attributes:
        start: the frame the window starts at.
        points: ``(L, N, D)`` each point's (u, v[, d]) at every step (query + displacement).
        poses: ``(L, 9)`` camera motion (3D files), else ``None``.
        wrists: ``(L, 3)`` wrist (u, v, d) at every step, for each hand the window keeps.
    """

    start: int
    points: np.ndarray
    poses: np.ndarray | None
    wrists: dict[str, np.ndarray]


@dataclass(frozen=True)
class VideoPictures:
    """The two pictures of one video."""

    video_id: str
    mp4: Path
    png: Path

    @property
    def paths(self) -> list[Path]:
        return [self.mp4, self.png]


def canvas_scale(size: int) -> int:
    """The whole factor an ``size``-pixel H5 frame is scaled up by (at least 1)."""
    return max(1, MIN_CANVAS // size)


def to_canvas(uv: np.ndarray, size: int, scale: int) -> np.ndarray:
    """Pixel coordinates on the canvas of (u, v) in [0, 1].

    u * size is a pixel coordinate of the H5 frame with pixel centres at whole numbers (the
    intrinsics' convention); scaling by ``scale`` maps pixel i to the block
    ``[i * scale, (i + 1) * scale)`` of the canvas, whose centre is ``(i + 0.5) * scale - 0.5``.

    Examples:
        >>> to_canvas(np.array([0.5, 0.25]), 256, 1).tolist()
        [128.0, 64.0]
        >>> to_canvas(np.array([[0.5, 0.25]]), 64, 4).tolist()
        [[129.5, 65.5]]
    """
    return (np.asarray(uv, dtype=np.float64) * size + 0.5) * scale - 0.5


def depth_colours(depth: np.ndarray, depth_min_m: float, depth_max_m: float) -> np.ndarray:
    """RGB colours ``(..., 3)`` uint8 of depths on the ``turbo`` scale over a fixed range.

    Depths outside the range take the colour of its nearer end; the range is fixed, not
    fitted to the video, so a colour reads as the same depth in every picture.

    Examples:
        >>> depth_colours(np.array([0.1, 2.5, 9.0]), 0.1, 2.5).tolist()
        [[48, 18, 59], [122, 4, 3], [122, 4, 3]]
    """
    fraction = (np.asarray(depth, dtype=np.float64) - depth_min_m) / (depth_max_m - depth_min_m)
    index = np.rint(np.clip(np.nan_to_num(fraction), 0.0, 1.0) * 255).astype(np.intp)
    return _TURBO[index]


def sheet_starts(starts: Sequence[int], tiles: int = SHEET_TILES) -> list[int]:
    """Up to ``tiles`` window starts spread evenly over a video, first and last included.

    Examples:
        >>> sheet_starts(list(range(31)))
        [0, 6, 12, 18, 24, 30]
        >>> sheet_starts([0, 1]), sheet_starts([])
        ([0, 1], [])
    """
    if len(starts) <= tiles:
        return list(starts)
    picks = np.rint(np.linspace(0, len(starts) - 1, tiles)).astype(int)
    return [starts[i] for i in picks]


def read_windows(f: h5py.File) -> dict[int, Window]:
    """Every window group of an open H5 file, by start frame."""
    windows: dict[int, Window] = {}
    for name, group in f[schema.root_path(schema.TRACKS)].items():
        start = schema.parse_window_group(name)
        if start is None:
            continue
        query = group[schema.QUERY_COORDS][()]
        points = query[None] + group[schema.DISPLACEMENTS][()]
        poses = group[schema.POSES][()] if schema.POSES in group else None
        wrists = {}
        for side in schema.HAND_SIDES:
            key = schema.hand_key(side, schema.HAND_QUERY_UVD)
            if key in group:
                moves = group[schema.hand_key(side, schema.HAND_UVD_DISPLACEMENTS)][()]
                wrists[side] = group[key][()][None] + moves
        windows[start] = Window(start, points, poses, wrists)
    return windows


def _fixed(points: np.ndarray) -> np.ndarray:
    """Canvas coordinates as cv2's fixed-point integers (``_SHIFT`` fractional bits)."""
    return np.rint(points * (1 << _SHIFT)).astype(np.int64)


def _draw_tracks(canvas: np.ndarray, window: Window, size: int, scale: int, depth_range: tuple[float, float]) -> None:
    """Trails first, then the dots, so a dot is never covered by another point's trail."""
    xy = _fixed(to_canvas(window.points[..., :2], size, scale))  # (L, N, 2)
    if window.points.shape[-1] == 3:
        colours = depth_colours(window.points[..., 2], *depth_range)  # (L, N, 3)
    else:
        colours = np.broadcast_to(np.array(TRACK_2D_RGB, np.uint8), (*window.points.shape[:2], 3))
    thickness = max(1, scale // 2)
    for k in range(1, xy.shape[0]):
        for n in range(xy.shape[1]):  # each segment takes the colour of the depth it reaches
            colour = tuple(int(c) for c in colours[k, n])
            cv2.line(canvas, tuple(xy[k - 1, n]), tuple(xy[k, n]), colour, thickness, cv2.LINE_8, _SHIFT)
    radius = 2 * scale << _SHIFT
    for n in range(xy.shape[1]):
        cv2.circle(canvas, tuple(xy[0, n]), radius, tuple(int(c) for c in colours[0, n]), -1, cv2.LINE_8, _SHIFT)


def _draw_wrists(canvas: np.ndarray, window: Window, size: int, scale: int) -> None:
    """A black-rimmed square at step 0 and a trail, in the hand's own colour."""
    half = 3 * scale
    for side, uvd in window.wrists.items():
        colour = WRIST_RGB[side]
        xy = _fixed(to_canvas(uvd[:, :2], size, scale))
        cv2.polylines(canvas, [xy.reshape(-1, 1, 2)], False, colour, max(1, scale), cv2.LINE_8, _SHIFT)
        x, y = (int(v) for v in np.rint(to_canvas(uvd[0, :2], size, scale)))
        cv2.rectangle(canvas, (x - half - 1, y - half - 1), (x + half + 1, y + half + 1), (0, 0, 0), -1)
        cv2.rectangle(canvas, (x - half, y - half), (x + half, y + half), colour, -1)


def camera_path(poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera's (x, z) path in camera 0 over a window, and its (x, z) viewing direction
    at the last step (the third column of the rotation, from the 6D columns 0 and 1).

    Examples:
        >>> poses = np.zeros((3, 9)); poses[:, 0] = 1; poses[:, 4] = 1
        >>> poses[:, 6:] = [[0, 0, 0], [0.01, 0, 0.02], [0.02, 0, 0.04]]
        >>> path, look = camera_path(poses)
        >>> path.tolist(), look.tolist()
        ([[0.0, 0.0], [0.01, 0.02], [0.02, 0.04]], [0.0, 1.0])
    """
    path = poses[:, [6, 8]].astype(np.float64)
    look = np.cross(poses[-1, 0:3], poses[-1, 3:6])
    return path, look[[0, 2]].astype(np.float64)


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    cv2.putText(canvas, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _draw_camera(panel: np.ndarray, poses: np.ndarray, top: int, side: int, font: float) -> int:
    """The camera's path from above in a ``side``-pixel box; returns the box's bottom row.

    The plot is drawn into a view of the box, so cv2 clips whatever would leave it.
    """
    path, look = camera_path(poses)
    left = (panel.shape[1] - side) // 2
    box = panel[top : top + side, left : left + side]
    cv2.rectangle(box, (0, 0), (side - 1, side - 1), (90, 90, 90), 1)
    # Metres to the box's edge (at least 5 cm), with room left for the arrow of side / 10.
    reach = 1.5 * max(0.05, float(np.abs(path).max()))
    pixels = side / 2 + path * np.array([1, -1]) * (side / 2) / reach
    cv2.polylines(box, [_fixed(pixels).reshape(-1, 1, 2)], False, TEXT_RGB, 1, cv2.LINE_AA, _SHIFT)
    cv2.circle(box, tuple(_fixed(pixels[0])), 2 << _SHIFT, (120, 120, 120), -1, cv2.LINE_AA, _SHIFT)
    tip = pixels[-1] + look * np.array([1, -1]) * side / 10
    cv2.arrowedLine(box, tuple(_fixed(pixels[-1])), tuple(_fixed(tip)), (255, 200, 0), 1, cv2.LINE_AA, _SHIFT, 0.3)
    moved = float(np.linalg.norm(path[-1] - path[0]) * 100)
    _text(panel, f"moved {moved:.1f} cm", (left, top + side + 14), font, TEXT_RGB)
    return top + side + 14


def _draw_depth_scale(panel: np.ndarray, top: int, depth_range: tuple[float, float], font: float) -> int:
    """A horizontal bar of the depth colours with the range's ends; returns its bottom row."""
    width = panel.shape[1] - 16
    bar = depth_colours(np.linspace(*depth_range, width), *depth_range)
    panel[top : top + 10, 8 : 8 + width] = bar[None]
    _text(panel, f"{depth_range[0]:g} m", (8, top + 24), font, TEXT_RGB)
    label = f"{depth_range[1]:g} m"
    (label_width, _), _ = cv2.getTextSize(label, _FONT, font, 1)
    _text(panel, label, (8 + width - label_width, top + 24), font, TEXT_RGB)
    return top + 24


def _panel(height: int, width: int, start: int, window: Window | None, depth_range: tuple[float, float]) -> np.ndarray:
    """The strip beside the frame: frame number, camera path, depth scale, wrist legend."""
    panel = np.full((height, width, 3), PANEL_RGB, np.uint8)
    font = 0.35 * max(1.0, height / MIN_CANVAS)
    line = int(16 * max(1.0, height / MIN_CANVAS))
    _text(panel, f"frame {start:04d}", (8, line), font, TEXT_RGB)
    if window is None:
        _text(panel, "no window starts here", (8, 2 * line), font, TEXT_RGB)
        return panel
    y = line + 8
    if window.poses is not None:
        _text(panel, "camera, from above", (8, y + line // 2), font, TEXT_RGB)
        y = _draw_camera(panel, window.poses, y + line, width - 24, font) + line // 2
    if window.points.shape[-1] == 3:
        _text(panel, "depth of the points", (8, y + line // 2), font, TEXT_RGB)
        y = _draw_depth_scale(panel, y + line, depth_range, font) + line // 2
    else:
        _text(panel, "2d tracks (no depth)", (8, y + line // 2), font, TEXT_RGB)
        y += line
    for side, colour in WRIST_RGB.items():
        y += line
        cv2.rectangle(panel, (8, y - 8), (16, y), colour, -1)
        kept = "" if side in window.wrists else " (not kept)"
        _text(panel, f"{side} wrist{kept}", (22, y), font, TEXT_RGB)
    return panel


def render_frame(frame: np.ndarray, start: int, window: Window | None, depth_range: tuple[float, float]) -> np.ndarray:
    """One picture: the ``(S, S, 3)`` RGB frame, scaled, with its window drawn in, and the panel.

    The result has even sides (what the MP4's yuv420p needs): the frame's canvas of side
    ``S * canvas_scale(S)`` at the top left, the panel to its right.
    """
    size = frame.shape[0]
    scale = canvas_scale(size)
    frame = np.ascontiguousarray(frame)
    canvas = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else frame.copy()
    if window is not None:
        _draw_tracks(canvas, window, size, scale, depth_range)
        _draw_wrists(canvas, window, size, scale)
    side = canvas.shape[0]
    height = side + side % 2
    width = side + side // 2
    width += width % 2
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:side, :side] = canvas
    picture[:, side:] = _panel(height, width - side, start, window, depth_range)
    return picture


def contact_sheet(tiles: Sequence[np.ndarray], columns: int = SHEET_COLUMNS) -> np.ndarray:
    """Pictures of one size in a grid, row by row (black where the last row is short).

    Examples:
        >>> contact_sheet([np.ones((2, 4, 3), np.uint8)] * 4).shape
        (4, 12, 3)
    """
    height, width = tiles[0].shape[:2]
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
    return sheet


def write_png(path: Path, picture: np.ndarray) -> None:
    """An RGB picture as a PNG, atomically."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def write_mp4(path: Path, pictures: Iterable[np.ndarray], fps: float = FPS) -> None:
    """RGB pictures of one even size as an H.264 MP4 (yuv420p), one at a time, atomically."""
    rate = Fraction(fps).limit_denominator(1_000_000)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, picture in enumerate(pictures):
            if index == 0:
                stream.height, stream.width = picture.shape[:2]
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))


def write_pictures(
    dataset_dir: Path, video_id: str, out_dir: Path, h5_settings: H5Settings, fps: float = FPS
) -> list[Path]:
    """Write ``<out_dir>/<video_id>.mp4`` and ``<out_dir>/<video_id>.png`` from the video's H5.

    Returns:
        The MP4's and the PNG's paths.

    Raises:
        FileNotFoundError: the dataset has no H5 of ``video_id``.
        OSError, KeyError: the H5 cannot be read or lacks a dataset of the layout.
    """
    h5_path = DatasetLayout(Path(dataset_dir)).h5(video_id)
    if not h5_path.is_file():
        raise FileNotFoundError(f"no H5 of video {video_id}: {h5_path} does not exist")
    depth_range = (h5_settings.depth_min_m, h5_settings.depth_max_m)
    out_dir = Path(out_dir)
    mp4, png = out_dir / f"{video_id}.mp4", out_dir / f"{video_id}.png"
    with h5py.File(h5_path, "r") as f:
        video = f[schema.root_path(schema.VIDEO)]
        windows = read_windows(f)

        def picture(t: int) -> np.ndarray:
            return render_frame(np.moveaxis(video[t], 0, -1), t, windows.get(t), depth_range)

        write_mp4(mp4, (picture(t) for t in range(video.shape[0])), fps)
        starts = sheet_starts(sorted(windows)) or [0]
        write_png(png, contact_sheet([picture(t) for t in starts]))
    return [mp4, png]


def pictures_dir(dataset_dir: Path) -> Path:
    """Where a build puts its pictures: ``<dataset_dir>/pictures``."""
    return Path(dataset_dir) / PICTURES_DIR


def write_run_pictures(dataset_dir: Path, video_ids: Sequence[str], h5_settings: H5Settings) -> list[VideoPictures]:
    """Pictures of a build's videos under :func:`pictures_dir`, for ``run.pictures_videos``.

    A picture that cannot be made is logged and skipped: pictures are for people, never a
    reason for a build to fail.
    """
    out = pictures_dir(dataset_dir)
    written = []
    for video_id in video_ids:
        try:
            mp4, png = write_pictures(dataset_dir, video_id, out, h5_settings)
        except (OSError, KeyError, ValueError) as exc:
            logger.warning("no pictures of video %s: %s", video_id, exc)
            continue
        written.append(VideoPictures(video_id, mp4, png))
    return written


def run_pictures(dataset_dir: Path, video_ids: Iterable[str]) -> list[VideoPictures]:
    """The pictures of ``video_ids`` that are current: both files exist, not older than the H5.

    A picture older than its H5 shows what an earlier build wrote, so it is not linked.
    """
    out, layout = pictures_dir(dataset_dir), DatasetLayout(Path(dataset_dir))
    found = []
    for video_id in video_ids:
        pictures = VideoPictures(video_id, out / f"{video_id}.mp4", out / f"{video_id}.png")
        try:
            built = os.stat(layout.h5(video_id)).st_mtime_ns
            if all(os.stat(p).st_mtime_ns >= built for p in pictures.paths):
                found.append(pictures)
        except FileNotFoundError:
            continue
    return found


def pictures_markdown(pictures: Sequence[VideoPictures]) -> list[str]:
    """The ``## Pictures`` section of the run summary: a line per video; none without pictures.

    The link text is the path itself, escaped (:mod:`trackset.reports.markdown`): a browser
    does not open ``file://`` links from the Prefect UI's page, so the path must be there to
    copy.

    Examples:
        >>> three = VideoPictures("00003", Path("/d/p/00003.mp4"), Path("/d/p/00003.png"))
        >>> print("\\n".join(pictures_markdown([three])))
        <BLANKLINE>
        ## Pictures
        <BLANKLINE>
        - 00003: MP4 [\\/d\\/p\\/00003\\.mp4](<file:///d/p/00003.mp4>), contact sheet [\\/d\\/p\\/00003\\.png](<file:///d/p/00003.png>)
    """
    if not pictures:
        return []
    lines = ["", "## Pictures", ""]
    for p in pictures:
        mp4, png = (path.resolve() for path in p.paths)
        mp4_link, png_link = (f"[{markdown.text(path)}](<{path.as_uri()}>)" for path in (mp4, png))
        lines.append(f"- {p.video_id}: MP4 {mp4_link}, contact sheet {png_link}")
    return lines
