"""Importing the script pipeline's files: root/video and root/depth bit-identical to its own
``create_h5_dataset.py``, every PNG decoded once, in threads, to the same pixels.

The expectations are the script's formulas written out here with cv2 and numpy (its
``center_crop_and_resize`` with INTER_LANCZOS4 / INTER_NEAREST and its ``clip_depth``), on
a small fixture in the script's formats; never trackset's own helpers.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from trackset.cluster.worker_cache import get_stage, release_stages
from trackset.config.settings import load_settings
from trackset.dataset.importer import scan_intermediates
from trackset.errors import BadInputError
from trackset.formats import intermediates
from trackset.stages.registry import stage_config

NUM_FRAMES, HEIGHT, WIDTH, SIZE = 12, 384, 512, 256
DEPTH_MIN, DEPTH_MAX = 0.1, 2.5  # the h5 defaults, the script config's depth_min / depth_max


def write_script_video(out: Path, video_id: str, seed: int) -> None:
    """One video as the scripts store it: PNG frames, a compressed depth npz, numpy ``.pt``
    files (a static camera, so ``window_poses`` are identities; points straight ahead)."""
    rng = np.random.default_rng(seed)
    frames_dir = out / "frames" / video_id
    frames_dir.mkdir(parents=True)
    for number in range(NUM_FRAMES):
        # Smooth structure plus noise: Lanczos ringing and PNG filters both get exercised.
        ramp = np.linspace(0, 255, WIDTH, dtype=np.float64)[None, :, None] * np.ones((HEIGHT, 1, 3))
        noise = rng.integers(0, 60, (HEIGHT, WIDTH, 3))
        bgr = np.clip(ramp + noise + 7 * number, 0, 255).astype(np.uint8)
        cv2.imwrite(str(frames_dir / f"{number:05d}.png"), bgr)
    depth = rng.uniform(0.02, 3.2, (NUM_FRAMES, HEIGHT, WIDTH)).astype(np.float16)
    depth[:, :5] = 0.0  # invalid rows
    depth[:, 5, :7] = np.nan
    depth[:, 6, :7] = np.inf
    intrinsics = np.array([[400.0, 0.0, WIDTH / 2], [0.0, 400.0, HEIGHT / 2], [0.0, 0.0, 1.0]], np.float32)
    eye = np.tile(np.eye(4, dtype=np.float32), (NUM_FRAMES, 1, 1))
    for folder in ("vipe", "tracks_3d", "hand_poses"):
        (out / folder).mkdir(exist_ok=True)
    cameras = np.tile(intrinsics, (NUM_FRAMES, 1, 1))
    np.savez_compressed(out / "vipe" / f"{video_id}.npz", depths=depth, intrinsics=cameras, extrinsics=eye)
    windows = [(s, s + 10) for s in range(NUM_FRAMES - 9)]
    points = np.stack([rng.uniform(-0.3, 0.3, 16), rng.uniform(-0.2, 0.2, 16), rng.uniform(0.5, 2.0, 16)], axis=1)
    tracks = {
        "tracks": [torch.from_numpy(np.tile(points, (10, 1, 1)).astype(np.float32))[None] for _ in windows],
        "windows": windows,
        "window_poses": [eye[:10] for _ in windows],
        "intrinsics": intrinsics,
        "video_name": video_id,
        "window_length": 10,
        "stride": 1,
        "grid_size": 64,
        "num_frames": NUM_FRAMES,
        "resolution": (HEIGHT, WIDTH),
    }
    torch.save(tracks, out / "tracks_3d" / f"{video_id}.pt")


def script_video(frames_dir: Path) -> np.ndarray:
    """``process_video``'s ``video_array``: imread, BGR->RGB, centre crop, Lanczos, (T,3,S,S)."""
    processed = []
    for file in sorted(frames_dir.glob("*.png")):
        frame = cv2.cvtColor(cv2.imread(str(file)), cv2.COLOR_BGR2RGB)
        h, w = frame.shape[:2]
        crop = min(h, w)
        x0, y0 = (w - crop) // 2, (h - crop) // 2
        square = frame[y0 : y0 + crop, x0 : x0 + crop]
        processed.append(cv2.resize(square, (SIZE, SIZE), interpolation=cv2.INTER_LANCZOS4))
    return np.transpose(np.stack(processed), (0, 3, 1, 2))


