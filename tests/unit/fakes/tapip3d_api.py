"""Fake of TAPIP3D's ``utils.inference_utils`` (github.com/zbw001/TAPIP3D @ 9359ae2).

Mirrors ``load_model(checkpoint_path) -> model`` (``.to``, ``.eval``, ``.set_image_size``) and
``inference(*, model, video (T,3,H,W), depths (T,H,W), intrinsics (T,3,3), extrinsics (T,4,4),
query_point (N,4) = (t, x, y, z) in world, num_iters, grid_size, bidrectional, vis_threshold)
-> (coords.squeeze(), visibs.squeeze())`` with coords ``(T, N, 3)`` in world coordinates and
``visibs = sigmoid(logits) >= vis_threshold``, as TAPIP3D's ``inference`` computes it.

Failure mode: fewer than four valid (positive) depth values in the window make TAPIP3D's
``torch.kthvalue(k=int(0.25 n))`` fail, as the real one does.

The scene is static, so every point stays at its world position. Every point is seen with
visibility ``VISIBLE``, except that points whose world x is below ``hide_below_x`` are
occluded at the last step (visibility ``OCCLUDED``): a threshold between the two drops them,
a threshold of 0 keeps them.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

VISIBLE, OCCLUDED = 0.97, 0.2  # sigmoid of the visibility logits


def _module(name: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    return module


@dataclass
class Tracker:
    checkpoint: str
    device: str = "cpu"
    image_size: tuple[int, int] = (384, 512)
    calls: list[dict[str, Any]] = field(default_factory=list)
    hide_below_x: float = float("-inf")

    def to(self, device: str) -> Tracker:
        self.device = str(device)
        return self

    def eval(self) -> Tracker:
        return self

    def set_image_size(self, image_size: tuple[int, int]) -> None:
        self.image_size = image_size


def install(monkeypatch: pytest.MonkeyPatch, hide_below_x: float = float("-inf")) -> list[Tracker]:
    """Install fake ``models``, ``utils`` and ``utils.inference_utils``; returns loaded models."""
    loaded: list[Tracker] = []
    models = _module("models", package=True)
    utils = _module("utils", package=True)
    inference_utils = _module("utils.inference_utils")

    def load_model(checkpoint_path: str) -> Tracker:
        model = Tracker(checkpoint_path, hide_below_x=hide_below_x)
        loaded.append(model)
        return model

    @torch.no_grad()
    def inference(
        *,
        model: Tracker,
        video: torch.Tensor,
        depths: torch.Tensor,
        intrinsics: torch.Tensor,
        extrinsics: torch.Tensor,
        query_point: torch.Tensor,
        num_iters: int = 6,
        grid_size: int = 8,
        bidrectional: bool = True,
        vis_threshold: float = 0.9,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        valid = depths[depths > 0].reshape(-1)  # TAPIP3D's depth range: kthvalue of the 25th percentile
        if int(0.25 * len(valid)) < 1:
            raise RuntimeError("kthvalue(): selected number k out of range for dimension 0")
        T, C, H, W = video.shape
        assert depths.shape == (T, H, W) and C == 3
        model.set_image_size((H, W))  # the real inference() sets the input's size itself
        model.calls.append(
            {
                "video": video.cpu().numpy(),
                "depths": depths.cpu().numpy(),
                "intrinsics": intrinsics.cpu().numpy(),
                "extrinsics": extrinsics.cpu().numpy(),
                "query_point": query_point.cpu().numpy(),
                "num_iters": num_iters,
                "grid_size": grid_size,
                "bidrectional": bidrectional,
                "vis_threshold": vis_threshold,
            }
        )
        world = query_point[:, 1:]
        coords = world[None].expand(T, -1, -1).clone()
        visibility = torch.full((T, world.shape[0]), VISIBLE)
        visibility[-1, world[:, 0] < model.hide_below_x] = OCCLUDED
        visibs = visibility >= vis_threshold
        return coords.squeeze(), visibs.squeeze()

    inference_utils.load_model = load_model
    inference_utils.inference = inference
    utils.inference_utils = inference_utils
    for module in (models, utils, inference_utils):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return loaded
