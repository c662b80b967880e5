"""``trackset check-models``: what it names when models or GPUs are missing, and what it runs,
checks, measures and stores when they are there (the fake model APIs of ``tests/unit/fakes``
on the fake GPUs).

Expected numbers come from the clip's scene (:class:`SceneSpec`, evaluated here) or from
arrays built here, not from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.unit.fakes import cotracker_api, diffueraser_api, sam3_api, tapip3d_api, vipe_api, wilor_api
from trackset.checks import models as checks
from trackset.checks.outputs import (
    Finding,
    clean_frames_agreement,
    contract_checks,
    depth_agreement,
    hands_agreement,
    masks_agreement,
    tracks_agreement,
)
from trackset.config.settings import Settings
from trackset.errors import BadInputError
from trackset.flows import cli
from trackset.flows.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from trackset.formats.intermediates import DepthCamera, Hand, HandPoses, Tracks3d, VideoMasks
from trackset.formats.layout import WorkLayout
from trackset.gpu.fake_device import FakeDevice, ledger_dir_for
from trackset.gpu.inventory import FakeInventory
from trackset.scheduling.profile_store import ProfileStore
from trackset.stages.registry import build_stage
from trackset.synthetic.corpus import video_seed
from trackset.synthetic.scene import SceneSpec

W, H = 256, 192  # small, for speed, but DiffuEraser takes nothing smaller; the command's clip has the preprocessed size
SMALL = {"preprocess": {"width": W, "height": H}, "cluster": {"fake_gpus": [{"memory_gb": 8}]}}
MIB = 2**20


def settings_file(tmp_path: Path, **sections: dict) -> Path:
    data: dict = {
        "paths": {k: str(tmp_path / k.removesuffix("_dir")) for k in ("videos_dir", "work_dir", "dataset_dir")},
        **SMALL,
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check-models", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no GPU; a CI machine with one must see the same."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.console, "width", 400)  # the table's cells unwrapped, one row per line


def clip_scene(frames: int = checks.CLIP_FRAMES) -> SceneSpec:
    """The clip's scene, as make_corpus draws it for video 0 of the corpus seed."""
    return SceneSpec.from_seed(video_seed(checks.CLIP_SEED, 0), frames, 10.0, W, H)


def exact_vipe(depth_scale: float = 1.0, shrink_x: float = 1.0) -> vipe_api.Scene:
    """A ViPE that reports the scene's true cameras and depth (times ``depth_scale``; its
    rotations' x column times ``shrink_x``, which makes them non-rigid)."""
    scene = clip_scene()
    k = scene.intrinsics_for(W, H)

    def camera_to_world(t: int) -> np.ndarray:
        pose = scene.camera_poses(np.array([t / scene.fps]))[0]
        pose[:3, 0] *= shrink_x
        return pose

    return vipe_api.Scene(
        camera_to_world=camera_to_world,
        depth=lambda t, hw: depth_scale * scene.render_depth(t / scene.fps, hw[1], hw[0])[0],
        intrinsics=(k[0, 0], k[1, 1], k[0, 2], k[1, 2]),
    )


def install_fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vipe_scene: vipe_api.Scene | None = None) -> dict:
    """Every fake model API, and the weight files and checkouts their settings name."""
    vipe_api.install(monkeypatch, vipe_scene or exact_vipe())
    tapip3d_api.install(monkeypatch)
    wilor_api.install(monkeypatch, {})
    sam3_api.install(monkeypatch, {"box", "box.", "person", "person."})
    diffueraser_api.install(monkeypatch)
    cotracker_api.install(monkeypatch)
    checkpoint = tmp_path / "weights" / "model.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    hands_dir = wilor_api.write_weights(tmp_path / "wilor")
    return {
        "depth_camera": {"backend": "real"},
        "object_masks": {"backend": "real"},
        "tracks_3d": {"backend": "real", "weights_path": str(checkpoint), "points_per_window": 40},
        "hands": {"backend": "real", "weights_dir": str(hands_dir)},
        "human_masks": {"backend": "real"},
        "clean_frames": {
            "enabled": True,
            "backend": "real",
            "checkout_dir": str(diffueraser_api.checkout(tmp_path / "DiffuEraser")),
        },
        "tracks_2d": {"backend": "real", "checkpoint_path": str(checkpoint)},
    }


# ------------------------------------------------------------------ what is missing


