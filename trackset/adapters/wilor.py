"""WiLoR (github.com/rolpotamias/WiLoR) as the hand pose backend.

Driven as WiLoR's ``demo.py`` drives it: the Ultralytics YOLO hand detector
(``pretrained_models/detector.pt``; class 1 = right hand), ``ViTDetDataset`` crops,
``WiLoR`` forward passes, and ``cam_crop_to_full`` to place each hand in the full image.
Per frame and side, the most confident detection is kept.

The wrist position does not come from WiLoR's weak-perspective depth, which is only
relative: the wrist's 2D projection is back-projected with the depth stage's metric depth
plus ``hands.wrist_depth_offset_m``; then jumps faster than ``hands.max_wrist_speed_m_s`` are
dropped and gaps up to ``hands.max_gap_frames`` interpolated (:mod:`trackset.geometry.hand_filters`).

Left hands: WiLoR mirrors a left-hand crop and predicts a right hand, and mirrors the
x coordinates of its joints and vertices back (as ``demo.py`` does). Rotations must be
mirrored back too, ``R_left = M · R · M`` with ``M = diag(-1, 1, 1)``, or a left wrist turns
the wrong way. The script pipeline stored the mirrored rotation and also rotated the
(already oriented) joints by it a second time; trackset does neither.

Weights: ``hands.weights_dir`` is a folder laid out like a WiLoR checkout:
``pretrained_models/{wilor_final.ckpt, model_config.yaml, detector.pt}`` and
``mano_data/{MANO_RIGHT.pkl, mano_mean_params.npz}`` (MANO is licensed separately).
``wilor_final.ckpt`` and ``detector.pt`` are loaded as trusted files (``weights_only=False``
for them alone, :meth:`WiLoRBackend.load`); MANO is read without chumpy and cannot run code
(:mod:`trackset.adapters.mano`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trackset.adapters import DOCS, missing_error, missing_modules, release_cuda_memory, torch_device, unavailable
from trackset.adapters.mano import ManoFileError, write_numpy_mano
from trackset.config.settings import HandsSettings
from trackset.domain import VideoRef
from trackset.formats.intermediates import DepthCamera, FramesMeta, Hand, HandPoses
from trackset.geometry.camera import mirror_x
from trackset.geometry.hand_filters import (
    backproject_wrist,
    drop_fast_jumps,
    gap_plan,
    interpolate_gaps,
    slerp_rotations,
)

logger = logging.getLogger(__name__)

STAGE = "hands"
INSTALL = "a checkout of github.com/rolpotamias/WiLoR on PYTHONPATH with its requirements.txt installed"

DETECTION_CONFIDENCE = 0.75  # YOLO threshold of the script pipeline
RESCALE_FACTOR = 2.0  # WiLoR's padding of the detected box (demo default)
DETECTOR_BATCH = 32  # frames per YOLO call
WILOR_BATCH = 64  # hand crops per WiLoR forward pass


def weight_files(weights_dir: Path) -> dict[str, Path]:
    """The files WiLoR needs under ``hands.weights_dir``."""
    models, mano = Path(weights_dir) / "pretrained_models", Path(weights_dir) / "mano_data"
    return {
        "checkpoint": models / "wilor_final.ckpt",
        "config": models / "model_config.yaml",
        "detector": models / "detector.pt",
        "mano": mano / "MANO_RIGHT.pkl",
        "mano_mean": mano / "mano_mean_params.npz",
    }


def missing(section: HandsSettings) -> list[str]:
    """Every missing part: WiLoR and Ultralytics, and each weight file under ``weights_dir``
    (or the setting itself), each naming its install or setting."""
    reasons = missing_modules(("wilor", "ultralytics"), INSTALL)
    weights_dir = section.weights_dir
    if weights_dir is None:
        return [*reasons, f"WiLoR's weights: set {STAGE}.weights_dir (see {DOCS})"]
    if not Path(weights_dir).is_dir():
        where = f"{STAGE}.weights_dir = {weights_dir}"
        return [*reasons, f"WiLoR's weights at {where}, which is not a directory (see {DOCS})"]
    return reasons + [
        f"{path.name} under {STAGE}.weights_dir = {weights_dir}: {path} is missing (see {DOCS})"
        for path in weight_files(weights_dir).values()
        if not path.is_file()
    ]


def check_available(section: HandsSettings) -> Path:
    """The weights directory; ModelUnavailableError naming every missing part (:func:`missing`)."""
    reasons = missing(section)
    if reasons or section.weights_dir is None:  # an unset weights_dir is among the reasons
        raise missing_error({STAGE: reasons})
    return Path(section.weights_dir)


@contextlib.contextmanager
def trusting_torch_load(path: Path) -> Iterator[None]:
    """While the block runs, ``torch.load`` of ``path``, and of nothing else, defaults to
    ``weights_only=False``; an explicit ``weights_only`` is kept, and ``torch.load`` is put
    back afterwards.

    For a loader that calls ``torch.load(path)`` without ``weights_only`` on a checkpoint that
    pickles whole modules (Ultralytics before 8.3 on ``detector.pt``): torch >= 2.6 would
    refuse it, and the script pipeline patched ``torch.load`` for the whole process instead.
    """
    import torch

    original = torch.load
    trusted = Path(path).resolve()

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("weights_only") is None and isinstance(f, str | os.PathLike) and Path(f).resolve() == trusted:
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def best_per_side(confidence: np.ndarray, is_right: np.ndarray) -> tuple[int | None, int | None]:
    """Index of the most confident left and right detection of one frame (None if absent).

    Examples:
        >>> best_per_side(np.array([0.8, 0.9, 0.95]), np.array([1, 1, 0]))
        (2, 1)
        >>> best_per_side(np.array([0.8]), np.array([1]))
        (None, 0)
    """
    best: list[int | None] = []
    for right in (0, 1):
        indices = np.flatnonzero(np.asarray(is_right) == right)
        best.append(int(indices[np.argmax(confidence[indices])]) if indices.size else None)
    return best[0], best[1]


def unmirror(rotations: np.ndarray, is_right: np.ndarray) -> np.ndarray:
    """Rotations ``(n, ..., 3, 3)`` of mirrored (left) predictions back to the image: ``M R M``.

    Examples:
        >>> R = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # +90 deg about z
        >>> left, right = unmirror(np.stack([R, R]), np.array([0, 1]))
        >>> bool((left == R.T).all()), bool((right == R).all())  # a left hand turns the other way
        (True, True)
    """
    left = (np.asarray(is_right) == 0).reshape((-1,) + (1,) * (rotations.ndim - 1))
    return np.where(left, mirror_x(rotations), rotations)


def project_full_image(points: np.ndarray, focal: np.ndarray, image_size: np.ndarray) -> np.ndarray:
    """Pixels of camera points ``(n, 3)`` under WiLoR's full-image camera.

    That camera has focal ``focal (n,)`` and its principal point at the image centre
    (``image_size (n, 2)`` is width, height), as in WiLoR's ``demo.py``.

    Examples:
        >>> project_full_image(np.array([[0.1, 0.0, 1.0]]), np.array([500.0]), np.array([[640.0, 480.0]])).tolist()
        [[370.0, 240.0]]
    """
    return focal[:, None] * points[:, :2] / points[:, 2:3] + image_size / 2.0


class WiLoRBackend:
    """Per-frame wrist poses, MANO hand poses and joints of both hands, from WiLoR."""

    def __init__(self, section: HandsSettings) -> None:
        self.section = section
        self._model: Any = None
        self._cfg: Any = None
        self._detector: Any = None
        self._dataset: Any = None
        self._cam_crop_to_full: Any = None
        self._mano_dir: Path | None = None
        self._device = "cpu"

    def load(self) -> None:
        """Load the detector and WiLoR once per worker.

        This is WiLoR's ``load_wilor`` with three changes. MANO comes from
        ``hands.weights_dir`` instead of ``./mano_data`` in the working directory, which a
        worker process does not control, rewritten without chumpy (:mod:`trackset.adapters.mano`)
        into a folder of this backend's. The checkpoint is read by trackset, with
        ``weights_only=False`` for that one configured file (torch >= 2.6 refuses the yacs
        config its ``hyper_parameters`` hold, and Lightning passes ``weights_only`` through
        differently from release to release), and the model is built as
        ``WiLoR.load_from_checkpoint`` builds it, without the renderer, which needs an EGL
        context and is never used here. The YOLO detector loads itself, with ``torch.load``
        answering ``weights_only=False`` for the configured ``detector.pt`` only, and only
        while it loads (:func:`trusting_torch_load`; Ultralytics before 8.3 passes nothing,
        which torch >= 2.6 turns into ``True``).
        """
        weights_dir = check_available(self.section)
        import torch
        from ultralytics import YOLO
        from wilor.configs import get_config
        from wilor.datasets.vitdet_dataset import ViTDetDataset
        from wilor.models import WiLoR
        from wilor.utils.renderer import cam_crop_to_full

        files = weight_files(weights_dir)
        self._mano_dir = Path(tempfile.mkdtemp(prefix="trackset-mano-"))
        try:
            write_numpy_mano(files["mano"], self._mano_dir / files["mano"].name)
        except (ManoFileError, pickle.UnpicklingError, EOFError) as exc:
            raise unavailable(STAGE, f"a readable MANO_RIGHT.pkl under hands.weights_dir ({exc}; see {DOCS})") from None
        cfg = get_config(str(files["config"]), update_cachedir=True)
        cfg.defrost()
        if "vit" in cfg.MODEL.BACKBONE.TYPE and "BBOX_SHAPE" not in cfg.MODEL:
            cfg.MODEL.BBOX_SHAPE = [192, 256]  # the ViT backbone's crop aspect, as load_wilor sets it
        if "PRETRAINED_WEIGHTS" in cfg.MODEL.BACKBONE:
            cfg.MODEL.BACKBONE.pop("PRETRAINED_WEIGHTS")
        cfg.MANO.DATA_DIR = cfg.MANO.MODEL_PATH = str(self._mano_dir)
        cfg.MANO.MEAN_PARAMS = str(files["mano_mean"])
        cfg.freeze()
        checkpoint = torch.load(files["checkpoint"], map_location="cpu", weights_only=False)  # the trusted file
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise unavailable(STAGE, f"a Lightning checkpoint at {files['checkpoint']} (no state_dict; see {DOCS})")
        model = WiLoR(cfg=cfg, init_renderer=False)
        missing, _ = model.load_state_dict(checkpoint["state_dict"], strict=False)  # strict=False as load_wilor
        if missing:
            logger.warning("%s: %d WiLoR weights not in %s: %s", STAGE, len(missing), files["checkpoint"], missing[:5])
        self._device = torch_device()
        self._model = model.to(self._device)
        self._model.eval()
        with trusting_torch_load(files["detector"]):
            self._detector = YOLO(str(files["detector"])).to(self._device)
        self._cfg, self._dataset, self._cam_crop_to_full = cfg, ViTDetDataset, cam_crop_to_full

    def infer(self, video: VideoRef, frames: np.ndarray, meta: FramesMeta, depth: DepthCamera) -> HandPoses:
        if self._model is None:
            raise RuntimeError("WiLoRBackend.infer called before load()")
        frames_bgr = [np.ascontiguousarray(frame[:, :, ::-1]) for frame in frames]
        detections = self._detect(frames_bgr)
        outputs = self._reconstruct(frames_bgr, detections)
        left, right = (self._track_side(outputs, is_right, depth, meta.fps, len(frames)) for is_right in (0, 1))
        return HandPoses(left, right, np.asarray(depth.intrinsics[0], np.float64), len(frames))

    def _detect(self, frames_bgr: list[np.ndarray]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(frame, boxes (k, 4) xyxy, is_right (k,))`` with at most one box per side and frame."""
        found = []
        for first in range(0, len(frames_bgr), DETECTOR_BATCH):
            chunk = frames_bgr[first : first + DETECTOR_BATCH]
            for offset, result in enumerate(self._detector(chunk, conf=DETECTION_CONFIDENCE, verbose=False)):
                boxes = result.boxes
                xyxy = boxes.xyxy.detach().cpu().numpy().reshape(-1, 4)
                confidence = boxes.conf.detach().cpu().numpy().reshape(-1)
                is_right = boxes.cls.detach().cpu().numpy().reshape(-1).round().astype(np.int64)
                keep = [i for i in best_per_side(confidence, is_right) if i is not None]
                if keep:
                    found.append((first + offset, xyxy[keep], is_right[keep]))
        return found

    def _reconstruct(
        self, frames_bgr: list[np.ndarray], detections: list[tuple[int, np.ndarray, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """WiLoR on every kept detection, as arrays over detections, in image orientation."""
        import torch
        from torch.utils.data import default_collate

        frame_of: list[int] = []
        items: list[Any] = []
        for frame, boxes, is_right in detections:
            crops = self._dataset(self._cfg, frames_bgr[frame], boxes, is_right, rescale_factor=RESCALE_FACTOR)
            items.extend(crops[i] for i in range(len(crops)))
            frame_of.extend([frame] * len(crops))
        if not items:
            return _no_hands()
        parts: dict[str, list[np.ndarray]] = {}
        for first in range(0, len(items), WILOR_BATCH):
            batch = default_collate(items[first : first + WILOR_BATCH])
            with torch.inference_mode():
                out = self._model({k: v.to(self._device) if torch.is_tensor(v) else v for k, v in batch.items()})
            n = batch["img"].shape[0]
            mano = out["pred_mano_params"]
            for key, value, shape in (
                ("global_orient", mano["global_orient"], (n, 3, 3)),
                ("hand_pose", mano["hand_pose"], (n, 15, 3, 3)),
                ("betas", mano["betas"], (n, 10)),
                ("keypoints", out["pred_keypoints_3d"], (n, 21, 3)),
                ("pred_cam", out["pred_cam"], (n, 3)),
                ("box_center", batch["box_center"], (n, 2)),
                ("box_size", batch["box_size"], (n,)),
                ("img_size", batch["img_size"], (n, 2)),
                ("right", batch["right"], (n,)),
            ):
                parts.setdefault(key, []).append(value.detach().float().cpu().numpy().reshape(shape))
        arrays = {key: np.concatenate(chunks) for key, chunks in parts.items()}
        right = arrays["right"].round().astype(np.int64)
        sign = 2.0 * right - 1.0  # +1 right, -1 left: undo the crop mirroring of left hands
        pred_cam = arrays["pred_cam"].copy()
        pred_cam[:, 1] *= sign
        focal = self._cfg.EXTRA.FOCAL_LENGTH / self._cfg.MODEL.IMAGE_SIZE * arrays["img_size"].max(axis=1)
        inputs = (pred_cam, arrays["box_center"], arrays["box_size"], arrays["img_size"], focal)
        cam_t = self._cam_crop_to_full(*(torch.from_numpy(a.astype(np.float32)) for a in inputs)).numpy()
        keypoints = arrays["keypoints"].copy()
        keypoints[:, :, 0] *= sign[:, None]
        return {
            "frame": np.asarray(frame_of, np.int64),
            "right": right,
            "wrist_px": project_full_image(keypoints[:, 0] + cam_t, focal, arrays["img_size"]),
            "wrist_rotation": unmirror(arrays["global_orient"], right),
            "hand_pose": unmirror(arrays["hand_pose"], right),
            "joints_offset": keypoints - keypoints[:, :1],  # joints relative to the wrist, camera axes
            "betas": arrays["betas"],
        }

    def _track_side(
        self, outputs: dict[str, np.ndarray], right: int, depth: DepthCamera, fps: float, num_frames: int
    ) -> Hand:
        """One hand's arrays over the video: back-project, filter, interpolate (NaN where invalid)."""
        section = self.section
        mine = np.flatnonzero(outputs["right"] == right)
        frames = outputs["frame"][mine]
        uv = np.full((num_frames, 2), np.nan)
        uv[frames] = outputs["wrist_px"][mine]
        positions, valid = backproject_wrist(uv, depth.depths, depth.intrinsics, section.wrist_depth_offset_m)
        valid = drop_fast_jumps(positions, valid, fps, section.max_wrist_speed_m_s)

        wrist = np.full((num_frames, 4, 4), np.nan)
        hand_pose = np.full((num_frames, 15, 3, 3), np.nan)
        joints = np.full((num_frames, 21, 3), np.nan)
        betas = np.full((num_frames, 10), np.nan)
        wrist[frames] = np.eye(4)
        wrist[frames, :3, :3] = outputs["wrist_rotation"][mine]
        wrist[:, :3, 3] = positions
        hand_pose[frames] = outputs["hand_pose"][mine]
        joints[frames] = outputs["joints_offset"][mine]
        betas[frames] = outputs["betas"][mine]
        joints += positions[:, None]
        median_betas = np.median(betas[valid], axis=0) if valid.any() else np.full(10, np.nan)

        filled_wrist, filled = interpolate_gaps(wrist, valid, section.max_gap_frames)
        gap, before, after, weight = gap_plan(valid, section.max_gap_frames)
        if gap.size:
            # Finger rotations by slerp; joints move rigidly with the interpolated wrist, their
            # offsets in the wrist's own frame interpolated linearly.
            hand_pose[gap] = slerp_rotations(hand_pose[before], hand_pose[after], weight[:, None])
            w = weight[:, None, None]
            local = (1 - w) * _in_wrist_frame(joints[before], wrist[before]) + w * _in_wrist_frame(
                joints[after], wrist[after]
            )
            joints[gap] = np.einsum("gij,gkj->gki", filled_wrist[gap, :3, :3], local) + filled_wrist[gap, None, :3, 3]
        for array in (filled_wrist, hand_pose, joints):
            array[~filled] = np.nan
        return Hand(
            valid=filled,
            wrist_pose=filled_wrist.astype(np.float32),
            hand_pose=hand_pose.astype(np.float32),
            joints_3d=joints.astype(np.float32),
            betas=median_betas.astype(np.float32),
        )

    def unload(self) -> None:
        self._model = self._detector = None
        if self._mano_dir is not None:
            shutil.rmtree(self._mano_dir, ignore_errors=True)
            self._mano_dir = None
        release_cuda_memory()


def _in_wrist_frame(points: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Points ``(n, k, 3)`` in camera axes expressed in their wrist's frame: ``Rᵀ (p - t)``."""
    return np.einsum("nji,nkj->nki", poses[:, :3, :3], points - poses[:, None, :3, 3])


def _no_hands() -> dict[str, np.ndarray]:
    """The per-detection arrays of a video where the detector found nothing."""
    return {
        "frame": np.zeros(0, np.int64),
        "right": np.zeros(0, np.int64),
        "wrist_px": np.zeros((0, 2)),
        "wrist_rotation": np.zeros((0, 3, 3)),
        "hand_pose": np.zeros((0, 15, 3, 3)),
        "joints_offset": np.zeros((0, 21, 3)),
        "betas": np.zeros((0, 10)),
    }
