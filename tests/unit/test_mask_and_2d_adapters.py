"""Contract tests of the SAM3, CoTracker3 and DiffuEraser adapters against fakes of their APIs.

As for ViPE, TAPIP3D and WiLoR (test_adapters.py): each adapter must turn what its model
returns into the intermediate the stage writes, and fail early in one line without its
model. Expected values come from the fakes' scenes, written out here.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.fakes import cotracker_api, diffueraser_api, sam3_api
from trackset.adapters import cotracker, diffueraser, sam3
from trackset.config.settings import CleanFramesSettings, HumanMasksSettings, ObjectMasksSettings, Tracks2dSettings
from trackset.domain import VideoRef
from trackset.errors import BadInputError, ModelUnavailableError
from trackset.formats.intermediates import FramesMeta, read_tracks_2d, write_tracks_2d

VID = "00004"


def frames_and_meta(t: int, h: int, w: int, fps: float = 10.0) -> tuple[np.ndarray, FramesMeta]:
    frames = np.random.default_rng(1).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    return frames, FramesMeta(VID, t, fps, w, h, timestamps_s=[i / fps for i in range(t)])


def ref(tmp_path: Path) -> VideoRef:
    return VideoRef(VID, tmp_path / "clip.mp4", "h")


# ---------------------------------------------------------------- SAM3


def test_sam3_masks_are_the_union_of_the_objects_over_every_frame(monkeypatch, tmp_path) -> None:
    built = sam3_api.install(monkeypatch, phrases={"red block"})
    frames, meta = frames_and_meta(8, 16, 24)
    backend = sam3.SAM3Backend(ObjectMasksSettings(backend="real"))
    backend.load()
    masks = backend.infer(ref(tmp_path), frames, meta, "red block.", key_frame=0)
    backend.unload()
    expected = np.zeros((8, 16, 24), bool)
    for t in range(8):  # two rectangles, rows 2-5 from column 3+t and rows 8-11 from column 1+t
        expected[t, 2:6, 3 + t : 9 + t] = True
        expected[t, 8:12, 1 + t : 4 + t] = True
    np.testing.assert_array_equal(masks, expected)
    kinds = [r["type"] for r in built[0].requests]
    assert kinds == ["start_session", "add_prompt", "propagate_in_video", "close_session"]
    assert built[0].requests[2]["propagation_direction"] == "both"  # forward, then backward, as the script
    assert not built[0].sessions and built[0].shut_down  # the session closed, the predictor shut down


@pytest.mark.parametrize(("prompt", "sent"), [("red block.", "red block"), ("person.", "person"), ("mug", "mug")])
def test_sam3_is_prompted_without_the_full_stop(monkeypatch, tmp_path, prompt: str, sent: str) -> None:
    """The script strips it (``text_prompt.rstrip('.')`` in y2r's ``sam3_video``); the fake finds
    objects only for the exact text, so "red block." would find nothing."""
    built = sam3_api.install(monkeypatch, phrases={sent})
    frames, meta = frames_and_meta(4, 16, 24)
    backend = sam3.SAM3Backend(ObjectMasksSettings(backend="real"))
    backend.load()
    masks = backend.infer(ref(tmp_path), frames, meta, prompt, key_frame=0)
    assert [r["text"] for r in built[0].requests if r["type"] == "add_prompt"] == [sent]
    assert masks.any(axis=(1, 2)).all()


def test_sam3_reads_the_very_frames(monkeypatch, tmp_path) -> None:
    """A lossless folder SAM3's image-folder loader reads in order (JPEG, as before, was not)."""
    built = sam3_api.install(monkeypatch, phrases={"box"})
    frames, meta = frames_and_meta(12, 16, 24)
    backend = sam3.SAM3Backend(ObjectMasksSettings(backend="real"))
    backend.load()
    backend.infer(ref(tmp_path), frames, meta, "box.", key_frame=0)
    np.testing.assert_array_equal(built[0].loaded[0], frames)


def test_sam3_retries_on_the_middle_frame_when_the_key_frame_shows_nothing(monkeypatch, tmp_path) -> None:
    built = sam3_api.install(monkeypatch, phrases={"person"}, appears_at=3)
    frames, meta = frames_and_meta(8, 16, 24)
    backend = sam3.SAM3Backend(HumanMasksSettings(backend="real"))
    backend.load()
    masks = backend.infer(ref(tmp_path), frames, meta, "person.", key_frame=0)
    prompted = [(r["type"], r.get("frame_index")) for r in built[0].requests]
    assert prompted[1:4] == [("add_prompt", 0), ("reset_session", None), ("add_prompt", 4)]  # the script's retry
    assert masks.any(axis=(1, 2)).all()
    nothing = backend.infer(ref(tmp_path), frames, meta, "a unicorn.", key_frame=-1)
    assert nothing.shape == (8, 16, 24) and not nothing.any()


def test_sam3_checkpoint_reaches_it_as_a_path(monkeypatch, tmp_path) -> None:
    built = sam3_api.install(monkeypatch, phrases={"box"})
    checkpoint = tmp_path / "sam3.pt"
    checkpoint.write_bytes(b"x")
    backend = sam3.SAM3Backend(ObjectMasksSettings(backend="real", checkpoint_path=checkpoint))
    backend.load()
    assert built[0].kwargs["checkpoint_path"] == str(checkpoint)
    frames, meta = frames_and_meta(3, 16, 24)
    backend.infer(ref(tmp_path), frames, meta, "box.", key_frame=-1)
    assert built[0].requests[1]["frame_index"] == 1  # -1 is the middle frame


# ---------------------------------------------------------------- CoTracker3


def test_cotracker_tracks_each_window_from_its_queries_and_drops_invisible_points(monkeypatch, tmp_path) -> None:
    built = cotracker_api.install(monkeypatch, hide_below_x=4.0)
    checkpoint = tmp_path / "scaled_offline.pth"
    checkpoint.write_bytes(b"x")
    section = Tracks2dSettings(backend="real", window_length=4, checkpoint_path=checkpoint)
    backend = cotracker.CoTracker3Backend(section)
    backend.load()
    frames, meta = frames_and_meta(6, 12, 16)
    windows = [(0, 4), (2, 6)]
    queries = [np.array([[2, 3], [6, 5], [9, 1]]), np.zeros((0, 2), np.int64)]
    result = backend.infer(ref(tmp_path), frames, meta, windows, queries)
    model = built[0]
    assert (model.checkpoint, model.offline) == (str(checkpoint), True)
    first = model.calls[0]
    assert first["video"].shape == (1, 4, 3, 12, 16)
    np.testing.assert_array_equal(first["video"][0, 1], frames[1].transpose(2, 0, 1).astype(np.float32))  # 0-255
    np.testing.assert_array_equal(first["queries"][0], [[0, 2, 3], [0, 6, 5], [0, 9, 1]])  # (t, x, y) at t = 0
    assert len(model.calls) == 1  # a window without queries does not reach the model
    kept = np.array([[6.0, 5.0], [9.0, 1.0]])  # x = 2 < 4 is hidden at the last step
    expected = kept[None] + np.arange(4)[:, None, None] * np.array(cotracker_api.VELOCITY)
    np.testing.assert_allclose(result.tracks[0], expected, atol=1e-6)
    assert result.tracks[1].shape == (4, 0, 2) and result.windows == windows
    path = tmp_path / "tracks_2d" / f"{VID}.pt"
    write_tracks_2d(path, VID, result)
    back = read_tracks_2d(path, VID, 6)
    np.testing.assert_allclose(back.tracks[0], expected, atol=1e-6)


def test_cotracker_threshold_zero_keeps_every_point_and_torch_hub_loads_it(monkeypatch, tmp_path) -> None:
    cotracker_api.install(monkeypatch, hide_below_x=4.0)
    monkeypatch.setattr(cotracker, "hub_checkout", lambda: tmp_path)  # the hub cache is filled
    backend = cotracker.CoTracker3Backend(Tracks2dSettings(backend="real", window_length=3, visibility_threshold=0.0))
    backend.load()
    frames, meta = frames_and_meta(3, 12, 16)
    result = backend.infer(ref(tmp_path), frames, meta, [(0, 3)], [np.array([[2, 3], [6, 5]])])
    assert result.tracks[0].shape == (3, 2, 2)


def test_cotracker_takes_memory_mapped_frames_without_torchs_read_only_warning(monkeypatch, tmp_path) -> None:
    """frames.npy is opened memory-mapped and read-only; torch.from_numpy warns on such an array
    (once per process unless warn_always, hence that flag here)."""
    built = cotracker_api.install(monkeypatch)
    monkeypatch.setattr(cotracker, "hub_checkout", lambda: tmp_path)
    backend = cotracker.CoTracker3Backend(Tracks2dSettings(backend="real", window_length=4))
    backend.load()
    frames, meta = frames_and_meta(6, 12, 16)
    np.save(tmp_path / "frames.npy", frames)
    mapped = np.load(tmp_path / "frames.npy", mmap_mode="r")
    pixels = np.array([[2, 3], [6, 5]])
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            backend.infer(ref(tmp_path), mapped, meta, [(0, 4), (2, 6)], [pixels, pixels])
    finally:
        torch.set_warn_always(warn_always)
    for call, start in zip(built[0].calls, (0, 2), strict=True):
        np.testing.assert_array_equal(call["video"][0], frames[start : start + 4].transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- DiffuEraser


def person_clip(t: int = 24) -> tuple[np.ndarray, FramesMeta, np.ndarray]:
    """Frames at least 256 wide (DiffuEraser's minimum) and a person box in each."""
    frames, meta = frames_and_meta(t, 48, 256)
    masks = np.zeros((t, 48, 256), bool)
    masks[:, 8:30, 40:120] = True
    return frames, meta, masks


@pytest.mark.parametrize("y2r", [False, True], ids=["upstream", "y2r"])
def test_diffueraser_returns_its_result_without_a_lossy_round_trip(monkeypatch, tmp_path, y2r: bool) -> None:
    """Both copies on a torchvision without ``read_video``: ProPainter gets frame folders, y2r's
    DiffuEraser too (PNG out), upstream's DiffuEraser lossless MP4s (its mp4v output is not
    read back). Outside the masks the frames come back exactly; inside them is the fake's fill,
    up to the mp4v noise of the prior both copies write as MP4."""
    built = diffueraser_api.install(monkeypatch, y2r=y2r)
    root = diffueraser_api.checkout(tmp_path / "DiffuEraser")
    section = CleanFramesSettings(enabled=True, backend="real", checkout_dir=root, mask_dilation_iter=3)
    backend = diffueraser.DiffuEraserBackend(section)
    backend.load()
    assert built["diffueraser"][0].cwd == str(root)  # built where weights/PCM_Weights resolves
    assert built["diffueraser"][0].ckpt == "2-Step"
    assert built["propainter"][0].model_dir == str(root / "weights" / "propainter")
    frames, meta, masks = person_clip()
    clean = backend.infer(ref(tmp_path), frames, meta, masks)
    assert clean.shape == frames.shape and clean.dtype == np.uint8
    np.testing.assert_array_equal(clean[~masks], frames[~masks])
    assert np.abs(clean[masks].astype(int) - diffueraser_api.FILL).max() <= 16  # red and blue swapped: 180
    painter = built["propainter"][0].calls[0]
    np.testing.assert_array_equal(painter["frames"], frames)  # a lossless folder
    np.testing.assert_array_equal(painter["masks"], masks)
    assert (painter["mask_dilation"], painter["save_fps"]) == (3, 10.0)
    eraser = built["diffueraser"][0].calls[0]
    assert (eraser["max_img_size"], eraser["mask_dilation_iter"], eraser["fps"]) == (512, 3, 10.0)


def test_diffueraser_gets_read_video_only_in_its_module_and_only_during_the_call(monkeypatch, tmp_path) -> None:
    built = diffueraser_api.install(monkeypatch)
    modules = built["modules"]
    backend = diffueraser.DiffuEraserBackend(
        CleanFramesSettings(backend="real", checkout_dir=diffueraser_api.checkout(tmp_path / "D"))
    )
    backend.load()
    frames, meta, masks = person_clip()
    backend.infer(ref(tmp_path), frames, meta, masks)
    assert modules["diffueraser"].torchvision is modules["torchvision"]
    assert modules["diffueraser"].cv2 is diffueraser_api.cv2
    assert not hasattr(modules["torchvision"].io, "read_video")
    with pytest.raises(AttributeError, match="read_video"):  # the fake reads as upstream does, so it fails alone
        built["diffueraser"][0].forward(str(tmp_path / "a.mp4"), "m.mp4", "p.mp4", "o.mp4")


def test_diffueraser_says_which_copy_it_drives(monkeypatch, tmp_path, caplog) -> None:
    for y2r, words in ((False, "upstream DiffuEraser (MP4 in and out)"), (True, "y2r's vendored DiffuEraser")):
        diffueraser_api.install(monkeypatch, y2r=y2r)
        root = diffueraser_api.checkout(tmp_path / f"D{y2r}")
        caplog.clear()
        backend = diffueraser.DiffuEraserBackend(CleanFramesSettings(backend="real", checkout_dir=root))
        with caplog.at_level("INFO", logger=diffueraser.__name__):
            backend.load()
        assert backend.copy == ("y2r" if y2r else "upstream")
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1 and messages[0].startswith(f"clean_frames: {words}") and str(root) in messages[0]


def test_read_video_stand_in_keeps_torchvisions_contract(tmp_path) -> None:
    frames, _ = frames_and_meta(12, 16, 24)
    path = tmp_path / "v.mp4"
    diffueraser.write_lossless_mp4(path, frames, 10.0)
    video, audio, info = diffueraser.read_video(str(path), pts_unit="sec", end_pts=0.55)
    assert video.dtype == torch.uint8 and tuple(video.shape) == (6, 16, 24, 3)  # frames at 0.0 .. 0.5 s
    np.testing.assert_array_equal(video.numpy(), frames[:6])
    assert info == {"video_fps": 10.0} and audio.numel() == 0
    whole, _, _ = diffueraser.read_video(str(path), pts_unit="sec", end_pts=5)
    np.testing.assert_array_equal(whole.numpy(), frames)


def test_diffueraser_refuses_videos_shorter_than_it_can_take(monkeypatch, tmp_path) -> None:
    diffueraser_api.install(monkeypatch)
    section = CleanFramesSettings(backend="real", checkout_dir=diffueraser_api.checkout(tmp_path / "D"))
    backend = diffueraser.DiffuEraserBackend(section)
    backend.load()
    frames, meta = frames_and_meta(10, 32, 48)
    with pytest.raises(BadInputError, match="at least 22 frames"):
        backend.infer(ref(tmp_path), frames, meta, np.ones((10, 32, 48), bool))


# ---------------------------------------------------------------- early failures naming what is missing

DOCS_REF = "see docs/real-models.md"


@pytest.mark.parametrize(
    ("module", "section", "expected"),
    [
        (
            sam3,
            ObjectMasksSettings(backend="real"),
            "the 'sam3' package (pip install sam3, from PyPI; 0.1.4 needs numpy<2.4 and torchvision, see",
        ),
        (
            sam3,
            HumanMasksSettings(backend="real", checkpoint_path=Path("/nope/sam3.pt")),
            "the SAM3 checkpoint sam3.pt at human_masks.checkpoint_path = /nope/sam3.pt",
        ),
        (
            cotracker,
            Tracks2dSettings(backend="real", checkpoint_path=Path("/nope/c.pth")),
            "the CoTracker3 offline checkpoint at tracks_2d.checkpoint_path = /nope/c.pth, which is not a file",
        ),
        (cotracker, Tracks2dSettings(backend="real"), "CoTracker3 from torch.hub, not in the hub cache"),
        (diffueraser, CleanFramesSettings(backend="real"), "set clean_frames.checkout_dir"),
        (
            diffueraser,
            CleanFramesSettings(backend="real", checkout_dir=Path("/nope")),
            "the DiffuEraser checkout at clean_frames.checkout_dir = /nope, which is not a directory",
        ),
    ],
    ids=[
        "sam3-package",
        "sam3-checkpoint",
        "cotracker-checkpoint",
        "cotracker-hub",
        "diffueraser-unset",
        "diffueraser-checkout",
    ],
)
def test_one_missing_model_part_fails_early_in_one_line(monkeypatch, tmp_path, module, section, expected) -> None:
    for name in ("sam3", "sam3.model_builder"):
        monkeypatch.setitem(sys.modules, name, None)
    if isinstance(section, HumanMasksSettings):
        sam3_api.install(monkeypatch, phrases=set())
    cotracker_api.install(monkeypatch)
    monkeypatch.setattr(cotracker, "hub_checkout", lambda: tmp_path / "no-hub")
    assert len(module.missing(section)) == 1
    with pytest.raises(ModelUnavailableError) as caught:
        module.check_available(section)
    message = str(caught.value)
    assert expected in message and "\n" not in message, message
    assert message.endswith("backend: synthetic to run without it")


def test_every_missing_part_is_named_at_once(monkeypatch, tmp_path) -> None:
    for name in ("sam3", "sam3.model_builder", "cotracker", "cotracker.predictor"):
        monkeypatch.setitem(sys.modules, name, None)
    assert sam3.missing(ObjectMasksSettings(backend="real", checkpoint_path=Path("/nope/sam3.pt"))) == [
        f"the 'sam3' package (pip install sam3, from PyPI; 0.1.4 needs numpy<2.4 and torchvision, {DOCS_REF})",
        "the SAM3 checkpoint sam3.pt at object_masks.checkpoint_path = /nope/sam3.pt, which is not a file"
        f" ({DOCS_REF})",
    ]
    assert cotracker.missing(Tracks2dSettings(backend="real", checkpoint_path=Path("/nope/c.pth"))) == [
        f"the 'cotracker' package (pip install git+https://github.com/facebookresearch/co-tracker, {DOCS_REF})",
        f"the CoTracker3 offline checkpoint at tracks_2d.checkpoint_path = /nope/c.pth, which is not a file"
        f" ({DOCS_REF})",
    ]
    root = tmp_path / "D"
    (root / "weights" / "propainter").mkdir(parents=True)  # no code, and four of the five weights folders missing
    section = CleanFramesSettings(backend="real", checkout_dir=root)
    expected = [f"the DiffuEraser code at clean_frames.checkout_dir = {root} ({DOCS_REF})"] + [
        f"weights/{name} under clean_frames.checkout_dir = {root} ({DOCS_REF})"
        for name in ("stable-diffusion-v1-5", "sd-vae-ft-mse", "diffuEraser", "PCM_Weights")
    ]
    assert diffueraser.missing(section) == expected
    with pytest.raises(ModelUnavailableError) as caught:
        diffueraser.check_available(section)
    assert str(caught.value).splitlines() == [
        "backend 'real' for clean_frames needs 5 things; set clean_frames.backend: synthetic to run without it:",
        *(f"  - clean_frames: {line}" for line in expected),
    ]


def test_diffueraser_names_its_missing_modules_and_weights_folder(monkeypatch, tmp_path) -> None:
    diffueraser_api.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "propainter.inference", None)
    root = diffueraser_api.checkout(tmp_path / "D")
    (root / "weights" / "PCM_Weights").rmdir()
    assert diffueraser.missing(CleanFramesSettings(backend="real", checkout_dir=root)) == [
        "the 'propainter.inference' package (a checkout of github.com/lixiaowen-xw/DiffuEraser at"
        f" clean_frames.checkout_dir, {DOCS_REF})",
        f"weights/PCM_Weights under clean_frames.checkout_dir = {root} ({DOCS_REF})",
    ]


# ---------------------------------------------------------------- TAPIP3D with the stage's queries


def test_tapip3d_tracks_exactly_the_query_pixels_it_is_given(monkeypatch, tmp_path) -> None:
    from tests.unit.fakes import tapip3d_api
    from tests.unit.test_adapters import K_TRACK, tapip3d_settings, tracking_inputs
    from trackset.adapters import tapip3d

    loaded = tapip3d_api.install(monkeypatch)
    frames, meta, depth, _ = tracking_inputs()
    backend = tapip3d.TAPIP3DBackend(tapip3d_settings(tmp_path))
    backend.load()
    queries = [np.array([[20, 5], [21, 5], [30, 20]]), np.array([[8, 8]]), np.zeros((0, 2), np.int64)]
    result = backend.infer(ref(tmp_path), frames, meta, depth, queries)
    assert [t.shape[1] for t in result.tracks] == [3, 1, 0]
    for call, pixels in zip(loaded[0].calls, queries[:2], strict=True):
        xyz = call["query_point"][:, 1:]
        u = K_TRACK[0, 0] * xyz[:, 0] / xyz[:, 2] + K_TRACK[0, 2]
        v = K_TRACK[1, 1] * xyz[:, 1] / xyz[:, 2] + K_TRACK[1, 2]
        np.testing.assert_allclose(np.c_[u, v], pixels, atol=1e-4)  # no sampling of its own
    assert len(loaded[0].calls) == 2  # an empty window does not reach the model
