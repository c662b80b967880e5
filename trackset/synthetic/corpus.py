"""A corpus of real encoded videos of synthetic scenes, each with its ground truth beside it.

``make_corpus`` renders :class:`~trackset.synthetic.scene.SceneSpec` clips and encodes them
with PyAV, so the pipeline sees ordinary video files (decoding, timestamps, codecs and all),
while the synthetic backends read the truth from the ``<stem>.scene.json`` sidecar.

Bytes are deterministic for a given seed and library build: every encoder runs with one
thread (x264's output depends on its thread count, so "auto" would differ between machines),
the muxer is asked for bit-exact output (no encoder version string), and nothing carries a
wall-clock time.
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np

from trackset.formats.clip_metadata import METADATA_FILE
from trackset.formats.layout import write_text_atomic
from trackset.synthetic.scene import SceneSpec

SIDECAR_SUFFIX = ".scene.json"
#: The noun of every synthetic clip: its manipulated objects are boxes (what SAM3 is prompted with).
OBJECT_NOUN = "box"

# Per-codec encoder options: visually clean output at modest size and speed. Codecs not
# listed get a fixed bit rate instead.
CODEC_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"crf": "18", "preset": "veryfast"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "4M"},
}
DEFAULT_BIT_RATE = 4_000_000


def video_seed(seed: int, index: int) -> int:
    """Scene seed of video ``index`` of a corpus: corpora with different seeds never share clips.

    Examples:
        >>> video_seed(0, 1) == video_seed(1, 0)
        False
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sidecar_path(video_path: Path) -> Path:
    """``clip_000.mp4`` -> ``clip_000.scene.json`` beside it.

    Examples:
        >>> sidecar_path(Path("videos/clip_000.mp4")).as_posix()
        'videos/clip_000.scene.json'
    """
    return video_path.with_name(video_path.stem + SIDECAR_SUFFIX)


def write_scene_sidecar(video_path: Path, spec: SceneSpec) -> Path:
    """Write ``spec`` as the sidecar of ``video_path``; returns the sidecar's path."""
    path = sidecar_path(Path(video_path))
    path.write_text(spec.to_json())
    return path


def load_scene_for(video_path: Path | str) -> SceneSpec:
    """The scene a synthetic video was rendered from.

    Raises:
        FileNotFoundError: naming the missing sidecar (the video is not a synthetic one).
    """
    path = sidecar_path(Path(video_path))
    if not path.is_file():
        raise FileNotFoundError(
            f"no scene sidecar {path} for {video_path}: synthetic backends need the "
            "<stem>.scene.json written by make_corpus (use backend: real for real videos)"
        )
    return SceneSpec.from_json(path.read_text())


def describe_scene(spec: SceneSpec) -> str:
    """A clip's language description, from what its scene holds.

    Examples:
        >>> describe_scene(SceneSpec.from_seed(0))
        'two hands reach past 3 textured boxes on a table'
    """
    count = len(spec.objects)
    hands = {0: "no hands", 1: "one hand", 2: "two hands"}[len(spec.hands)]
    return f"{hands} reach past {count} textured {OBJECT_NOUN if count == 1 else OBJECT_NOUN + 'es'} on a table"


def write_metadata(out_dir: Path, videos: list[Path], specs: list[SceneSpec]) -> Path:
    """``metadata.csv`` beside the clips, as the script pipeline's: ``clip_id,text,noun``,
    the clip id being the file's stem (``metadata.clip_id: source``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["clip_id", "text", "noun"])
    for path, spec in zip(videos, specs, strict=True):
        writer.writerow([path.stem, describe_scene(spec), OBJECT_NOUN])
    target = Path(out_dir) / METADATA_FILE
    write_text_atomic(target, buffer.getvalue())
    return target


def encode_scene(spec: SceneSpec, path: Path, codec: str = "libx264", container: str | None = None) -> Path:
    """Render every frame of ``spec`` and encode it to ``path`` (yuv420p); writes the sidecar too.

    Frames are rendered and encoded one at a time, so memory stays at one frame.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(spec.fps).limit_denominator(1_000_000)
    with av.open(str(path), mode="w", format=container, options={"fflags": "+bitexact"}) as output:
        stream = output.add_stream(codec, rate=rate)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"codec {codec!r} is not a video codec")
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        if codec in CODEC_OPTIONS:
            stream.options = dict(CODEC_OPTIONS[codec])
        else:
            stream.bit_rate = DEFAULT_BIT_RATE
        for index, time in enumerate(spec.frame_times()):
            frame = av.VideoFrame.from_ndarray(spec.render(float(time))[0], format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    write_scene_sidecar(path, spec)
    return path


def make_corpus(
    out_dir: Path,
    num_videos: int,
    seed: int = 0,
    num_frames: int = 40,
    fps: float = 10.0,
    codec: str = "libx264",
    container: str = "mp4",
    width: int = 512,
    height: int = 384,
    processes: int = 1,
    metadata: bool = False,
) -> list[Path]:
    """Write ``clip_000.<container>``, ... with their ``.scene.json`` sidecars into ``out_dir``.

    Args:
        out_dir: created if missing.
        num_videos: how many clips.
        seed: corpus seed; clip ``i`` uses scene seed :func:`video_seed` ``(seed, i)``.
        num_frames, fps, width, height: of every clip.
        codec, container: any pair PyAV's FFmpeg can write, e.g. ``libx264``/``mp4``,
            ``mpeg4``/``avi``, ``libvpx-vp9``/``webm``.
        processes: clips rendered in parallel (each clip is one process's work, so the bytes
            do not depend on this). Workers are spawned, so the caller's ``__main__`` must be
            importable (a script or module, not code piped to ``python -``).
        metadata: also write ``metadata.csv`` (a description and the noun ``box`` per clip,
            :func:`write_metadata`), so object masks get their prompt and ``h5.include_text``
            its text.

    Returns:
        The video paths, in clip order.
    """
    out_dir = Path(out_dir)
    specs = [SceneSpec.from_seed(video_seed(seed, i), num_frames, fps, width, height) for i in range(num_videos)]
    paths = [out_dir / f"clip_{i:03d}.{container}" for i in range(num_videos)]
    if metadata:
        write_metadata(out_dir, paths, specs)
    if processes <= 1 or num_videos <= 1:
        return [encode_scene(spec, path, codec, container) for spec, path in zip(specs, paths, strict=True)]
    # spawn, not fork: the caller may hold torch or thread pools that a fork would copy half-way.
    with ProcessPoolExecutor(min(processes, num_videos), mp_context=get_context("spawn")) as pool:
        return list(pool.map(encode_scene, specs, paths, [codec] * num_videos, [container] * num_videos))
