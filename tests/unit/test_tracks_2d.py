"""2D tracks (``h5.track_type: 2d``) from masks to the H5, the statistics and y2r's reader.

Expected positions are worked out here from the scene's parameters: a query pixel of the
window's first frame is back-projected with the scene's depth, attached to the body the
scene shows there, moved with it and projected with each step's own camera; the H5 holds it
in the 96x96 centre crop of the 128x96 frame.
"""

from __future__ import annotations

from datetime import datetime, timezone

import h5py
import numpy as np
import pytest
import yaml

from tests.unit.test_mask_stages import add_video, box_pixels, run, settings_for
from tests.y2r_reader import load_y2r
from trackset.dataset.record import RunInfo, write_dataset_files
from trackset.dataset.validate import validate_dataset
from trackset.formats.layout import DatasetLayout
from trackset.synthetic.scene import SceneSpec

W, H, FRAMES, LENGTH, S = 128, 96, 12, 6, 48
X0, CROP = 16, 96  # the centred square crop of 128x96


def two_d_settings(root, **extra):
    sections = {
        "h5": {"track_type": "2d", "target_size": S},
        "tracks_2d": {"window_length": LENGTH, "grid_size": 48},
        **extra,
    }
    return settings_for(root, **sections)


@pytest.fixture(scope="module")
def scene() -> SceneSpec:
    return SceneSpec.from_seed(21, num_frames=FRAMES, width=W, height=H)


@pytest.fixture(scope="module")
def built(tmp_path_factory, scene):
    root = tmp_path_factory.mktemp("two_d")
    settings = two_d_settings(root, h5={"track_type": "2d", "target_size": S, "include_text": True})
    video = add_video(settings, scene, "00000", "clip_000")
    (settings.paths.videos_dir / "metadata.csv").write_text("clip_id,text,noun\nclip_000,push the box,box\n")
    infos = run(settings, ["object_masks", "tracks_2d", "h5_build"], video)
    write_dataset_files(
        DatasetLayout(settings.paths.dataset_dir), settings.statistics.std_floor, RunInfo(), datetime.now(timezone.utc)
    )
    return settings, infos


