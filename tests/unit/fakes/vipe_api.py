"""Fake of the parts of ``nvidia-vipe`` (github.com/nv-tlabs/vipe, v1.1.0) the adapter uses.

Mirrors: ``vipe.make_pipeline(config) -> Pipeline`` with ``return_output_streams`` and
``run(stream) -> AnnotationPipelineOutput(output_streams=[...])``;
``vipe.config.parse_typed_config(config_name, hydra_args)``; ``vipe.streams.base``'s
``FrameAttribute``, ``VideoFrame`` (kw-only dataclass), ``VideoStream`` and
``ProcessedVideoStream(stream, processors).cache(desc, online)``. Output frames carry ``pose``
as an SE3 (camera->world, ``.matrix()``), ``intrinsics`` as ``[fx, fy, cx, cy]`` and
``metric_depth`` as ``(H, W)``, all torch tensors.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pytest
import torch


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


class FrameAttribute(Enum):
    POSE = "pose"
    INTRINSICS = "intrinsics"
    METRIC_DEPTH = "metric_depth"


class SE3:
    """Holds a 4x4 camera->world matrix like lietorch's SE3."""

    def __init__(self, matrix: np.ndarray) -> None:
        self._matrix = torch.as_tensor(matrix, dtype=torch.float32)

    def matrix(self) -> torch.Tensor:
        return self._matrix


@dataclass(kw_only=True)
class VideoFrame:
    raw_frame_idx: int
    rgb: torch.Tensor
    pose: SE3 | None = None
    intrinsics: torch.Tensor | None = None
    metric_depth: torch.Tensor | None = None


class VideoStream(torch.utils.data.IterableDataset):
    def frame_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def name(self) -> str:
        raise NotImplementedError

    def fps(self) -> float:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class CachedVideoStream(VideoStream):
    def __init__(self, stream: VideoStream, desc: str = "Caching") -> None:
        self._fps, self._name, self._size = stream.fps(), stream.name(), stream.frame_size()
        self.data = list(stream)

    def fps(self) -> float:
        return self._fps

    def name(self) -> str:
        return self._name

    def frame_size(self) -> tuple[int, int]:
        return self._size

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[VideoFrame]:
        return iter(self.data)


class ProcessedVideoStream(VideoStream):
    def __init__(self, stream: VideoStream, processors: list[Any]) -> None:
        self.stream, self.processors = stream, processors

    def cache(self, desc: str = "Caching", online: bool = False) -> CachedVideoStream:
        return CachedVideoStream(self.stream, desc)

    def __iter__(self) -> Iterator[VideoFrame]:
        return iter(self.stream)


@dataclass
class Scene:
    """What the fake "estimates" for frame t of any video."""

    camera_to_world: Callable[[int], np.ndarray]
    depth: Callable[[int, tuple[int, int]], np.ndarray]
    intrinsics: tuple[float, float, float, float]
    runs: list[dict[str, Any]] = field(default_factory=list)
    configs: list[list[str]] = field(default_factory=list)


@dataclass
class AnnotationPipelineOutput:
    payload: Any = None
    output_streams: list[Any] | None = None


class Pipeline:
    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.return_output_streams = False

    def run(self, video_data: VideoStream) -> AnnotationPipelineOutput:
        assert isinstance(video_data, VideoStream)
        frames = list(video_data)
        self.scene.runs.append(
            {"name": video_data.name(), "fps": video_data.fps(), "rgb": [f.rgb.cpu().numpy() for f in frames]}
        )
        out = [
            VideoFrame(
                raw_frame_idx=f.raw_frame_idx,
                rgb=f.rgb,
                pose=SE3(self.scene.camera_to_world(f.raw_frame_idx)),
                intrinsics=torch.tensor(self.scene.intrinsics),
                metric_depth=torch.as_tensor(self.scene.depth(f.raw_frame_idx, tuple(f.rgb.shape[:2]))),
            )
            for f in frames
        ]
        return AnnotationPipelineOutput(output_streams=[out] if self.return_output_streams else None)


def install(monkeypatch: pytest.MonkeyPatch, scene: Scene) -> Scene:
    """Install fake ``vipe``, ``vipe.config``, ``vipe.streams`` and ``vipe.streams.base``."""
    vipe = _module("vipe")
    config = _module("vipe.config")
    streams = _module("vipe.streams")
    base = _module("vipe.streams.base")

    def parse_typed_config(config_name: str = "default", hydra_args: tuple[str, ...] = (), config_dir: Any = None):
        scene.configs.append(list(hydra_args))
        return types.SimpleNamespace(pipeline=types.SimpleNamespace(overrides=list(hydra_args)))

    vipe.make_pipeline = lambda cfg: Pipeline(scene)
    vipe.get_config_path = lambda: "configs"
    config.parse_typed_config = parse_typed_config
    for name, value in {
        "FrameAttribute": FrameAttribute,
        "VideoFrame": VideoFrame,
        "VideoStream": VideoStream,
        "ProcessedVideoStream": ProcessedVideoStream,
    }.items():
        setattr(base, name, value)
    vipe.config, vipe.streams, streams.base = config, streams, base
    for module in (vipe, config, streams, base):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return scene
