"""Fake of NVIDIA ViPE as the adapter drives it: upstream (github.com/nv-tlabs/vipe @ 157494a,
v1.1.0) or y2r's vendored copy (hgupt3/vipe @ 1249a0c, ViPE 0.1.1 with local changes).

Both: ``vipe.make_pipeline(config) -> Pipeline`` with ``return_output_streams`` and
``run(stream) -> AnnotationPipelineOutput(output_streams=[...])`` (``vipe/pipeline/__init__.py``);
``vipe.get_config_path()``; ``vipe.streams.base``'s ``FrameAttribute``, ``VideoFrame``
(kw-only dataclass), ``VideoStream`` and ``ProcessedVideoStream(stream, processors).cache(desc,
online)``. Output frames carry ``pose`` as an SE3 (camera->world, ``.matrix()``),
``intrinsics`` as ``[fx, fy, cx, cy]`` and ``metric_depth`` as ``(H, W)``, all torch tensors.

Upstream only: ``vipe.config.parse_typed_config(config_name, hydra_args)``
(``vipe/config/parse.py``): Hydra overrides on a struct config (an unknown key cannot be
overridden, ``+`` adds, ``++`` adds or overrides), then pydantic validation with
``extra="forbid"``, so the field-of-view keys are refused either way.

y2r's copy only: no ``vipe.config``; the config is composed with ``hydra.initialize_config_dir``
and ``hydra.compose`` (a fake ``hydra``) from a pipeline config that declares
``init.fixed_fov_degrees/fov_min_degrees/fov_max_degrees``; ``make_pipeline(config,
model_cache=None)``; ``vipe.model_cache.VipeModelCache.create(slam_cfg, init_cfg, post_cfg,
device, use_fp16=False)``. Its pipeline clamps the "GeoCalib" estimate of the vertical field of
view to ``[fov_min_degrees, fov_max_degrees]`` (``GeoCalibIntrinsicsProcessor``) and sets
``fx = fy = H / (2 tan(fov / 2))``, principal point at the centre.

Both copies' config files are abridged in ``vipe_configs/``. The scene's ``intrinsics`` are
returned as they are unless it has a ``fov_estimate_deg``.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

CONFIGS = Path(__file__).parent / "vipe_configs"


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
    fov_estimate_deg: float | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    configs: list[list[str]] = field(default_factory=list)
    pipeline_configs: list[Node] = field(default_factory=list)
    model_caches: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AnnotationPipelineOutput:
    payload: Any = None
    output_streams: list[Any] | None = None


class Node(dict):
    """An OmegaConf-like config node: keys as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _node(value: Any) -> Any:
    return Node({k: _node(v) for k, v in value.items()}) if isinstance(value, dict) else value


def compose(flavour: str, overrides: list[str]) -> Node:
    """Hydra's composition of ``default`` with ``overrides`` on a struct config."""
    pipeline = _node(yaml.safe_load((CONFIGS / flavour / "pipeline" / "default.yaml").read_text()))
    root = Node(pipeline=pipeline)
    for override in overrides:
        key, _, text = override.partition("=")
        if key == "pipeline":
            pipeline["name"] = text
            continue
        mode, key = ("++", key[2:]) if key.startswith("++") else ("+", key[1:]) if key.startswith("+") else ("", key)
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            node = node[part]
        if mode == "" and leaf not in node:
            raise ValueError(f"Could not override '{key}'. Key '{leaf}' is not in struct")
        if mode == "+" and leaf in node:
            raise ValueError(f"Could not append to config. An item is already at '{key}'")
        node[leaf] = yaml.safe_load(text)
    return root