def test_here_every_stage_names_everything_it_lacks_and_the_gpu(capsys, tmp_path, no_cuda):
    """Default settings run no real model: each GPU stage they run is checked as if real, and
    each names every missing package, weight file and setting, one line each, the GPU last."""
    code, out, err = run(capsys, "--settings", str(settings_file(tmp_path, clean_frames={"enabled": True})))
    assert code == EXIT_USAGE
    by_stage: dict[str, list[str]] = {}
    for line in errors(err):
        stage, _, what = line.removeprefix("error: ").partition(": needs ")
        by_stage.setdefault(stage, []).append(what)
    assert list(by_stage) == ["human_masks", "clean_frames", "depth_camera", "object_masks", "tracks_3d", "hands"]
    for stage, lines in by_stage.items():
        assert lines[-1].startswith(f"a CUDA GPU: torch {torch.__version__} is "), stage
    assert by_stage["clean_frames"][0] == (
        "the DiffuEraser checkout: set clean_frames.checkout_dir (see docs/real-models.md)"
    )
    assert by_stage["depth_camera"][0].startswith("the 'vipe' package (pip install --no-build-isolation nvidia-vipe")
    assert by_stage["object_masks"][0].startswith("the 'sam3' package (pip install sam3, from PyPI")
    # Both the package and the setting of TAPIP3D and WiLoR, not only the first:
    assert by_stage["tracks_3d"][0].startswith("the 'models' ")
    assert by_stage["tracks_3d"][1] == (
        "the TAPIP3D checkpoint tapip3d_final.pth: set tracks_3d.weights_path (see docs/real-models.md)"
    )
    assert by_stage["hands"][0].startswith("the 'wilor' and 'ultralytics' packages (")
    assert by_stage["hands"][1] == "WiLoR's weights: set hands.weights_dir (see docs/real-models.md)"
    assert [len(lines) for lines in by_stage.values()] == [2, 2, 2, 2, 3, 3]
    assert "checking the real model of each" in out
    assert not (tmp_path / "work" / "profiles").exists()


def test_a_present_package_with_missing_weights_names_the_setting(capsys, tmp_path, no_cuda, monkeypatch):
    tapip3d_api.install(monkeypatch)
    code, _, err = run(capsys, "--settings", str(settings_file(tmp_path, tracks_3d={"backend": "real"})))
    assert code == EXIT_USAGE
    weights, gpu = errors(err)  # only tracks_3d is real: only it is checked
    assert weights == (
        "error: tracks_3d: needs the TAPIP3D checkpoint tapip3d_final.pth: set tracks_3d.weights_path"
        " (see docs/real-models.md)"
    )
    assert gpu.startswith("error: tracks_3d: needs a CUDA GPU")


def test_models_present_but_no_gpu_is_one_line_per_stage(capsys, tmp_path, no_cuda, monkeypatch):
    sections = install_fakes(monkeypatch, tmp_path)
    code, out, err = run(capsys, "--settings", str(settings_file(tmp_path, tracks_3d=sections["tracks_3d"])))
    assert code == EXIT_USAGE
    [line] = errors(err)
    assert line.startswith(f"error: tracks_3d: needs a CUDA GPU: torch {torch.__version__} is ")
    assert "Real models" not in out


def test_a_clip_too_short_for_diffueraser_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "--settings", str(settings_file(tmp_path)), "--frames", "21")
    assert code == EXIT_USAGE
    assert errors(err) == [
        "error: --frames must be at least 24, the default (DiffuEraser needs 22 frames, the trackers several windows)"
    ]


