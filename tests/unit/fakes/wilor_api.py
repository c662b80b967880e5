"""Fake of WiLoR (github.com/rolpotamias/WiLoR @ 819369a, = y2r's ``thirdparty/WiLoR``), of how it
loads MANO through smplx 0.1.28, of Lightning's checkpoint loading and of the Ultralytics YOLO detector.

Stands for:
- ``ultralytics.YOLO(model)`` (``ultralytics/engine/model.py``): loads ``model`` as 8.1.34, WiLoR's
  pin, does (``ultralytics/nn/tasks.py: torch_safe_load``: ``torch.load(file, map_location="cpu")``,
  no ``weights_only``, so torch >= 2.6 refuses the pickled detector module); the result is a
  callable ``detector(images_bgr, conf=..., verbose=...)`` returning one result per image with
  ``result.boxes.xyxy (k,4)``, ``.conf (k,)``, ``.cls (k,)`` (class 1 = right hand);
- ``wilor/configs/__init__.py: get_config(config_file, merge=True, update_cachedir=False)`` -> a
  frozen yacs-like config;
- ``wilor/models/wilor.py: WiLoR(cfg, init_renderer=True)``, a LightningModule: the constructor
  builds MANO as ``wilor/models/mano_wrapper.py`` -> ``smplx.MANOLayer`` does, with a plain
  ``pickle.load(open(<cfg.MANO.MODEL_PATH>/MANO_RIGHT.pkl), encoding="latin1")`` (which imports
  chumpy for the chumpy arrays the licensed file holds; ``install`` makes ``import chumpy`` fail,
  as on Python 3.11), and, with ``init_renderer``, the pyrender renderers (an EGL context);
  ``WiLoR.load_from_checkpoint(checkpoint_path, map_location=None, hparams_file=None,
  strict=None, weights_only=None, **kwargs)`` as Lightning >= 2.6 runs it (``torch.load`` with
  ``weights_only`` passed through, None meaning torch's default, which refuses the yacs config
  in ``hyper_parameters``; then the class built from the hyper-parameters and ``kwargs``, and
  ``load_state_dict``); ``load_state_dict(state_dict, strict)`` returning missing and
  unexpected keys;
- the model called on a collated batch returns ``pred_cam (B,3)``, ``pred_mano_params`` with
  ``global_orient (B,1,3,3)``, ``hand_pose (B,15,3,3)``, ``betas (B,10)``, and
  ``pred_keypoints_3d (B,21,3)``; ``wilor/datasets/vitdet_dataset.py: ViTDetDataset(cfg, img_cv2,
  boxes, right, rescale_factor)`` items with ``img, personid, box_center, box_size, img_size,
  right``; ``wilor/utils/renderer.py: cam_crop_to_full(cam_bbox, box_center, box_size, img_size,
  focal_length)`` (WiLoR's formula).

:func:`write_weights` lays out a weights folder: a Lightning checkpoint whose
``hyper_parameters`` hold a config object, a detector that pickles a module object, a MANO file
holding ``chumpy.ch.Ch`` objects pickled as chumpy pickles them (its ``__getstate__``: the
``__dict__`` without ``_parents`` and ``_cache``, the array in ``x``), in a Python 2 style pickle
(protocol 2, ``copy_reg`` names), and the mean parameters.

The fake model is built so that the wrist projects exactly onto the box centre, the wrist
rotation is ``Rz(box centre x in degrees)``, every finger rotation is ``Ry(box centre y in
degrees)``, betas are ``box centre x / 100`` and joint j >= 1 sits at ``(0.01 j, 0.02, 0)`` from
the wrist (joint 0), all in the (mirrored, for left hands) crop frame as WiLoR reports them.
"""

from __future__ import annotations

import importlib.machinery
import pickle
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

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
        self.checkpoint = torch.load(path, map_location="cpu")  # ultralytics 8.1.34's torch_safe_load
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


MANO_SHAPES = {"v_template": (778, 3), "shapedirs": (778, 3, 10), "posedirs": (778, 3, 135), "weights": (778, 16)}
STATE_DICT_KEYS = ("backbone.weight", "refine_net.weight", "mano.joint_map")


class DetectionModel(torch.nn.Module):
    """What ``detector.pt`` pickles: a module object (Ultralytics' ``DetectionModel``)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))


class ChumpyCh:
    """Writes like ``chumpy.ch.Ch`` (pickled as ``chumpy.ch.Ch``, state from its ``__getstate__``)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __getstate__(self) -> dict[str, Any]:
        return {"x": self.x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}, "_make_dense": False}


def mano_fields(seed: int = 0) -> dict[str, Any]:
    """MANO_RIGHT.pkl's fields with their shapes (random values), ``shapedirs`` a chumpy array."""
    import scipy.sparse

    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = {name: rng.normal(size=shape) for name, shape in MANO_SHAPES.items()}
    fields["shapedirs"] = ChumpyCh(fields["shapedirs"])
    fields["J_regressor"] = scipy.sparse.csc_matrix(rng.random((16, 778)))
    fields["kintree_table"] = np.array([[4294967295, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], range(16)])
    fields["f"] = rng.integers(0, 778, (1538, 3)).astype(np.uint32)
    fields["hands_components"] = rng.normal(size=(45, 45))
    fields["hands_mean"] = rng.normal(size=45)
    fields["bs_style"], fields["bs_type"] = "lbs", "lrotmin"
    return fields


