"""Preprocess stage against real files encoded with PyAV in a temporary directory.

Expected frames, times and crops are written out by hand from the encoded content (each
source frame carries its own grey level), never computed with the stage's helpers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import av.error
import cv2
import numpy as np
import pytest

from trackset.config.settings import Settings
from trackset.domain import VideoRef
from trackset.errors import BadInputError, UnusableVideoError, VideoError
from trackset.formats.intermediates import read_frames
from trackset.formats.layout import WorkLayout
from trackset.stages.preprocess import PreprocessStage
from trackset.stages.registry import stage_config

VID = "00007"


def grey(index: int) -> int:
    """Grey level of source frame ``index``: far enough apart to survive lossy codecs."""
    return 16 + 8 * (index % 30)


def encode(
    path: Path,
    images: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    *,
    codec: str = "ffv1",
    pix_fmt: str = "yuv444p",
    rate: int = 30,
    count: int | None = None,
    pts_ms: Sequence[int] | None = None,
    rotation: tuple[int, bool] | None = None,
) -> Path:
    """Encode RGB images into ``path`` (container chosen by extension)."""
    frames = [images(i) for i in range(count or 0)] if callable(images) else list(images)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        if pts_ms is None:
            stream = container.add_stream(codec, rate=rate)
        else:
            stream = container.add_stream(codec)
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.bit_rate = 4_000_000  # lossy codecs keep each frame's grey level
        if rotation is not None:
            if not hasattr(stream, "set_display_rotation"):  # trackset reads one from PyAV 14 on
                pytest.skip(f"PyAV {av.__version__} cannot write a display matrix (PyAV 18 can)")
            stream.set_display_rotation(rotation[0], hflip=rotation[1])
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def flat(index: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.full((height, width, 3), grey(index), np.uint8)


def make_stage(tmp_path: Path, **preprocess: object) -> PreprocessStage:
    options = {"fps": 10.0, "width": 64, "height": 48, **preprocess}
    return PreprocessStage(
        stage_config("preprocess", Settings(paths={"work_dir": tmp_path / "work"}, preprocess=options))
    )


def run(stage: PreprocessStage, source: Path) -> tuple[np.ndarray, dict]:
    stage.process(VideoRef(VID, source, "hash"))
    frames, meta = read_frames(stage.work, VID)
    return np.asarray(frames), meta.__dict__


def source_indices(frames: np.ndarray) -> list[int]:
    """Which source frame each output frame shows, from its mean grey level."""
    return [int(round((float(f.mean()) - 16) / 8)) for f in frames]


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt"),
    [
        ("clip.mp4", "libx264", "yuv420p"),
        ("clip.mov", "libx264", "yuv420p"),
        ("clip.avi", "mpeg4", "yuv420p"),
        ("clip.webm", "libvpx-vp9", "yuv420p"),
        ("clip.mkv", "mjpeg", "yuvj420p"),
        ("clip.mkv", "ffv1", "yuv444p"),
    ],
)
def test_codecs_and_containers_resample_30_to_10_fps(tmp_path: Path, name: str, codec: str, pix_fmt: str) -> None:
    source = encode(tmp_path / name, flat, codec=codec, pix_fmt=pix_fmt, count=30)
    frames, meta = run(make_stage(tmp_path), source)
    # 30 frames at 30 fps span 0..29/30 s: output times 0, 0.1, ..., 0.9 show frames 0, 3, ..., 27.
    assert frames.shape == (10, 48, 64, 3) and frames.dtype == np.uint8
    assert source_indices(frames) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    np.testing.assert_allclose(meta["timestamps_s"], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], atol=1e-9)
    assert (meta["num_frames"], meta["fps"], meta["width"], meta["height"]) == (10, 10.0, 64, 48)
    assert (meta["source"], meta["source_width"], meta["source_height"]) == (str(source), 64, 48)


@pytest.mark.parametrize(("name", "codec"), [("vfr.mkv", "ffv1"), ("vfr.mp4", "libx264")])
def test_variable_frame_rate_keeps_latest_frame_at_or_before_each_time(tmp_path: Path, name: str, codec: str) -> None:
    pts_ms = [0, 50, 250, 260, 500, 750, 950]
    source = encode(tmp_path / name, flat, codec=codec, count=len(pts_ms), pts_ms=pts_ms, pix_fmt="yuv420p")
    frames, meta = run(make_stage(tmp_path), source)
    # t=0.0->f0, 0.1->f1 (0.05), 0.2->f1, 0.3->f3 (0.26), 0.4->f3, 0.5->f4, 0.6, 0.7->f4, 0.8, 0.9->f5 (0.75)
    assert source_indices(frames) == [0, 1, 1, 3, 3, 4, 4, 4, 5, 5]
    np.testing.assert_allclose(
        meta["timestamps_s"], [0.0, 0.05, 0.05, 0.26, 0.26, 0.5, 0.5, 0.5, 0.75, 0.75], atol=1e-9
    )


def test_frames_without_timestamps_are_spaced_by_the_frame_rate(tmp_path: Path) -> None:
    path = tmp_path / "raw.h264"  # an elementary stream: no container, no timestamps
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(30):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(flat(index), format="rgb24")))
        container.mux(stream.encode())
    frames, meta = run(make_stage(tmp_path), path)
    assert source_indices(frames) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]
    np.testing.assert_allclose(meta["timestamps_s"], [k / 10 for k in range(10)], atol=1e-9)


def test_fractional_target_rate_never_drifts(tmp_path: Path) -> None:
    source = encode(tmp_path / "clip.mkv", flat, count=30)
    frames, meta = run(make_stage(tmp_path, fps=7.5), source)
    # Output times k/7.5 = 0, 0.1333, 0.2667, ... ; frame j is at j/30, so frame 4k exactly.
    assert source_indices(frames) == [0, 4, 8, 12, 16, 20, 24, 28]
    # The recorded times are the stored ones: Matroska keeps milliseconds.
    np.testing.assert_allclose(meta["timestamps_s"], [k * 4 / 30 for k in range(8)], atol=5e-4)


def marker(height: int = 32, width: int = 64) -> np.ndarray:
    """Black image with a white block in the top-left corner: no symmetry hides a rotation."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:8, :8] = 255
    return image


