"""Fake of WiLoR (github.com/rolpotamias/WiLoR @ 819369a) and the Ultralytics YOLO detector.

Mirrors: ``ultralytics.YOLO(path)`` -> callable ``detector(images_bgr, conf=..., verbose=...)``
returning one result per image with ``result.boxes.xyxy (k,4)``, ``.conf (k,)``, ``.cls (k,)``
(class 1 = right hand); ``wilor.configs.get_config(path, update_cachedir=...)`` -> a yacs-like
config; ``wilor.models.WiLoR.load_from_checkpoint(path, strict=..., cfg=...)``; the model
called on a collated batch returns ``pred_cam (B,3)``, ``pred_mano_params`` with
``global_orient (B,1,3,3)``, ``hand_pose (B,15,3,3)``, ``betas (B,10)``, and
``pred_keypoints_3d (B,21,3)``; ``wilor.datasets.vitdet_dataset.ViTDetDataset(cfg, img_cv2,
boxes, right, rescale_factor)`` items with ``img, personid, box_center, box_size, img_size,
right``; ``wilor.utils.renderer.cam_crop_to_full(cam_bbox, box_center, box_size, img_size,
focal_length)`` (WiLoR's formula).

The fake model is built so that the wrist projects exactly onto the box centre, the wrist
rotation is ``Rz(box centre x in degrees)``, every finger rotation is ``Ry(box centre y in
degrees)``, betas are ``box centre x / 100`` and joint j >= 1 sits at ``(0.01 j, 0.02, 0)`` from
the wrist (joint 0), all in the (mirrored, for left hands) crop frame as WiLoR reports them.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation


def _module(name: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    return module


class Cfg(dict):
    """The bits of yacs' CfgNode used: attribute access, ``in``, ``pop``, defrost/freeze."""

    def __init__(self, **entries: Any) -> None:
        super().__init__(**entries)
        object.__setattr__(self, "frozen", False)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if self.frozen:
            raise AttributeError(f"config is frozen, cannot set {name}")
        self[name] = value

    def defrost(self) -> None:
        for value in self.values():
            if isinstance(value, Cfg):
                value.defrost()
        object.__setattr__(self, "frozen", False)

    def freeze(self) -> None:
        for value in self.values():
            if isinstance(value, Cfg):
                value.freeze()
        object.__setattr__(self, "frozen", True)


class Boxes:
    def __init__(self, xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> None:
        self.xyxy = torch.as_tensor(xyxy, dtype=torch.float32).reshape(-1, 4)
        self.conf = torch.as_tensor(conf, dtype=torch.float32)
        self.cls = torch.as_tensor(cls, dtype=torch.float32)
        self.data = torch.cat([self.xyxy, self.conf[:, None], self.cls[:, None]], dim=1)


class Detector:
    """YOLO stand-in: ``script[frame]`` lists ``(x0, y0, x1, y1, confidence, is_right)``."""

    def __init__(self, path: str, script: dict[int, list[tuple[float, ...]]], seen: list[np.ndarray]) -> None:
        self.path, self.script, self.seen, self.device = path, script, seen, "cpu"

    def to(self, device: str) -> Detector:
        self.device = str(device)
        return self

    def __call__(self, images: list[np.ndarray], conf: float = 0.25, verbose: bool = True) -> list[Any]:
        results = []
        for image in images:
            frame = len(self.seen)
            self.seen.append(image)
            rows = np.array([r for r in self.script.get(frame, []) if r[4] >= conf], dtype=np.float32).reshape(-1, 6)
            results.append(types.SimpleNamespace(boxes=Boxes(rows[:, :4], rows[:, 4], rows[:, 5])))
        return results


class ViTDetDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        cfg: Cfg,
        img_cv2: np.ndarray,
        boxes: np.ndarray,
        right: np.ndarray,
        rescale_factor=2.5,
        train: bool = False,
        **kwargs: Any,
    ) -> None:
        self.cfg, self.img_cv2 = cfg, img_cv2
        boxes = boxes.astype(np.float32)
        self.center = (boxes[:, 2:4] + boxes[:, 0:2]) / 2.0
        self.size = rescale_factor * (boxes[:, 2:4] - boxes[:, 0:2]).max(axis=1)
        self.right = right.astype(np.float32)

    def __len__(self) -> int:
        return len(self.center)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return {
            "img": np.zeros((3, 4, 4), np.float32),
            "personid": idx,
            "box_center": self.center[idx].copy(),
            "box_size": float(self.size[idx]),
            "img_size": 1.0 * np.array([self.img_cv2.shape[1], self.img_cv2.shape[0]]),
            "right": self.right[idx].copy(),
        }


