"""Object masks, person masks, human removal and masked 3D queries, against the scene's truth.

Frames are written straight from the scene's renders at 128x96 (preprocessing is tested
elsewhere), so a pixel of a frame is a pixel of the scene; expected masks come from the
object ids the scene renders, erosion and dilation are written out here with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trackset.config.settings import Settings
from trackset.domain import VideoRef
from trackset.errors import BadInputError
from trackset.formats.intermediates import FramesMeta, read_clean_frames, read_masks, write_frames
from trackset.formats.layout import WorkLayout
from trackset.stages.registry import build_stage
from trackset.synthetic.corpus import write_scene_sidecar
from trackset.synthetic.scene import HAND_IDS, SceneSpec

W, H, FRAMES, LENGTH = 128, 96, 12, 6


def settings_for(root: Path, **sections: dict) -> Settings:
    base = {
        "paths": {"videos_dir": root / "videos", "work_dir": root / "work", "dataset_dir": root / "dataset"},
        "tracks_3d": {"window_length": LENGTH, "points_per_window": 40},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


def add_video(settings: Settings, spec: SceneSpec, video_id: str, stem: str) -> VideoRef:
    source = settings.paths.videos_dir / f"{stem}.mp4"
    source.parent.mkdir(parents=True, exist_ok=True)
    write_scene_sidecar(source, spec)
    times = spec.frame_times()
    frames = np.stack([spec.render(float(t))[0] for t in times])
    meta = FramesMeta(video_id, len(times), spec.fps, W, H, str(source), W, H, times.tolist())
    write_frames(WorkLayout(settings.paths.work_dir), meta, frames)
    return VideoRef(video_id, source, f"hash-{video_id}")


def run(settings: Settings, stages: list[str], video: VideoRef) -> dict[str, dict]:
    infos = {}
    for name in stages:
        stage = build_stage(name, settings)
        stage.setup()
        infos[name] = stage.run(video).info
        stage.teardown()
    return infos


def rendered_ids(spec: SceneSpec) -> np.ndarray:
    return np.stack([spec.render_depth(float(t))[1] for t in spec.frame_times()])


def box_pixels(spec: SceneSpec) -> np.ndarray:
    """Where the scene shows one of its boxes (ids 1..n), frame by frame."""
    ids = rendered_ids(spec)
    return (ids >= 1) & (ids <= len(spec.objects))


def shifted_all(mask: np.ndarray, radius: int) -> np.ndarray:
    """True where every pixel of the (2r+1) square around is in ``mask`` (outside the image counts as in)."""
    padded = np.pad(mask, radius, constant_values=True)
    out = np.ones_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out &= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
    return out


def shifted_any(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~shifted_all(~mask, radius)


@pytest.fixture(scope="module")
def scene() -> SceneSpec:
    return SceneSpec.from_seed(21, num_frames=FRAMES, width=W, height=H)


@pytest.fixture(scope="module")
def masked(tmp_path_factory, scene):
    """One clip with a noun, through depth, object masks and 3D tracks."""
    root = tmp_path_factory.mktemp("masked")
    settings = settings_for(root)
    video = add_video(settings, scene, "00003", "clip_007")
    (settings.paths.videos_dir / "metadata.csv").write_text("clip_id,text,noun\nclip_007,push the box,box\n")
    infos = run(settings, ["depth_camera", "object_masks", "tracks_3d"], video)
    return settings, video, infos


def test_object_masks_equal_the_rendered_masks_of_the_boxes(masked, scene):
    settings, video, infos = masked
    work = WorkLayout(settings.paths.work_dir)
    result = read_masks(work.object_masks(video.video_id), video.video_id, "object_masks", FRAMES, H, W)
    expected = box_pixels(scene)
    assert expected.any() and result.prompt == "box."  # the clip's noun, as SAM3's prompt
    np.testing.assert_array_equal(result.masks, expected)
    hands = np.isin(rendered_ids(scene), list(HAND_IDS.values()))
    assert hands.any() and not (result.masks & hands).any()  # the prompt names objects, not hands
    assert infos["object_masks"]["unprompted"] == 0


def test_every_query_lies_on_the_object_in_its_windows_first_frame(masked, scene):
    settings, video, infos = masked
    data = torch.load(WorkLayout(settings.paths.work_dir).tracks_3d(video.video_id), weights_only=True)
    objects = box_pixels(scene)
    fx, fy, cx, cy = scene.fx, scene.fy, scene.cx, scene.cy
    for (start, _), points in zip(data["windows"], data["tracks"], strict=True):
        first = points[0, 0].double().numpy()  # (N, 3) in camera 0 at step 0
        u = fx * first[:, 0] / first[:, 2] + cx
        v = fy * first[:, 1] / first[:, 2] + cy
        col, row = np.rint(u).astype(int), np.rint(v).astype(int)
        np.testing.assert_allclose(np.c_[u, v], np.c_[col, row], atol=1e-3)  # queries sit on pixels
        inner = shifted_all(objects[start], 2)  # the mask eroded by tracks_3d.mask_erosion_px = 2
        assert len(col) == min(40, int(inner.sum())) and len(col) > 0, start
        assert inner[row, col].all(), start
    assert infos["tracks_3d"]["unmasked"] == 0


def test_grid_sampling_takes_the_grid_cells_inside_the_mask(tmp_path, scene):
    settings = settings_for(tmp_path, tracks_3d={"sampling_method": "grid", "grid_size": 32, "mask_erosion_px": 0})
    video = add_video(settings, scene, "00001", "clip_grid")
    (settings.paths.videos_dir / "metadata.csv").write_text("clip_id,noun\nclip_grid,box\n")
    run(settings, ["depth_camera", "object_masks", "tracks_3d"], video)
    data = torch.load(WorkLayout(settings.paths.work_dir).tracks_3d(video.video_id), weights_only=True)
    objects = box_pixels(scene)
    rows, cols = np.meshgrid((np.arange(32) + 0.5) * H / 32, (np.arange(32) + 0.5) * W / 32, indexing="ij")
    rows, cols = rows.astype(int).ravel(), cols.astype(int).ravel()
    first = data["tracks"][0][0, 0].double().numpy()
    u = np.rint(scene.fx * first[:, 0] / first[:, 2] + scene.cx).astype(int)
    v = np.rint(scene.fy * first[:, 1] / first[:, 2] + scene.cy).astype(int)
    inside = objects[0][rows, cols]
    assert sorted(zip(v.tolist(), u.tolist(), strict=True)) == sorted(zip(rows[inside], cols[inside], strict=True))


def test_a_clip_without_a_noun_is_tracked_unmasked_and_counted(tmp_path, scene):
    settings = settings_for(tmp_path)
    video = add_video(settings, scene, "00002", "clip_nameless")
    infos = run(settings, ["depth_camera", "object_masks", "tracks_3d"], video)
    assert infos["object_masks"] == {"frames": FRAMES, "unprompted": 1}
    assert infos["tracks_3d"]["unmasked"] == 1 and infos["tracks_3d"]["points"] > 0


def test_a_fixed_text_prompt_needs_no_metadata(tmp_path, scene):
    settings = settings_for(tmp_path, object_masks={"text_prompt": "red t-shaped block."})
    video = add_video(settings, scene, "00002", "clip_fixed")
    run(settings, ["object_masks"], video)
    work = WorkLayout(settings.paths.work_dir)
    masks = read_masks(work.object_masks(video.video_id), video.video_id, "object_masks", FRAMES, H, W)
    assert masks.prompt == "red t-shaped block." and masks.prompted


def test_an_unusable_metadata_file_fails_the_video_naming_it(tmp_path, scene):
    settings = settings_for(tmp_path)
    video = add_video(settings, scene, "00002", "clip_bad")
    (settings.paths.videos_dir / "metadata.csv").write_text("id,noun\nclip_bad,box\n")
    stage = build_stage("object_masks", settings)
    failure = stage.run_isolated(video)
    assert "metadata.csv" in failure.reason and "no 'clip_id' column" in failure.reason and "00002" in failure.reason


def test_people_are_masked_and_inpainted_away_where_the_tracker_looks(tmp_path, scene):
    settings = settings_for(tmp_path, clean_frames={"enabled": True, "mask_dilation_iter": 2})
    video = add_video(settings, scene, "00005", "clip_person")
    infos = run(settings, ["human_masks", "clean_frames"], video)
    work = WorkLayout(settings.paths.work_dir)
    people = read_masks(work.human_masks(video.video_id), video.video_id, "human_masks", FRAMES, H, W)
    hands = np.isin(rendered_ids(scene), list(HAND_IDS.values()))
    np.testing.assert_array_equal(people.masks, hands)
    assert people.prompt == "person." and infos["clean_frames"]["person_fraction"] > 0
    frames = np.load(work.frames_npy(video.video_id))
    clean = read_clean_frames(work, video.video_id, frames.shape)
    empty = SceneSpec(**{**scene.__dict__, "hands": ()})
    for t, time in enumerate(scene.frame_times()):
        region = shifted_any(hands[t], 2)
        np.testing.assert_array_equal(clean[t][region], empty.render(float(time))[0][region])
        np.testing.assert_array_equal(clean[t][~region], frames[t][~region])


def test_human_removal_needs_its_person_masks(tmp_path, scene):
    settings = settings_for(tmp_path, clean_frames={"enabled": True})
    video = add_video(settings, scene, "00006", "clip_nomasks")
    failure = build_stage("clean_frames", settings).run_isolated(video)
    assert "human_masks" in failure.reason and "file is missing" in failure.reason


def test_a_backend_returning_wrong_masks_fails_that_video(tmp_path, scene, monkeypatch):
    settings = settings_for(tmp_path, object_masks={"text_prompt": "box."})
    video = add_video(settings, scene, "00007", "clip_wrong")
    stage = build_stage("object_masks", settings)
    backend = stage.loaded_backend()
    monkeypatch.setattr(backend, "infer", lambda *args: np.zeros((FRAMES, H, W - 1), bool))
    with pytest.raises(BadInputError, match=r"backend returned 'masks' of shape \(12, 96, 127\)"):
        stage.run(video)


def test_with_human_removal_masks_and_tracks_read_the_clean_frames_and_hands_the_original(tmp_path, scene):
    settings = settings_for(tmp_path, clean_frames={"enabled": True}, object_masks={"text_prompt": "box."})
    video = add_video(settings, scene, "00008", "clip_flow")
    run(settings, ["depth_camera"], video)
    for name in ("object_masks", "tracks_3d"):  # no clean frames yet: they cannot run
        failure = build_stage(name, settings).run_isolated(video)
        assert "clean_frames" in failure.reason and "frames.npy" in failure.reason, name
    assert run(settings, ["hands"], video)["hands"]["frames"] == FRAMES  # the original frames suffice