def test_fake_gpus_are_refused_where_cuda_is(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code, _, err = run(capsys, "--settings", str(settings_file(tmp_path)), "--fake-gpus")
    assert code == EXIT_USAGE and "this machine has CUDA GPUs" in err


# ------------------------------------------------------------------ with the fakes


@pytest.mark.parametrize("track_type", ["3d", "2d"])
def test_with_the_fakes_every_stage_runs_and_the_table_says_so(
    capsys, tmp_path, no_cuda, wide, monkeypatch, track_type
):
    sections = install_fakes(monkeypatch, tmp_path)
    path = settings_file(tmp_path, h5={"track_type": track_type}, **sections)
    code, out, err = run(capsys, "--settings", str(path), "--fake-gpus")
    assert (code, errors(err)) == (EXIT_OK, []), err
    expected = {
        "3d": ["human_masks", "clean_frames", "depth_camera", "object_masks", "tracks_3d", "hands"],
        "2d": ["human_masks", "clean_frames", "object_masks", "tracks_2d"],
    }[track_type]
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert [name for name in rows if name != "stage"] == expected
    for stage in expected:
        cells = [cell.strip() for cell in rows[stage].split("│")[1:-1]]
        version = "vipe 1.1.0 at /site-packages/upstream" if stage == "depth_camera" else "no file (a stand-in module)"
        assert cells[1] == f"real: {version}" and cells[2] == "0 FakeGPU"
        assert cells[5] == "0 bytes"  # the fakes charge nothing to the fake GPU
        passed, total = cells[6].split("/")
        assert passed == total and int(total) >= 1
    if track_type == "3d":
        depth = [cell.strip() for cell in rows["depth_camera"].split("│")[1:-1]]
        assert (depth[6], depth[7]) == ("3/3", "depth 0.0% off, camera rotation 0.00° off (medians)")
    assert "fake GPUs: the models ran on the CPU" in out
    assert not (tmp_path / "work" / "profiles").exists()  # nothing measured, nothing stored


def test_a_model_whose_depth_is_off_is_reported_off(capsys, tmp_path, no_cuda, wide, monkeypatch):
    sections = install_fakes(monkeypatch, tmp_path, exact_vipe(depth_scale=1.25))
    path = settings_file(tmp_path, depth_camera=sections["depth_camera"])
    code, out, _ = run(capsys, "--settings", str(path), "--fake-gpus")
    assert code == EXIT_OK
    assert "depth 25.0% off, camera rotation 0.00° off (medians)" in out


def test_an_output_that_breaks_the_format_fails_its_check(capsys, tmp_path, no_cuda, wide, monkeypatch):
    sections = install_fakes(monkeypatch, tmp_path, exact_vipe(shrink_x=0.5))
    path = settings_file(tmp_path, depth_camera=sections["depth_camera"])
    code, out, err = run(capsys, "--settings", str(path), "--fake-gpus")
    assert code == EXIT_FAILED
    assert errors(err) == [
        "error: depth_camera on GPU 0: check 'rigid extrinsics' failed: frame 0: rotation is not orthonormal"
    ]
    assert "2/3" in out


def test_an_output_its_reader_refuses_fails_the_first_check(capsys, tmp_path, no_cuda, wide, monkeypatch):
    sections = install_fakes(monkeypatch, tmp_path)
    truth_reader = checks.read_output

    def refuse_the_models(stage: str, work: WorkLayout, video_id: str, shape: tuple[int, int, int]) -> object:
        if "checks" in work.root.parts:  # the model's output, not the truth
            raise BadInputError(video_id, stage, work.vipe(video_id), "'depths' has dtype int8, expected kind 'f'")
        return truth_reader(stage, work, video_id, shape)

    monkeypatch.setattr(checks, "read_output", refuse_the_models)
    code, out, err = run(
        capsys, "--settings", str(settings_file(tmp_path, depth_camera=sections["depth_camera"])), "--fake-gpus"
    )
    assert code == EXIT_FAILED
    [line] = errors(err)
    assert line.startswith("error: depth_camera on GPU 0: check 'reads back' failed: video 00000, stage depth_camera")
    assert line.endswith("'depths' has dtype int8, expected kind 'f'")
    assert "0/1" in out


def test_a_model_that_fails_to_load_is_named_with_its_traceback(capsys, tmp_path, no_cuda, wide, monkeypatch):
    sections = install_fakes(monkeypatch, tmp_path)

    def broken(checkpoint_path: str) -> None:
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr("utils.inference_utils.load_model", broken)
    path = settings_file(tmp_path, tracks_3d=sections["tracks_3d"], hands=sections["hands"])
    code, out, err = run(capsys, "--settings", str(path), "--fake-gpus")
    assert code == EXIT_FAILED
    assert errors(err) == [
        "error: tracks_3d on GPU 0: RuntimeError: CUDA error: no kernel image is available for execution on the device"
    ]
    assert "Traceback (most recent call last)" in err and "in broken" in err
    assert "hands" in out  # the other stage ran all the same


# ------------------------------------------------------------------ each GPU, and the profiles


def costly(tmp_path: Path, gpus: int) -> tuple[Settings, checks.Clip]:
    """Settings whose synthetic ViPE charges 300 MiB to load and 100 MiB per video, on
    ``gpus`` fake GPUs, and the clip made with them."""
    settings = Settings(
        paths={"videos_dir": tmp_path / "videos", "work_dir": tmp_path / "work", "dataset_dir": tmp_path / "dataset"},
        preprocess={"width": W, "height": H},
        cluster={"fake_gpus": [{"name": f"Fake{i}", "memory_gb": 4 + i} for i in range(gpus)]},
        synthetic={"depth_camera": {"model_mb": 300, "per_video_mb": 100}},
    )
    return settings, checks.make_clip(tmp_path / "check", settings)


def synthetic_jobs(settings: Settings, clip: checks.Clip) -> list[checks.CheckJob]:
    """The depth stage's jobs with the synthetic backend checked as the model (it charges memory)."""
    jobs = checks.jobs_for("depth_camera", clip, settings, checks.find_gpus(settings, fake=True).infos)
    return [
        checks.CheckJob(job.stage, job.gpu, job.settings.model_copy(update={"synthetic": settings.synthetic}), job.clip)
        for job in jobs
    ]


def test_the_profile_is_stored_under_the_key_a_run_reads(tmp_path):
    settings, clip = costly(tmp_path, gpus=1)
    [result] = checks.run_jobs(synthetic_jobs(settings, clip), own_processes=False)
    assert result.ok and result.agreement.startswith("depth 0.0% off")
    assert result.peak_bytes == 400 * MIB  # the model and the video, as the fake GPU's ledger saw them
    gpus = FakeInventory(settings.cluster).gpus()
    assert checks.save_profiles([result], settings, gpus) == {"depth_camera": 400 * MIB}
    key = build_stage("depth_camera", settings).config.cache_key()  # what the engine looks up (engine/executor.py, LoadProfile)
    stored = ProfileStore(settings.paths.work_dir).load("depth_camera", key)
    assert stored is not None and stored.peak_bytes == 400 * MIB


def test_no_profile_for_a_stage_that_failed_on_a_gpu(tmp_path):
    settings, clip = costly(tmp_path, gpus=1)
    [result] = checks.run_jobs(synthetic_jobs(settings, clip), own_processes=False)
    result.findings.append(Finding("rigid extrinsics", False, "frame 0"))
    assert checks.save_profiles([result], settings, FakeInventory(settings.cluster).gpus()) == {}
    assert not ProfileStore(settings.paths.work_dir).path("depth_camera").exists()


@pytest.mark.slow
def test_each_gpu_is_checked_in_a_process_pinned_to_it(tmp_path):
    """The CUDA path: a new process per GPU, pinned by CUDA_VISIBLE_DEVICES before anything
    starts; with fake GPUs, the pinning shows in which GPU's ledger the model charged."""
    settings, clip = costly(tmp_path, gpus=2)
    results = checks.run_jobs(synthetic_jobs(settings, clip), own_processes=True)
    assert [(r.gpu, r.ok, r.peak_bytes) for r in results] == [(0, True, 400 * MIB), (1, True, 400 * MIB)]
    for gpu in (0, 1):
        ledgers = ledger_dir_for(clip.truth_dir.parent / "checks" / f"depth_camera-gpu{gpu}")
        assert sorted(path.name for path in ledgers.glob("*.json")) == [f"gpu{gpu}.json"]
        top = json.loads((ledgers / f"gpu{gpu}.json").read_text())["top"]
        assert list(top.values()) == [400 * MIB]  # one process, not this one
        assert FakeDevice(ledgers, gpu, 2**33).held_bytes() == 0


def test_fake_gpus_each_get_the_model_in_turn(tmp_path):
    settings, clip = costly(tmp_path, gpus=2)
    results = checks.run_jobs(synthetic_jobs(settings, clip), own_processes=False)
    assert [(r.gpu, r.ok, r.peak_bytes) for r in results] == [(0, True, 400 * MIB), (1, True, 400 * MIB)]
    for gpu in (0, 1):
        ledgers = ledger_dir_for(clip.truth_dir.parent / "checks" / f"depth_camera-gpu{gpu}")
        assert sorted(path.name for path in ledgers.glob("*.json")) == [f"gpu{gpu}.json"]


def test_the_clip_has_hands_and_boxes_and_its_truth_every_output(tmp_path):
    settings = Settings(**SMALL, clean_frames={"enabled": True})
    clip = checks.make_clip(tmp_path, settings)
    scene = SceneSpec.from_json((tmp_path / "videos" / "clip_000.scene.json").read_text())
    assert scene == clip_scene() and len(scene.hands) == 2 and len(scene.objects) >= 1
    assert clip.shape == (checks.CLIP_FRAMES, H, W)
    names = {path.relative_to(clip.truth_dir).parts[0] for path in clip.truth_dir.rglob("*") if path.is_file()}
    assert {"frames", "vipe", "object_masks", "tracks_3d", "hand_poses", "human_masks", "clean_frames"} <= names


# ------------------------------------------------------------------ checks and agreement, on arrays built here


def test_non_rigid_poses_and_a_bad_camera_fail_their_checks():
    poses = np.tile(np.eye(4), (3, 1, 1))
    poses[2, 3, 0] = 0.5
    k = np.tile(np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]]), (3, 1, 1))
    k[1, 0, 2] = 300.0
    found = contract_checks("depth_camera", DepthCamera(np.ones((3, H, W)), k, poses), Settings(), (3, H, W))
    assert found == [
        Finding("rigid extrinsics", False, "frame 2: last row is [0.5, 0.0, 0.0, 1.0], not [0, 0, 0, 1]"),
        Finding("pinhole intrinsics", False, f"frame 1: principal point (300, 48) outside the {W}x{H} image"),
    ]


