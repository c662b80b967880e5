"""Synthetic corpus: real decodable videos, sidecars, byte-identical for a seed, other codecs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from trackset.synthetic.corpus import load_scene_for, make_corpus, sidecar_path, video_seed
from trackset.synthetic.scene import SceneSpec

FRAMES = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), 2, seed=0, num_frames=FRAMES)


def decode(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames]


def test_videos_decode_with_the_requested_frames_size_and_times(corpus):
    assert [p.name for p in corpus] == ["clip_000.mp4", "clip_001.mp4"]
    for path in corpus:
        images, times = decode(path)
        assert len(images) == FRAMES
        assert images[0].shape == (384, 512, 3)
        np.testing.assert_allclose(times, np.arange(FRAMES) / 10.0, atol=1e-6)


def test_sidecars_hold_the_scene_that_was_encoded(corpus):
    for index, path in enumerate(corpus):
        assert sidecar_path(path).is_file()
        spec = load_scene_for(path)
        assert spec == SceneSpec.from_seed(video_seed(0, index), num_frames=FRAMES)
        decoded = decode(path)[0][3].astype(np.float64)
        rendered = spec.render(3 / 10.0)[0].astype(np.float64)
        psnr = 10 * np.log10(255.0**2 / np.mean((decoded - rendered) ** 2))
        assert psnr > 30, psnr


def test_same_seed_gives_identical_bytes_other_seed_differs(corpus, tmp_path):
    again = make_corpus(tmp_path / "again", 2, seed=0, num_frames=FRAMES)
    other = make_corpus(tmp_path / "other", 1, seed=1, num_frames=FRAMES)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in corpus]
    assert other[0].read_bytes() != corpus[0].read_bytes()


def test_parallel_rendering_gives_the_same_bytes(tmp_path):
    serial = make_corpus(tmp_path / "serial", 2, seed=5, num_frames=3)
    parallel = make_corpus(tmp_path / "parallel", 2, seed=5, num_frames=3, processes=2)
    assert [p.read_bytes() for p in parallel] == [p.read_bytes() for p in serial]


@pytest.mark.parametrize(("codec", "container"), [("mpeg4", "avi"), ("libvpx-vp9", "webm")])
def test_other_codecs_and_containers(tmp_path, codec, container):
    (path,) = make_corpus(tmp_path, 1, seed=2, num_frames=5, codec=codec, container=container, width=320, height=240)
    assert path.suffix == f".{container}"
    images, times = decode(path)
    assert len(images) == 5 and images[0].shape == (240, 320, 3)
    np.testing.assert_allclose(times, np.arange(5) / 10.0, atol=2e-3)  # WebM stores milliseconds
    assert load_scene_for(path).width == 320


def test_missing_sidecar_names_the_file(tmp_path):
    video = tmp_path / "real_video.mp4"
    video.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"real_video\.scene\.json"):
        load_scene_for(video)