class Pipeline:
    def __init__(self, scene: Scene, config: Node) -> None:
        self.scene, self.config = scene, config
        self.return_output_streams = False
        scene.pipeline_configs.append(config)

    def _intrinsics(self, height: int, width: int) -> torch.Tensor:
        if self.scene.fov_estimate_deg is None:
            return torch.tensor(self.scene.intrinsics)
        fov = self.scene.fov_estimate_deg
        low, high = self.config.init.get("fov_min_degrees"), self.config.init.get("fov_max_degrees")
        if low is not None and fov < low:
            fov = low
        elif high is not None and fov > high:
            fov = high
        focal = height / (2 * np.tan(np.radians(fov) / 2))
        return torch.tensor([focal, focal, width / 2, height / 2], dtype=torch.float32)

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
                intrinsics=self._intrinsics(*f.rgb.shape[:2]),
                metric_depth=torch.as_tensor(self.scene.depth(f.raw_frame_idx, tuple(f.rgb.shape[:2]))),
            )
            for f in frames
        ]
        return AnnotationPipelineOutput(output_streams=[out] if self.return_output_streams else None)


def install(monkeypatch: pytest.MonkeyPatch, scene: Scene, flavour: str = "upstream") -> Scene:
    """Install fake ``vipe`` modules, upstream's (with ``vipe.config``) or y2r's copy (with a fake
    ``hydra`` and ``vipe.model_cache``)."""
    vipe = _module("vipe")
    streams = _module("vipe.streams")
    base = _module("vipe.streams.base")
    vipe.__file__ = f"/site-packages/{flavour}/vipe/__init__.py"
    vipe.get_config_path = lambda: CONFIGS / flavour
    modules = [vipe, streams, base]
    if flavour == "upstream":
        vipe.__version__ = "1.1.0"
        config = _module("vipe.config")

        def parse_typed_config(config_name: str = "default", hydra_args: Any = (), config_dir: Any = None) -> Node:
            scene.configs.append(list(hydra_args))
            composed = compose(flavour, list(hydra_args))
            allowed = yaml.safe_load((CONFIGS / flavour / "pipeline" / "default.yaml").read_text())
            for section in ("init", "slam"):
                extra = set(composed.pipeline[section]) - set(allowed[section])
                if extra:
                    raise ValueError(f"pipeline.{section}.{sorted(extra)[0]}: Extra inputs are not permitted")
            return composed

        vipe.make_pipeline = lambda config: Pipeline(scene, config)
        config.parse_typed_config = parse_typed_config
        vipe.config = config
        modules.append(config)
    else:
        vipe.__version__ = "0.1.1"
        hydra = _module("hydra")
        model_cache = _module("vipe.model_cache")

        @contextlib.contextmanager
        def initialize_config_dir(config_dir: str, version_base: Any = None) -> Iterator[None]:
            assert Path(config_dir) == CONFIGS / flavour
            yield

        def hydra_compose(config_name: str = "default", overrides: Any = ()) -> Node:
            scene.configs.append(list(overrides))
            return compose(flavour, list(overrides))

        class VipeModelCache:
            @classmethod
            def create(
                cls,
                slam_cfg: Any = None,
                init_cfg: Any = None,
                post_cfg: Any = None,
                device: Any = None,
                use_fp16: bool = False,
            ) -> dict[str, Any]:
                cache = {"slam": slam_cfg, "init": init_cfg, "post": post_cfg, "device": str(device)}
                scene.model_caches.append(cache)
                return cache

        def make_pipeline(config: Node, model_cache: Any = None) -> Pipeline:
            pipeline = Pipeline(scene, config)
            pipeline.model_cache = model_cache
            return pipeline

        hydra.initialize_config_dir, hydra.compose = initialize_config_dir, hydra_compose
        model_cache.VipeModelCache = VipeModelCache
        vipe.make_pipeline, vipe.model_cache = make_pipeline, model_cache
        modules += [hydra, model_cache]
        monkeypatch.delitem(sys.modules, "vipe.config", raising=False)
    for name, value in {
        "FrameAttribute": FrameAttribute,
        "VideoFrame": VideoFrame,
        "VideoStream": VideoStream,
        "ProcessedVideoStream": ProcessedVideoStream,
    }.items():
        setattr(base, name, value)
    vipe.streams, streams.base = streams, base
    for module in modules:
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return scene
