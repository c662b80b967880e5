"""The unit of work: a stage processes one video and writes its FORMATS.md contract.

A stage is a small dataclass in the manner of NeMo Curator's ``ProcessingStage``: typed
knobs, ``setup()`` that loads the model once per worker process, ``process()`` per video
and ``teardown()`` that frees memory. Stages never schedule themselves and never import
Prefect; ``tasks/`` wraps them and ``flows/`` schedules them.

Completion is recorded by a marker written after the outputs have been renamed into place.
It holds the stage's *fingerprint* (a hash of the source content and of every setting that
changes the output, chained through the upstream stages), so a resumed run skips exactly
the videos whose outputs are complete and still valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from trackset.layout import DatasetLayout, WorkLayout, write_text_atomic
from trackset.settings import Settings

StageName = Literal["preprocess", "depth_camera", "tracks_3d", "hands", "h5_build"]
STAGE_ORDER: tuple[StageName, ...] = ("preprocess", "depth_camera", "tracks_3d", "hands", "h5_build")
GPU_STAGES: tuple[StageName, ...] = ("depth_camera", "tracks_3d", "hands")


def stage_slug(name: str) -> str:
    """Kebab-case stage name for artifact keys, run names and tags (Prefect keys allow no "_").

    Examples:
        >>> stage_slug("depth_camera")
        'depth-camera'
    """
    return name.replace("_", "-")


@dataclass(frozen=True)
class VideoRef:
    """A registered video: its stable id, where its source is and the hash of its content."""

    video_id: str
    source: Path
    content_hash: str


@dataclass(frozen=True)
class StageResources:
    """What one worker of a stage needs; ``gpu_memory_gb`` is a prior until profiling."""

    cpus: float = 1.0
    gpu_memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise ValueError(f"cpus must be positive, got {self.cpus}")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be positive or None, got {self.gpu_memory_gb}")

    @property
    def uses_gpu(self) -> bool:
        return self.gpu_memory_gb is not None


@dataclass
class StageRecord:
    """What a task returns for one video: small, picklable, never arrays."""

    video_id: str
    stage: str
    status: Literal["done", "skipped"]
    seconds: float = 0.0
    peak_bytes: int | None = None
    worker: str = ""
    gpu: str | None = None
    outputs: list[str] = field(default_factory=list)
    info: dict[str, float | int | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def stage_fingerprints(settings: Settings, content_hash: str) -> dict[str, str]:
    """Fingerprint of each stage's output for one video, chained through its inputs.

    A setting that changes a stage's output changes that stage's fingerprint and every
    downstream one, and nothing upstream: changing ``tracks_3d.window_length`` re-runs
    tracks and the H5 build, not preprocessing, depth or hands.

    Examples:
        >>> base = stage_fingerprints(Settings(), "abc")
        >>> other = stage_fingerprints(Settings(tracks_3d={"window_length": 8}), "abc")
        >>> [name for name in base if base[name] != other[name]]
        ['tracks_3d', 'h5_build']
    """
    noise = repr(settings.synthetic.noise_std)
    pre = _hash("preprocess", content_hash, settings.preprocess.fingerprint())
    depth = _hash("depth_camera", pre, settings.depth_camera.fingerprint(), noise)
    tracks = _hash("tracks_3d", depth, settings.tracks_3d.fingerprint(), noise)
    hands = _hash("hands", depth, settings.hands.fingerprint(), noise)
    h5_relevant = settings.h5.model_dump(mode="json", exclude={"shard_size"})
    h5 = _hash("h5_build", tracks, hands, json.dumps(h5_relevant, sort_keys=True))
    return {"preprocess": pre, "depth_camera": depth, "tracks_3d": tracks, "hands": hands, "h5_build": h5}


def worker_name() -> str:
    """Name of this worker for the stage tables: the Dask worker's name, else host:pid."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


class Stage(ABC):
    """One stage of the pipeline; subclasses are dataclasses holding their typed settings."""

    name: ClassVar[StageName]
    resources: ClassVar[StageResources] = StageResources()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.work = WorkLayout(settings.paths.work_dir)
        self.dataset = DatasetLayout(settings.paths.dataset_dir)

    def setup(self) -> None:  # noqa: B027 - optional hook, most CPU stages need nothing
        """Load models once per worker process; called before the first ``process``."""

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release what ``setup`` took (CUDA memory above all) when the stage ends."""

    @abstractmethod
    def outputs(self, video_id: str) -> list[Path]:
        """Files this stage writes for a video (all must exist for it to count as done)."""

    @abstractmethod
    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        """Write this stage's outputs for ``video`` atomically; return small info numbers."""

    def memory_probe(self) -> AbstractContextManager[Any]:
        """Measures one video's peak device memory (``.peak_bytes``); CPU stages measure none."""
        return nullcontext()

    def marker_path(self, video_id: str) -> Path:
        return self.work.marker(self.name, video_id)

    def is_done(self, video: VideoRef) -> bool:
        """True when every output exists and the marker's fingerprint is current."""
        marker = self.marker_path(video.video_id)
        if not marker.is_file() or not all(p.is_file() for p in self.outputs(video.video_id)):
            return False
        try:
            stored = json.loads(marker.read_text())["fingerprint"]
        except (ValueError, KeyError):
            return False
        return stored == stage_fingerprints(self.settings, video.content_hash)[self.name]

    def mark_done(self, video: VideoRef) -> None:
        """Record completion after every output has been renamed into place."""
        fingerprint = stage_fingerprints(self.settings, video.content_hash)[self.name]
        write_text_atomic(self.marker_path(video.video_id), json.dumps({"fingerprint": fingerprint}))

    def run(self, video: VideoRef) -> StageRecord:
        """Skip a video whose outputs are current, else process it and write its marker."""
        if self.is_done(video):
            return StageRecord(video.video_id, self.name, "skipped", worker=worker_name())
        start = time.perf_counter()
        with self.memory_probe() as probe:
            info = self.process(video)
        seconds = time.perf_counter() - start
        self.mark_done(video)
        return StageRecord(
            video.video_id,
            self.name,
            "done",
            seconds=seconds,
            peak_bytes=getattr(probe, "peak_bytes", None),
            worker=worker_name(),
            gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
            outputs=[str(p) for p in self.outputs(video.video_id)],
            info=info,
        )
