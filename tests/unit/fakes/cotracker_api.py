"""Fake of CoTracker3's predictor (github.com/facebookresearch/co-tracker @ 82e02e8, ``cotracker/predictor.py``,
``CoTrackerPredictor``; ``hubconf.py: cotracker3_offline`` builds the same predictor).

Mirrors ``CoTrackerPredictor(checkpoint=..., offline=True, v2=False, window_len=60)`` (an
``nn.Module``: ``.to``, ``.eval``) and its ``forward(video (B, T, 3, H, W) float in
[0, 255], queries (B, N, 3) as (t, x, y))`` returning ``tracks (B, T, N, 2)`` and
``visibility (B, T, N)`` bool, which is what the torch.hub entry ``cotracker3_offline``
returns too.

The scene: every point moves by ``VELOCITY`` pixels a frame; a point whose query x is below
``hide_below_x`` is reported invisible at the last step.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

VELOCITY = (1.5, -0.5)  # pixels per frame (x, y)


@dataclass
class Predictor:
    checkpoint: str | None = None
    offline: bool = True
    window_len: int = 60
    hide_below_x: float = float("-inf")
    device: str = "cpu"
    calls: list[dict[str, Any]] = field(default_factory=list)

    def to(self, device: str) -> Predictor:
        self.device = str(device)
        return self

    def eval(self) -> Predictor:
        return self

    @torch.no_grad()
    def __call__(self, video: torch.Tensor, queries: torch.Tensor | None = None, **kwargs: Any):
        batch, steps, channels, height, width = video.shape
        assert batch == 1 and channels == 3 and video.dtype == torch.float32 and queries is not None
        self.calls.append({"video": video.cpu().numpy(), "queries": queries.cpu().numpy(), **kwargs})
        start = queries[0, :, 1:]  # (N, 2)
        t = torch.arange(steps, dtype=torch.float32)[:, None, None]
        tracks = start[None] + t * torch.tensor(VELOCITY)
        visibility = torch.ones(steps, start.shape[0], dtype=torch.bool)
        visibility[-1, start[:, 0] < self.hide_below_x] = False
        return tracks[None], visibility[None]


def install(monkeypatch: pytest.MonkeyPatch, hide_below_x: float = float("-inf")) -> list[Predictor]:
    """Install fake ``cotracker`` and ``cotracker.predictor``, and a fake ``torch.hub.load``."""
    built: list[Predictor] = []
    package = types.ModuleType("cotracker")
    package.__spec__ = importlib.machinery.ModuleSpec("cotracker", None, is_package=True)
    package.__path__ = []
    predictor = types.ModuleType("cotracker.predictor")
    predictor.__spec__ = importlib.machinery.ModuleSpec("cotracker.predictor", None)

    def make(checkpoint: str | None = None, offline: bool = True, v2: bool = False, window_len: int = 60) -> Predictor:
        model = Predictor(checkpoint, offline, window_len, hide_below_x)
        built.append(model)
        return model

    def hub_load(repo: str, model: str, *args: Any, **kwargs: Any) -> Predictor:
        assert (repo, model) == ("facebookresearch/co-tracker", "cotracker3_offline")
        return make()

    predictor.CoTrackerPredictor = make
    package.predictor = predictor
    monkeypatch.setitem(sys.modules, "cotracker", package)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", predictor)
    monkeypatch.setattr(torch.hub, "load", hub_load)
    return built