def test_tracks_of_wrong_windows_or_behind_the_camera_fail():
    points = np.ones((10, 4, 3), np.float32)
    points[0, 1, 2] = -0.5
    tracks = Tracks3d([(0, 10), (2, 12)], [points, points], np.eye(3), 12, 10, 1)
    found = contract_checks("tracks_3d", tracks, Settings(), (12, H, W))
    assert [(f.name, f.passed) for f in found] == [("windows as configured", False), ("in front at step 0", False)]
    assert found[1].detail == "2 points with d <= 0"


def test_depth_agreement_is_relative_and_ignores_the_world_frame():
    truth = DepthCamera(np.full((2, 4, 4), 2.0), np.tile(np.eye(3), (2, 1, 1)), np.tile(np.eye(4), (2, 1, 1)))
    turn = np.eye(4)
    turn[:3, :3] = [[np.cos(0.1), -np.sin(0.1), 0], [np.sin(0.1), np.cos(0.1), 0], [0, 0, 1]]
    shifted = np.stack([np.eye(4), turn])
    shifted[:, :3, 3] += 5.0  # another world origin: no rotation error
    depths = np.full((2, 4, 4), 2.2)
    depths[0, 0, 0] = 0.0  # invalid: left out
    assert depth_agreement(DepthCamera(depths, truth.intrinsics, shifted), truth) == (
        f"depth 10.0% off, camera rotation {np.degrees(0.1):.2f}° off (medians)"
    )


