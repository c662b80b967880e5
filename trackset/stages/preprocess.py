"""Preprocess stage: decode a source video, resample it in time, orient and resize it.

The output is ``frames/<vid>/frames.npy`` (T,H,W,3 uint8 RGB) and ``meta.json``
(:class:`~trackset.formats.intermediates.FramesMeta`), plus the script pipeline's
``frames/<vid>/<n:05d>.png`` when ``preprocess.write_png`` is set.

Choices, and why:

- **Resampling by timestamps, not by frame counting.** Output frame k stands for time
  ``t0 + k / fps`` where ``t0`` is the first decoded frame's presentation time. It shows the
  decoded frame whose presentation time is the latest one *at or before* that time (a
  sample-and-hold, like a display refreshing at ``fps``), where "at" allows 1 ms for the
  millisecond rounding of Matroska/WebM timestamps. "At or before" never shows a frame
  before it was captured, so a frame's content is never attributed to an earlier time than
  its real one; "nearest" would be at most half a source interval closer but would sometimes
  look into the future. The count is ``floor((t_last - t0) * fps) + 1`` (with the same 1 ms
  allowance). Times are compared
  as exact fractions of the stream time base, so a 30 fps source at 10 fps keeps exactly
  frames 0, 3, 6, ... and never drifts by float rounding. Variable frame rate needs nothing
  special: a long gap repeats the held frame. ``timestamps_s`` records the *true* source time
  of each kept frame (relative to ``t0``), so synthetic backends can evaluate their scene at
  exactly the content's time.
- **Orientation** comes from the display matrix FFmpeg attaches to decoded frames (PyAV's
  ``frame.side_data`` / ``frame.rotation``; the demuxer turns an MP4 ``rotate`` tag into
  one), with the stream's legacy ``rotate`` tag as a fallback. Rotations are rounded to
  quarter turns and a mirrored matrix adds a horizontal flip, like the ``ffmpeg`` CLI's
  autorotation.
  The first frame's orientation applies to the whole video, so every frame has one shape.
- **Resize** keeps the aspect ratio: the largest centred window of the target's aspect
  ratio is cut from the oriented frame and scaled to ``width x height`` (the script
  pipeline's "minimal crop"). Stretching instead would give non-square pixels, which the
  pinhole models downstream (ViPE intrinsics, back-projection) do not expect. Downscaling
  uses ``INTER_AREA`` (averages every source pixel, so fine texture does not alias into
  flicker that a point tracker would follow); upscaling uses ``INTER_CUBIC``.
- **Memory**: frames are decoded one at a time; only the latest decoded frame and the
  resized output frames are held.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import av.error
import cv2
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from trackset.domain import StageName, VideoRef
from trackset.errors import BadInputError, UnusableVideoError
from trackset.formats.intermediates import FramesMeta, write_frames
from trackset.stages.base import Stage
from trackset.stages.config import PreprocessConfig

_DISPLAYMATRIX = SideDataType.DISPLAYMATRIX


# Muxers quantise timestamps: Matroska and WebM store milliseconds, so a frame captured at
# 266.67 ms is stored as 267 ms (and the first frame's time is rounded too). A frame stamped
# at most this late still counts as "at" an output time; no camera's frame interval is that short.
TIMESTAMP_TOLERANCE_S = Fraction(1, 1000)


def output_frame_count(duration: Fraction, fps: Fraction, tolerance: Fraction = TIMESTAMP_TOLERANCE_S) -> int:
    """Number of output frames for decoded frames spanning ``duration`` seconds.

    ``duration`` is last minus first presentation time; output times are ``k / fps``.

    Examples:
        >>> output_frame_count(Fraction(29, 30), Fraction(10))  # 30 frames at 30 fps
        10
        >>> output_frame_count(Fraction(1), Fraction(10))  # 31 frames at 30 fps
        11
        >>> output_frame_count(Fraction(0), Fraction(10))  # a single frame
        1
    """
    return math.floor((duration + tolerance) * fps) + 1


def first_output_index(relative_time: Fraction, fps: Fraction, tolerance: Fraction = TIMESTAMP_TOLERANCE_S) -> int:
    """First output index whose time ``k / fps`` is at or after ``relative_time`` (less tolerance).

    A decoded frame at ``relative_time`` is shown for output indices from this one up to
    (excluding) the next decoded frame's first index.

    Examples:
        >>> first_output_index(Fraction(3, 10), Fraction(10))  # exactly on an output time
        3
        >>> first_output_index(Fraction(267, 1000), Fraction(15, 2))  # 8/30 s stored in ms
        2
        >>> first_output_index(Fraction(1, 20), Fraction(10))
        1
    """
    return math.ceil((relative_time - tolerance) * fps)


def display_orientation(matrix: np.ndarray | None, rotate_tag: str | None = None) -> tuple[int, bool]:
    """Quarter turns counter-clockwise and horizontal flip that display a decoded frame.

    Args:
        matrix: FFmpeg's 3x3 display matrix as 9 int32 (16.16 fixed point), or ``None``.
        rotate_tag: the legacy stream ``rotate`` tag (degrees clockwise), used only
            when there is no matrix.

    Returns:
        ``(k, hflip)``: rotate by ``k`` quarter turns counter-clockwise (``np.rot90``), then
        mirror left-right when ``hflip``. Angles are rounded to the nearest quarter turn.

    Examples:
        >>> display_orientation(np.array([0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30]))
        (1, False)
        >>> display_orientation(np.array([-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30]))
        (0, True)
        >>> display_orientation(None, "90")  # a phone held upright
        (3, False)
        >>> display_orientation(None)
        (0, False)
    """
    if matrix is None:
        clockwise = float(rotate_tag) if rotate_tag else 0.0
        return round(-clockwise / 90.0) % 4, False
    a, b, c, d = (float(x) for x in (matrix[0], matrix[1], matrix[3], matrix[4]))
    hflip = a * d - b * c < 0
    if hflip:
        # FFmpeg mirrors by negating column 0 (av_display_matrix_flip); undo it to read the angle.
        a, c = -a, -c
    counter_clockwise = -math.degrees(math.atan2(b, a))
    return round(counter_clockwise / 90.0) % 4, hflip


def cover_crop_box(src_width: int, src_height: int, dst_width: int, dst_height: int) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)`` of the largest centred window with the target's aspect ratio.

    Examples:
        >>> cover_crop_box(1920, 1080, 512, 384)  # 16:9 to 4:3 cuts the sides
        (240, 0, 1440, 1080)
        >>> cover_crop_box(1080, 1920, 512, 384)  # portrait cuts top and bottom
        (0, 555, 1080, 810)
        >>> cover_crop_box(640, 480, 512, 384)  # same aspect ratio: no crop
        (0, 0, 640, 480)
    """
    width = min(src_width, round(src_height * dst_width / dst_height))
    height = min(src_height, round(src_width * dst_height / dst_width))
    return (src_width - width) // 2, (src_height - height) // 2, width, height