def white_corner(frame: np.ndarray) -> str:
    """Which corner of an output frame holds the white block."""
    h, w = frame.shape[:2]
    corners = {
        "top-left": frame[: h // 4, : w // 4],
        "top-right": frame[: h // 4, -w // 4 :],
        "bottom-left": frame[-h // 4 :, : w // 4],
        "bottom-right": frame[-h // 4 :, -w // 4 :],
    }
    return max(corners, key=lambda name: float(corners[name].mean()))


@pytest.mark.parametrize(
    ("rotation", "out_size", "corner"),
    [
        ((0, False), (64, 32), "top-left"),
        ((90, False), (32, 64), "bottom-left"),  # 90 deg counter-clockwise
        ((-90, False), (32, 64), "top-right"),  # a phone held upright ("rotate" = 90 clockwise)
        ((180, False), (64, 32), "bottom-right"),
        ((0, True), (64, 32), "top-right"),  # mirrored
        ((90, True), (32, 64), "bottom-right"),  # rotated, then mirrored
    ],
)
def test_rotation_metadata_is_honoured(
    tmp_path: Path, rotation: tuple[int, bool], out_size: tuple[int, int], corner: str
) -> None:
    source = encode(tmp_path / "rot.mp4", [marker()] * 3, codec="libx264", pix_fmt="yuv420p", rotation=rotation)
    width, height = out_size
    frames, meta = run(make_stage(tmp_path, width=width, height=height), source)
    assert frames.shape[1:] == (height, width, 3)
    assert white_corner(frames[0]) == corner
    assert (meta["source_width"], meta["source_height"]) == out_size


@pytest.mark.parametrize(
    ("src_size", "crop"),
    [
        # (width, height) of the source, then the (x0, y0, w, h) window of aspect 4:3 it keeps
        ((160, 90), (20, 0, 120, 90)),  # 16:9: sides cut
        ((90, 160), (0, 46, 90, 68)),  # 9:16 portrait: top and bottom cut (68 = round(67.5))
        ((100, 100), (0, 12, 100, 75)),  # square
        ((128, 96), (0, 0, 128, 96)),  # already 4:3: whole frame
        ((32, 24), (0, 0, 32, 24)),  # smaller than the target: upscaled
    ],
)
def test_non_matching_aspect_is_centre_cropped_then_resized(
    tmp_path: Path, src_size: tuple[int, int], crop: tuple[int, int, int, int]
) -> None:
    width, height = src_size
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    source = encode(tmp_path / "src.mkv", [image] * 2)
    frames, meta = run(make_stage(tmp_path), source)
    x0, y0, w, h = crop
    shrink = w > 64
    expected = cv2.resize(
        image[y0 : y0 + h, x0 : x0 + w], (64, 48), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )
    assert frames.shape == (1, 48, 64, 3)
    # ffv1 yuv444p round-trips RGB to within a couple of levels.
    assert np.abs(frames[0].astype(int) - expected.astype(int)).mean() < 2.0
    assert (meta["source_width"], meta["source_height"]) == src_size


def test_pngs_written_for_script_compatibility_and_stale_ones_removed(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, write_png=True)
    folder = stage.work.frames_dir(VID)
    folder.mkdir(parents=True)
    (folder / "00099.png").write_bytes(b"stale")
    frames, _ = run(stage, encode(tmp_path / "clip.mkv", flat, count=30))
    files = sorted(p.name for p in folder.glob("*.png"))
    assert files == [f"{i:05d}.png" for i in range(10)]
    png = cv2.cvtColor(cv2.imread(str(folder / "00003.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(png, frames[3])


def test_outputs_are_frames_npy_and_meta(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    work = WorkLayout(tmp_path / "work")
    assert stage.outputs(VID) == [work.frames_npy(VID), work.frames_meta(VID)]
    info = stage.process(VideoRef(VID, encode(tmp_path / "clip.mkv", flat, count=30), "hash"))
    assert all(p.is_file() for p in stage.outputs(VID))
    assert info["frames"] == 10 and info["source_frames"] == 30


def test_single_frame_video_gives_one_frame(tmp_path: Path) -> None:
    frames, meta = run(make_stage(tmp_path), encode(tmp_path / "one.mkv", flat, count=1))
    assert frames.shape[0] == 1 and meta["timestamps_s"] == [0.0]


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _long_clip(path: Path) -> Path:
    """3 s at 30 fps, each frame textured so that every packet carries real data."""
    rng = np.random.default_rng(1)
    return encode(path, lambda i: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), count=90, pix_fmt="yuv420p")


def _audio_only(path: Path, codec: str) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000)
        stream.layout = "mono"
        planar = codec == "aac"
        samples = np.zeros((1, 16000), np.float32 if planar else np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp" if planar else "s16", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _video_stream_without_frames(path: Path) -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=30)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.start_encoding()
    container.close()
    return path


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (lambda d: _truncate(_long_clip(d / "cut.mkv"), 0.5), BadInputError, "truncated"),
        (
            lambda d: _truncate(encode(d / "cut.webm", flat, codec="libvpx-vp9", pix_fmt="yuv420p", count=90), 0.5),
            BadInputError,
            "truncated",
        ),
        (
            lambda d: _truncate(encode(d / "cut.mp4", flat, codec="libx264", pix_fmt="yuv420p", count=30), 0.6),
            BadInputError,
            "no audio or video stream",
        ),
        (
            lambda d: _truncate(encode(d / "cut.avi", flat, codec="mpeg4", pix_fmt="yuv420p", count=30), 0.6),
            BadInputError,
            "cannot open|corrupt",
        ),
        (lambda d: _write(d / "empty.mp4", b""), BadInputError, "empty"),
        (lambda d: _write(d / "notes.mp4", b"not a video\n" * 50), BadInputError, "cannot open"),
        (lambda d: d / "missing.mp4", BadInputError, "missing"),
        (lambda d: _audio_only(d / "speech.mp4", "aac"), UnusableVideoError, "no video stream"),
        (lambda d: _audio_only(d / "speech.wav", "pcm_s16le"), UnusableVideoError, "no video stream"),
        (lambda d: _video_stream_without_frames(d / "hollow.avi"), UnusableVideoError, "no decodable video frame"),
    ],
    ids=[
        "truncated-mkv",
        "truncated-webm",
        "truncated-mp4",
        "truncated-avi",
        "zero-length",
        "text-as-mp4",
        "missing",
        "audio-only-aac",
        "audio-only-wav",
        "no-frames",
    ],
)
def test_unusable_inputs_fail_the_video_with_a_typed_error(
    tmp_path: Path, make: Callable[[Path], Path], error: type[VideoError], reason: str
) -> None:
    source = make(tmp_path)
    stage = make_stage(tmp_path)
    with pytest.raises(error) as caught:
        stage.process(VideoRef(VID, source, "hash"))
    message = str(caught.value)
    assert f"video {VID}" in message and "stage preprocess" in message and str(source) in message
    assert re.search(reason, caught.value.reason)
    assert not stage.work.frames_meta(VID).exists()


def test_unreadable_file_fails_with_bad_input(tmp_path: Path) -> None:
    source = encode(tmp_path / "locked.mkv", flat, count=3)
    source.chmod(0)
    try:
        if os.access(source, os.R_OK):
            pytest.skip("running as a user (root) who can read a mode-000 file")
        with pytest.raises(BadInputError, match="permission denied"):
            make_stage(tmp_path).process(VideoRef(VID, source, "hash"))
    finally:
        source.chmod(0o644)


def test_permission_error_from_ffmpeg_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure when only FFmpeg notices it (e.g. a network mount denying reads)."""
    source = encode(tmp_path / "clip.mkv", flat, count=3)

    def denied(*_args: object, **_kwargs: object) -> None:
        raise av.error.PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr(av, "open", denied)
    with pytest.raises(BadInputError, match="cannot open: Permission denied"):
        make_stage(tmp_path).process(VideoRef(VID, source, "hash"))