def test_tracks_are_paired_by_their_start_and_counted():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1, (10, 6, 3))
    kept = true[:, [4, 1, 2]] + np.array([0.0, 0.0, 0.03])  # three of six, reordered, 3 cm off
    real = Tracks3d([(0, 10)], [kept], np.eye(3), 10, 10, 1)
    truth = Tracks3d([(0, 10)], [true], np.eye(3), 10, 10, 1)
    assert tracks_agreement(real, truth, scale=100.0, unit="cm") == "tracks 3.00 cm off (median), 3 of 6 kept"


def hand(valid: list[bool], x: float) -> Hand:
    """A hand whose wrist sits at ``x`` metres on the frames marked valid."""
    frames = len(valid)
    pose = np.tile(np.eye(4), (frames, 1, 1))
    pose[:, 0, 3] = x
    pose[~np.array(valid)] = np.nan
    return Hand(np.array(valid), pose, np.zeros((frames, 15, 3, 3)), np.zeros((frames, 21, 3)), np.zeros(10))


def test_hands_agreement_counts_found_and_extra_frames():
    truth = HandPoses(hand([True, True, False], 0.1), hand([True, True, True], 0.2), np.eye(3), 3)
    real = HandPoses(hand([True, False, True], 0.14), hand([True, True, True], 0.23), np.eye(3), 3)
    assert hands_agreement(real, truth) == "wrist 3.0 cm off (median); found 4 of 5 hand-frames, 1 extra"


def test_masks_agreement_is_the_mean_iou_over_frames_showing_something():
    truth = np.zeros((3, 4, 4), bool)
    truth[0, :2] = True
    truth[1, :, :2] = True
    real = np.zeros_like(truth)
    real[0, :1] = True  # IoU 1/2
    real[1, :, :2] = True  # IoU 1
    assert masks_agreement(VideoMasks(real, "box"), VideoMasks(truth, "box")) == "IoU 0.75 (mean over 2 frames)"
    assert masks_agreement(VideoMasks(None, ""), VideoMasks(truth, "box")) == "not prompted"


def test_clean_frames_agreement_separates_the_person_from_the_rest():
    truth = np.zeros((1, 10, 10, 3), np.uint8)
    people = np.zeros((1, 10, 10), bool)
    people[0, 4:6, 4:6] = True
    real = truth.copy()
    real[0, 4:6, 4:6] = 30  # the inpainting is 30 off inside the mask
    real[0, 0] = 2  # and a re-encode shifts the first row by 2
    expected = "person region 30.0 off, elsewhere 0.3 off (mean abs, 0-255)"  # 10 of the 64 far pixels, 2 off
    assert clean_frames_agreement(real, truth, people, dilation=1) == expected