def orient_crop_resize(image: np.ndarray, quarter_turns: int, hflip: bool, width: int, height: int) -> np.ndarray:
    """Display ``image`` (H,W,3) upright and fit it to ``width x height`` (crop, resize).

    Cropping and resizing happen in the decoded orientation, so only the small output is
    rotated (rotating a full-resolution frame would copy it once more).

    Examples:
        >>> img = np.zeros((4, 8, 3), np.uint8); img[0, 0] = 255  # top-left marker
        >>> out = orient_crop_resize(img, 1, False, 4, 8)  # a quarter turn counter-clockwise
        >>> out.shape, bool(out[-1, 0, 0] > 0)  # marker ends bottom-left
        ((8, 4, 3), True)
    """
    odd = quarter_turns % 2 == 1
    fit_w, fit_h = (height, width) if odd else (width, height)
    x0, y0, crop_w, crop_h = cover_crop_box(image.shape[1], image.shape[0], fit_w, fit_h)
    window = image[y0 : y0 + crop_h, x0 : x0 + crop_w]
    shrinking = fit_w * fit_h < crop_w * crop_h
    resized = cv2.resize(window, (fit_w, fit_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    oriented = np.rot90(resized, quarter_turns)
    if hflip:
        oriented = oriented[:, ::-1]
    return np.ascontiguousarray(oriented)


def parse_duration_tag(text: str) -> float | None:
    """Seconds from Matroska's per-track ``DURATION`` tag (``HH:MM:SS.fffffffff``).

    Examples:
        >>> parse_duration_tag("00:01:02.500000000")
        62.5
        >>> parse_duration_tag("garbage") is None
        True
    """
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


@dataclass
class _Decoded:
    """One decoded frame, kept only until a later frame replaces it."""

    frame: av.VideoFrame
    time: Fraction  # presentation time relative to the first frame
    resized: np.ndarray | None = None


class PreprocessStage(Stage[PreprocessConfig]):
    """Decode, resample to ``preprocess.fps``, orient and resize one source video."""

    name: ClassVar[StageName] = "preprocess"

    # A decoded video shorter than its declared duration by more than this is truncated.
    # Containers round durations and audio can outlast video a little; real truncation
    # (an interrupted copy or recording) loses far more.
    truncation_tolerance_s: ClassVar[float] = 0.5
    truncation_tolerance_fraction: ClassVar[float] = 0.05

    def outputs(self, video_id: str) -> list[Path]:
        return [self.work.frames_npy(video_id), self.work.frames_meta(video_id)]

    def intermediate_paths(self, video_id: str) -> list[Path]:
        """The whole ``frames/<vid>/`` folder, PNGs included."""
        return [self.work.frames_dir(video_id)]

    def frame_count(self, video: VideoRef) -> int | None:
        """Frames after resampling, from the duration the source declares (no frame is decoded)."""
        try:
            with av.open(str(video.source), mode="r") as container:
                if not container.streams.video:
                    return None
                stream = container.streams.video[0]
                declared = _declared_duration(container, stream)
                rate = stream.average_rate
        except (av.error.FFmpegError, OSError):
            return None
        if declared is None:
            return None
        # A declared duration includes the last frame's own interval; the resampling counts
        # from the first frame's time to the last's.
        span = Fraction(declared) - (1 / Fraction(rate) if rate else 0)
        return output_frame_count(max(span, Fraction(0)), Fraction(self.config.section.fps))

    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        vid, source = video.video_id, Path(video.source)
        self._check_readable(vid, source)
        try:
            container = av.open(str(source), mode="r")
        except (av.error.FFmpegError, OSError) as exc:
            raise BadInputError(vid, self.name, source, f"cannot open: {_reason(exc)}") from None
        with container:
            if not container.streams.video:
                if container.streams.audio:
                    raise UnusableVideoError(vid, self.name, source, "no video stream (audio only)")
                raise BadInputError(vid, self.name, source, "no audio or video stream (truncated or not a media file)")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                frames, times, info = self._resample(container, stream)
            except (av.error.FFmpegError, OSError) as exc:
                raise BadInputError(vid, self.name, source, f"corrupt video data: {_reason(exc)}") from None
            declared = _declared_duration(container, stream)
        if not frames:
            raise UnusableVideoError(vid, self.name, source, "no decodable video frame")
        decoded_span = float(info["source_duration_s"])
        if declared is not None and declared - decoded_span > max(
            self.truncation_tolerance_s, self.truncation_tolerance_fraction * declared
        ):
            raise BadInputError(
                vid, self.name, source, f"truncated: decoded {decoded_span:.2f} s of a declared {declared:.2f} s"
            )
        section = self.config.section
        out = np.stack(frames)
        meta = FramesMeta(
            video_id=vid,
            num_frames=len(frames),
            fps=section.fps,
            width=section.width,
            height=section.height,
            source=str(source),
            source_width=int(info["source_width"]),
            source_height=int(info["source_height"]),
            timestamps_s=[float(t) for t in times],
        )
        # PNGs first: meta.json, written last by write_frames, is what marks completeness.
        self._write_pngs(vid, out)
        write_frames(self.work, meta, out)
        return {"frames": meta.num_frames, **info}

    def _check_readable(self, vid: str, source: Path) -> None:
        """Fail early, with a clear reason, on what FFmpeg would report obscurely."""
        if not source.is_file():
            raise BadInputError(vid, self.name, source, "file is missing or not a regular file")
        if not os.access(source, os.R_OK):
            raise BadInputError(vid, self.name, source, "permission denied (file is not readable)")
        if source.stat().st_size == 0:
            raise BadInputError(vid, self.name, source, "file is empty (0 bytes)")

    def _resample(
        self, container: av.container.InputContainer, stream: av.video.stream.VideoStream
    ) -> tuple[list[np.ndarray], list[Fraction], dict[str, float | int | str]]:
        """Stream-decode and keep, for each output time, the latest frame at or before it."""
        section = self.config.section
        fps = Fraction(section.fps).limit_denominator(1_000_000)
        frames: list[np.ndarray] = []
        times: list[Fraction] = []
        held: _Decoded | None = None
        orientation = (0, False)
        coded_size = (0, 0)
        decoded = 0

        def show(decoded_frame: _Decoded, stop: int) -> None:
            """Show ``decoded_frame`` for every output index below ``stop`` (converted once)."""
            while len(frames) < stop:
                if decoded_frame.resized is None:
                    image = decoded_frame.frame.to_ndarray(format="rgb24")
                    decoded_frame.resized = orient_crop_resize(image, *orientation, section.width, section.height)
                frames.append(decoded_frame.resized)
                times.append(decoded_frame.time)

        for frame, time in _timed_frames(container, stream):
            if held is None:
                orientation = _frame_orientation(frame, stream)
                coded_size = (frame.width, frame.height)
            elif time <= held.time:
                continue  # duplicate or out-of-order timestamp: the held frame already covers it
            else:
                show(held, first_output_index(time, fps))
            held = _Decoded(frame, time)
            decoded += 1
        if held is None:
            return [], [], {}
        show(held, output_frame_count(held.time, fps))
        span = float(held.time)
        rate = stream.average_rate or stream.guessed_rate
        interval = span / (decoded - 1) if decoded > 1 else (1.0 / float(rate) if rate else 0.0)
        width, height = coded_size[::-1] if orientation[0] % 2 else coded_size
        info: dict[str, float | int | str] = {
            "source_frames": decoded,
            "source_duration_s": round(span + interval, 6),
            "source_width": width,
            "source_height": height,
            "rotation_ccw_deg": 90 * orientation[0],
            "hflip": int(orientation[1]),
        }
        return frames, times, info

    def _write_pngs(self, vid: str, frames: np.ndarray) -> None:
        """Script-pipeline ``<n:05d>.png`` files; stale ones from an earlier run are removed."""
        folder = self.work.frames_dir(vid)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("[0-9][0-9][0-9][0-9][0-9].png"):
            stale.unlink()
        if not self.config.section.write_png:
            return
        for index, frame in enumerate(frames):
            if not cv2.imwrite(str(folder / f"{index:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {folder / f'{index:05d}.png'}")


def _timed_frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[tuple[av.VideoFrame, Fraction]]:
    """Decoded frames with their presentation time relative to the first frame, exact.

    A frame without a timestamp (raw elementary streams such as ``.h264``) is placed one
    frame interval after the previous one, at FFmpeg's best guess of the rate (its
    ``average_rate`` of a raw stream is a 25 fps placeholder).
    """
    rate = stream.guessed_rate or stream.average_rate or stream.base_rate
    step = Fraction(1) / Fraction(rate) if rate else None
    origin: Fraction | None = None
    previous = Fraction(0)
    for frame in container.decode(stream):
        if frame.pts is not None and frame.time_base is not None:
            absolute = frame.pts * Fraction(frame.time_base)
            if origin is None:
                origin = absolute
            previous = absolute - origin
        elif origin is None:
            origin = Fraction(0)
        elif step is not None:
            previous = previous + step
        else:
            raise av.error.InvalidDataError(0, "video frames carry no timestamps and the stream no frame rate")
        yield frame, previous


def _frame_orientation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[int, bool]:
    # PyAV 18's stubs type Frame.side_data as a Mapping[str, object]; it is keyed by sidedata.Type
    # and holds buffers.
    side: Any = frame.side_data.get(_DISPLAYMATRIX)  # type: ignore[call-overload]
    matrix = np.frombuffer(bytes(side), dtype="<i4") if side is not None else None
    return display_orientation(matrix, stream.metadata.get("rotate"))


def _declared_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """The video track's duration as the container declares it, if it does.

    The container's own duration is the longest of its streams, so it stands for the
    video's only when the video is the sole stream (audio often outlasts video).

    A frame count in the header (AVI's ``dwLength``, MP4's sample table) declares a length
    too, and the longer of the two counts: FFmpeg derives an AVI stream's duration from the
    frames it could index, so a copy cut before its index declares only what is left, while
    its header still counts every frame the file was written with.
    """
    declared: float | None = None
    if stream.duration is not None and stream.time_base is not None:
        declared = float(stream.duration * stream.time_base)
    elif tag := stream.metadata.get("DURATION"):
        declared = parse_duration_tag(tag)
    elif container.duration is not None and len(container.streams) == 1:
        declared = container.duration / av.time_base
    rate = stream.average_rate
    if stream.frames and rate:
        by_count = stream.frames / float(rate)
        declared = by_count if declared is None else max(declared, by_count)
    return declared


def _reason(exc: BaseException) -> str:
    """First line of an exception's message, without FFmpeg's errno prefix."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).splitlines()[0]