def write_chumpy_pickle(path: Path, fields: dict[str, Any]) -> Path:
    """``fields`` pickled as the MANO download is: its chumpy arrays as ``chumpy.ch.Ch``, protocol 2."""
    chumpy, ch = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    saved = {name: sys.modules.get(name) for name in ("chumpy", "chumpy.ch")}
    ch.Ch, chumpy.ch = ChumpyCh, ch
    ChumpyCh.__module__, ChumpyCh.__qualname__, ChumpyCh.__name__ = "chumpy.ch", "Ch", "Ch"
    sys.modules.update({"chumpy": chumpy, "chumpy.ch": ch})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(fields, protocol=2))
    finally:
        ChumpyCh.__module__, ChumpyCh.__qualname__, ChumpyCh.__name__ = __name__, "ChumpyCh", "ChumpyCh"
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


def write_weights(root: Path) -> Path:
    """A ``hands.weights_dir`` with files as WiLoR's download has them (module docstring)."""
    models, mano = root / "pretrained_models", root / "mano_data"
    models.mkdir(parents=True, exist_ok=True)
    config = Cfg(MODEL=Cfg(IMAGE_SIZE=256), MANO=Cfg(DATA_DIR="mano_data"))
    state_dict = {key: torch.full((2,), float(i)) for i, key in enumerate(STATE_DICT_KEYS)}
    torch.save({"state_dict": state_dict, "hyper_parameters": {"cfg": config}, "epoch": 3}, models / "wilor_final.ckpt")
    torch.save({"model": DetectionModel(), "train_args": {}}, models / "detector.pt")
    (models / "model_config.yaml").write_text("MANO:\n  DATA_DIR: mano_data\n")
    write_chumpy_pickle(mano / "MANO_RIGHT.pkl", mano_fields())
    np.savez(mano / "mano_mean_params.npz", pose=np.zeros(96), shape=np.zeros(10), cam=np.zeros(3))
    return root


def load_mano_as_smplx(model_path: str) -> dict[str, Any]:
    """``smplx.MANO.__init__``'s read of ``<model_path>/MANO_RIGHT.pkl``: an unrestricted pickle load."""
    with open(Path(model_path) / "MANO_RIGHT.pkl", "rb") as handle:
        data = pickle.load(handle, encoding="latin1")
    for name, shape in MANO_SHAPES.items():  # smplx takes np.array(...) of each
        if np.asarray(data[name]).shape != shape:
            raise ValueError(f"MANO {name} has shape {np.asarray(data[name]).shape}, expected {shape}")
    return data


class WiLoRModel:
    """``wilor.models.WiLoR``: built from a config, weights loaded by ``load_state_dict``."""

    loaded: ClassVar[list[WiLoRModel]] = []

    def __init__(self, cfg: Cfg, init_renderer: bool = True) -> None:
        self.cfg, self.device, self.init_renderer = cfg, "cpu", init_renderer
        self.checkpoint: str | None = None
        self.state_dict: dict[str, torch.Tensor] = {}
        mano = load_mano_as_smplx(cfg.MANO.MODEL_PATH)
        self.mano = types.SimpleNamespace(faces=np.asarray(mano["f"]), data=mano)
        type(self).loaded.append(self)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str,
        map_location: Any = None,
        hparams_file: str | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> WiLoRModel:
        checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=weights_only)
        model = cls(**{**checkpoint["hyper_parameters"], **kwargs})
        model.load_state_dict(checkpoint["state_dict"], strict=bool(strict))
        model.checkpoint = str(checkpoint_path)
        return model

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> tuple[list[str], list[str]]:
        missing = [k for k in STATE_DICT_KEYS if k not in state_dict]
        unexpected = [k for k in state_dict if k not in STATE_DICT_KEYS]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict: missing {missing}, unexpected {unexpected}")
        self.state_dict = dict(state_dict)
        return missing, unexpected

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

    def yolo(model: str = "yolov8n.pt", task: str | None = None, verbose: bool = False) -> Detector:
        detector = Detector(model, script, state["seen"])
        state["detectors"].append(detector)
        return detector

    def get_config(config_file: str, merge: bool = True, update_cachedir: bool = False) -> Cfg:
        state["config_file"] = config_file
        cfg = Cfg(
            MODEL=Cfg(IMAGE_SIZE=256, BACKBONE=Cfg(TYPE="vit", PRETRAINED_WEIGHTS="vitpose.pth")),
            EXTRA=Cfg(FOCAL_LENGTH=5000),
            MANO=Cfg(DATA_DIR="mano_data", MODEL_PATH="./pretrained_models/mano_data", MEAN_PARAMS="x.npz"),
        )
        cfg.freeze()
        return cfg

    class WiLoR(WiLoRModel):
        loaded = state["models"]

    ultralytics.YOLO = yolo
    configs.get_config = get_config
    models.WiLoR = WiLoR
    vitdet.ViTDetDataset = ViTDetDataset
    renderer.cam_crop_to_full = cam_crop_to_full
    for module in (ultralytics, wilor, configs, models, datasets, vitdet, utils, renderer):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(sys.modules, "chumpy", None)  # chumpy does not import on Python 3.11
    return state