def _true_uv(scene: SceneSpec, start: int, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``(L, N, 2)`` crop (u, v) of the points under pixels (col, row) of frame ``start``."""
    times = scene.frame_times()
    k = np.array([[scene.fx, 0.0, scene.cx], [0.0, scene.fy, scene.cy], [0.0, 0.0, 1.0]])
    depth, ids = scene.render_depth(float(times[start]))
    z = depth[row, col].astype(np.float64)
    camera = np.c_[(col - scene.cx) / scene.fx * z, (row - scene.cy) / scene.fy * z, z, np.ones_like(z)]
    extrinsics, bodies = scene.extrinsics(times), scene.body_poses(times)
    world = np.linalg.inv(extrinsics[start]) @ camera.T
    out = np.zeros((LENGTH, len(z), 2))
    for n, body in enumerate(ids[row, col]):
        local = np.linalg.inv(bodies[body][start]) @ world[:, n]
        for j in range(LENGTH):
            x, y, zj = (extrinsics[start + j] @ bodies[body][start + j] @ local)[:3]
            px = k @ np.array([x / zj, y / zj, 1.0])
            out[j, n] = [(px[0] - X0) / CROP, px[1] / CROP]
    return out


def test_the_2d_h5_holds_the_scenes_projected_tracks(built, scene):
    settings, infos = built
    objects = box_pixels(scene)
    with h5py.File(settings.paths.dataset_dir / "00000.hdf5") as f:
        root = f["root"]
        assert sorted(root) == ["num_frames", "num_track_ts", "text", "track_type", "tracks", "video"]
        assert root["track_type"][()] == b"2d" and root["num_track_ts"][()] == LENGTH
        assert root["video"].shape == (FRAMES, 3, S, S)
        assert sorted(root["tracks"]) == [f"frame_{t:04d}" for t in range(FRAMES - LENGTH + 1)]
        checked = 0
        for start in range(FRAMES - LENGTH + 1):
            group = root["tracks"][f"frame_{start:04d}"]
            assert sorted(group) == ["displacements", "query_coords"]
            query, disp = group["query_coords"][()], group["displacements"][()]
            assert query.dtype == np.float32 and query.shape[1] == 2 and disp.shape == (LENGTH, len(query), 2)
            x, y = query[:, 0].astype(np.float64) * CROP + X0, query[:, 1].astype(np.float64) * CROP
            col, row = np.rint(x).astype(int), np.rint(y).astype(int)
            np.testing.assert_allclose(np.c_[x, y], np.c_[col, row], atol=1e-4)  # grid cells, on pixels
            assert objects[start][row, col].all()  # every query on the object
            expected = _true_uv(scene, start, col, row)
            np.testing.assert_allclose(query + disp, expected, atol=2e-6)
            np.testing.assert_array_equal(disp[0], 0.0)
            checked += len(query)
    assert checked > 50 and infos["h5_build"]["text"] == 1


def test_2d_statistics_have_exactly_the_scripts_2d_keys(built):
    settings, _ = built
    stats = yaml.safe_load((settings.paths.dataset_dir / "normalization_stats.yaml").read_text())
    assert list(stats) == [
        "imagenet_mean",
        "imagenet_std",
        "track_type",
        "track_dim",
        "displacement_mean",
        "displacement_std",
        "displacement_num_samples",
        "std_floored",
    ]
    assert stats["track_type"] == "2d" and stats["track_dim"] == 2 and len(stats["displacement_mean"]) == 2
    with h5py.File(settings.paths.dataset_dir / "00000.hdf5") as f:
        rows = np.concatenate([g["displacements"][()].reshape(-1, 2) for g in f["root/tracks"].values()])
    assert stats["displacement_num_samples"] == len(rows)
    np.testing.assert_allclose(stats["displacement_mean"], rows.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["displacement_std"], rows.astype(np.float64).std(axis=0), rtol=1e-12)


def test_y2r_reader_loads_a_2d_dataset(built):
    settings, _ = built
    loaded = load_y2r(settings.paths.dataset_dir, num_track_ids=4, track_type="2d", text_mode=True)
    assert loaded.stats["track_type"] == "2d" and loaded.samples
    sample = loaded.sample(0, num_track_ts=LENGTH)
    assert sorted(sample) == ["displacements", "query_coords", "video"]
    assert sample["query_coords"].shape[1] == 2 and sample["displacements"].shape[::2] == (LENGTH, 2)
    assert loaded.texts == {0: "push the box"}


def test_a_2d_dataset_validates_against_the_2d_layout(built):
    settings, _ = built
    report = validate_dataset(settings.paths.dataset_dir, settings.h5, settings.statistics.std_floor, deep=True)
    assert report.ok, report.rows()


def test_2d_queries_avoid_the_dilated_people_when_asked(tmp_path, scene):
    extra = {
        "tracks_2d": {
            "window_length": LENGTH,
            "grid_size": 96,
            "subtract_human_masks": True,
            "human_mask_dilation_px": 3,
            "mask_erosion_px": 0,
        },
        "object_masks": {"enabled": False},
    }
    settings = two_d_settings(tmp_path, **extra)
    video = add_video(settings, scene, "00000", "clip_000")
    run(settings, ["human_masks", "tracks_2d"], video)
    from tests.unit.test_mask_stages import rendered_ids, shifted_any
    from trackset.formats.intermediates import read_tracks_2d
    from trackset.formats.layout import WorkLayout
    from trackset.synthetic.scene import HAND_IDS

    tracks = read_tracks_2d(WorkLayout(settings.paths.work_dir).tracks_2d("00000"), "00000", FRAMES)
    hands = np.isin(rendered_ids(scene), list(HAND_IDS.values()))
    for (start, _), points in zip(tracks.windows, tracks.tracks, strict=True):
        col, row = np.rint(points[0]).astype(int).T
        assert len(col) and not shifted_any(hands[start], 3)[row, col].any()