def cam_crop_to_full(cam_bbox, box_center, box_size, img_size, focal_length=5000.0):
    img_w, img_h = img_size[:, 0], img_size[:, 1]
    cx, cy, b = box_center[:, 0], box_center[:, 1], box_size
    bs = b * cam_bbox[:, 0] + 1e-9
    tz = 2 * focal_length / bs
    tx = (2 * (cx - img_w / 2.0) / bs) + cam_bbox[:, 1]
    ty = (2 * (cy - img_h / 2.0) / bs) + cam_bbox[:, 2]
    return torch.stack([tx, ty, tz], dim=-1)


class WiLoRModel:
    def __init__(self, checkpoint: str, cfg: Cfg) -> None:
        self.checkpoint, self.cfg, self.device = checkpoint, cfg, "cpu"
        self.mano = types.SimpleNamespace(faces=np.zeros((1538, 3), np.int64))

    def to(self, device: str) -> WiLoRModel:
        self.device = str(device)
        return self

    def eval(self) -> WiLoRModel:
        return self

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        centre = batch["box_center"].double().cpu().numpy()
        n = centre.shape[0]
        orient = Rotation.from_euler("z", centre[:, :1], degrees=True).as_matrix()
        fingers = Rotation.from_euler("y", centre[:, 1:2], degrees=True).as_matrix()
        joints = np.zeros((n, 21, 3))
        joints[:, :, 0] = 0.01 * np.arange(21)
        joints[:, 1:, 1] = 0.02
        pred_cam = np.tile([1.0, 0.0, 0.0], (n, 1))
        return {
            "pred_cam": torch.tensor(pred_cam, dtype=torch.float32),
            "pred_mano_params": {
                "global_orient": torch.tensor(orient[:, None], dtype=torch.float32),
                "hand_pose": torch.tensor(np.repeat(fingers[:, None], 15, axis=1), dtype=torch.float32),
                "betas": torch.tensor(np.repeat(centre[:, :1] / 100.0, 10, axis=1), dtype=torch.float32),
            },
            "pred_keypoints_3d": torch.tensor(joints, dtype=torch.float32),
            "pred_vertices": torch.zeros(n, 778, 3),
        }


def install(monkeypatch: pytest.MonkeyPatch, script: dict[int, list[tuple[float, ...]]]) -> dict[str, Any]:
    """Install fake ``ultralytics`` and ``wilor`` modules; returns what they saw and loaded."""
    state: dict[str, Any] = {"seen": [], "models": [], "detectors": []}
    ultralytics = _module("ultralytics", package=True)
    wilor = _module("wilor", package=True)
    configs = _module("wilor.configs")
    models = _module("wilor.models")
    datasets = _module("wilor.datasets", package=True)
    vitdet = _module("wilor.datasets.vitdet_dataset")
    utils = _module("wilor.utils", package=True)
    renderer = _module("wilor.utils.renderer")

    def yolo(path: str) -> Detector:
        detector = Detector(path, script, state["seen"])
        state["detectors"].append(detector)
        return detector

    def get_config(config_file: str, merge: bool = True, update_cachedir: bool = False) -> Cfg:
        state["config_file"] = config_file
        return Cfg(
            MODEL=Cfg(IMAGE_SIZE=256, BACKBONE=Cfg(TYPE="vit", PRETRAINED_WEIGHTS="vitpose.pth")),
            EXTRA=Cfg(FOCAL_LENGTH=5000),
            MANO=Cfg(DATA_DIR="mano_data", MODEL_PATH="./pretrained_models/mano_data", MEAN_PARAMS="x.npz"),
        )

    class WiLoR:
        @classmethod
        def load_from_checkpoint(cls, checkpoint_path: str, strict: bool = True, cfg: Cfg | None = None, **kw: Any):
            assert cfg is not None and cfg.frozen
            model = WiLoRModel(checkpoint_path, cfg)
            state["models"].append(model)
            return model

    ultralytics.YOLO = yolo
    configs.get_config = get_config
    models.WiLoR = WiLoR
    vitdet.ViTDetDataset = ViTDetDataset
    renderer.cam_crop_to_full = cam_crop_to_full
    for module in (ultralytics, wilor, configs, models, datasets, vitdet, utils, renderer):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return state
