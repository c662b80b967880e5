"""Fake of DiffuEraser's and ProPainter's Python API (github.com/lixiaowen-xw/DiffuEraser).

Mirrors ``propainter.inference.Propainter(propainter_model_dir, device)`` with
``forward(video, mask, output_path, video_length, ref_stride, neighbor_length,
subvideo_length, mask_dilation)`` and ``diffueraser.diffueraser.DiffuEraser(device,
base_model_path, vae_path, diffueraser_path, ckpt)`` with ``forward(validation_image,
validation_mask, priori, output_path, max_img_size, video_length, mask_dilation_iter,
guidance_scale)``: every path is an MP4 file, read and written at one frame rate, as
``run_diffueraser.py`` uses them. DiffuEraser's constructor loads its PCM weights from the
relative path ``weights/PCM_Weights``, so the fake records its working directory then.

The "inpainting": ProPainter's prior is the video with every masked (non-zero) pixel set to
``FILL``; DiffuEraser returns the prior.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

FILL = (128, 64, 32)


def read(path: str) -> tuple[np.ndarray, float]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


def write(path: str, frames: np.ndarray, fps: float) -> None:
    with av.open(path, mode="w") as out:
        stream = out.add_stream("libx264rgb", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.options = {"qp": "0"}
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = index
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))


@dataclass
class Propainter:
    model_dir: str
    device: str = "cuda"
    calls: list[dict[str, Any]] = field(default_factory=list)

    def forward(self, video: str, mask: str, output_path: str, video_length: int = 10, **kwargs: Any) -> str:
        frames, fps = read(video)
        masks, mask_fps = read(mask)
        assert fps == mask_fps, "The frame rate of all input videos needs to be consistent."
        self.calls.append({"video_length": video_length, "masks": masks[..., 0] > 0, **kwargs})
        prior = frames.copy()
        prior[masks[..., 0] > 0] = FILL
        write(output_path, prior, fps)
        return output_path


@dataclass
class DiffuEraser:
    device: str
    base_model_path: str
    vae_path: str
    diffueraser_path: str
    ckpt: str = "Normal CFG 4-Step"
    cwd: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cwd = os.getcwd()
        assert Path("weights/PCM_Weights").is_dir(), "DiffuEraser loads weights/PCM_Weights relative to the cwd"

    def forward(self, validation_image: str, validation_mask: str, priori: str, output_path: str, **kwargs: Any):
        frames, fps = read(validation_image)
        prior, _ = read(priori)
        assert len(frames) >= 22, "The effective video duration is too short."
        self.calls.append(kwargs)
        write(output_path, prior, fps)
        return output_path


def _module(name: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        module.__path__ = []
    return module


def install(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Install fake ``diffueraser.diffueraser`` and ``propainter.inference``; returns the models built."""
    built: dict[str, list[Any]] = {"propainter": [], "diffueraser": []}
    eraser_package, eraser = _module("diffueraser", True), _module("diffueraser.diffueraser")
    painter_package, inference = _module("propainter", True), _module("propainter.inference")

    def make_eraser(*args: Any, **kwargs: Any) -> DiffuEraser:
        model = DiffuEraser(*args, **kwargs)
        built["diffueraser"].append(model)
        return model

    def make_propainter(*args: Any, **kwargs: Any) -> Propainter:
        model = Propainter(*args, **kwargs)
        built["propainter"].append(model)
        return model

    eraser.DiffuEraser = make_eraser
    inference.Propainter = make_propainter
    for module in (eraser_package, eraser, painter_package, inference):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the adapter puts the checkout on it
    return built


def checkout(root: Path) -> Path:
    """A DiffuEraser checkout as the adapter expects it: its code file and ``weights/``."""
    (root / "diffueraser").mkdir(parents=True, exist_ok=True)
    (root / "diffueraser" / "diffueraser.py").write_text("")
    for name in ("stable-diffusion-v1-5", "sd-vae-ft-mse", "diffuEraser", "propainter", "PCM_Weights"):
        (root / "weights" / name).mkdir(parents=True, exist_ok=True)
    return root