def script_depth(npz: Path) -> np.ndarray:
    """``process_video``'s ``depth_array``: float32, crop, nearest resize, ``clip_depth``."""
    depths = np.load(npz)["depths"].astype(np.float32)
    crop = min(HEIGHT, WIDTH)
    x0, y0 = (WIDTH - crop) // 2, (HEIGHT - crop) // 2
    out = []
    for depth in depths:
        d = cv2.resize(depth[y0 : y0 + crop, x0 : x0 + crop], (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        d = np.where(np.isfinite(d), d, 0.0)
        valid = d > 0
        d = np.where(valid & (d < DEPTH_MIN), DEPTH_MIN, d)
        d = np.where(valid & (d > DEPTH_MAX), DEPTH_MAX, d)
        out.append(d)
    return np.stack(out).astype(np.float32)


@pytest.fixture
def script_dir(tmp_path: Path) -> Path:
    out = tmp_path / "script-output"
    for index in range(2):
        write_script_video(out, f"{index:05d}", seed=index)
    return out


def test_imported_video_and_depth_are_bit_identical_to_the_script(script_dir, tmp_path, monkeypatch):
    reads: Counter[str] = Counter()
    imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *flags: reads.update([path]) or imread(path, *flags))
    settings = load_settings(overrides={"paths": {"work_dir": str(script_dir), "dataset_dir": str(tmp_path / "ds")}})
    stage = get_stage("h5_build", stage_config("h5_build", settings))
    try:
        videos = scan_intermediates(script_dir).videos
        assert [video.video_id for video in videos] == ["00000", "00001"]
        for video in videos:
            assert stage.run(video).status == "done"
    finally:
        release_stages("h5_build")
    pngs = sorted(str(p) for p in script_dir.glob("frames/*/*.png"))
    assert sorted(reads) == pngs and set(reads.values()) == {1}  # every frame decoded exactly once
    for video in videos:
        vid = video.video_id
        with h5py.File(tmp_path / "ds" / f"{vid}.hdf5") as f:
            video_array, depth = f["root/video"][()], f["root/depth"][()]
        expected_video = script_video(script_dir / "frames" / vid)
        expected_depth = script_depth(script_dir / "vipe" / f"{vid}.npz")
        assert video_array.dtype == expected_video.dtype and depth.dtype == expected_depth.dtype == np.float32
        np.testing.assert_array_equal(video_array, expected_video, err_msg=vid)
        assert depth.tobytes() == expected_depth.tobytes(), vid  # bit for bit, zeros included


def test_png_frames_decode_in_threads_once_each_to_the_same_pixels(script_dir, monkeypatch):
    folder = script_dir / "frames" / "00000"
    expected = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.png"))])
    reads: Counter[str] = Counter()
    threads: set[str] = set()
    imread = cv2.imread

    def counting(path: str, *flags: int) -> np.ndarray | None:
        reads.update([path])
        threads.add(threading.current_thread().name)
        return imread(path, *flags)

    monkeypatch.setattr(cv2, "imread", counting)
    monkeypatch.setattr(intermediates, "png_decode_threads", lambda: 4)
    frames = intermediates._read_png_frames(folder, "00000")
    assert frames.dtype == np.uint8 and frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, expected)
    assert len(reads) == NUM_FRAMES and set(reads.values()) == {1}
    assert any(name.startswith("png-00000") for name in threads)  # decoded in the pool


@pytest.mark.parametrize("damage", ["truncate", "resize"])
def test_a_bad_png_fails_its_video_naming_it(script_dir, damage):
    folder = script_dir / "frames" / "00000"
    bad = folder / "00007.png"
    if damage == "truncate":
        bad.write_bytes(b"not a png")
    else:
        cv2.imwrite(str(bad), np.zeros((HEIGHT, WIDTH + 2, 3), np.uint8))
    with pytest.raises(BadInputError, match="unreadable PNG" if damage == "truncate" else "00007.png is") as caught:
        intermediates._read_png_frames(folder, "00000")
    assert caught.value.video_id == "00000"
