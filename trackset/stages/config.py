"""What each stage receives from the settings: the paths and its own section, nothing else.

A stage (and the Prefect task around it) gets one of these small frozen models instead of
the whole :class:`~trackset.settings.Settings`, so:

- a stage's **fingerprint** (what its completion marker records) depends only on what
  changes its outputs: its own section, the synthetic noise when its backend is synthetic,
  and, through :attr:`StageConfig.lineage`, the same of every stage it reads from;
- the **worker model cache** (:mod:`trackset.worker_cache`) keys on the config, so changing
  retries, the runner or another stage's knobs never reloads a model;
- the **quarantine key** of a video that did not fit on a GPU changes with what decides its
  memory: the stage's settings, its synthetic cost and the fake GPUs.

:func:`trackset.stages.registry.stage_config` builds them, lineage included.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from trackset.domain import StageName
from trackset.settings import (
    DepthCameraSettings,
    FakeGpu,
    H5Settings,
    HandsSettings,
    PathsSettings,
    PreprocessSettings,
    Settings,
    SyntheticModelSettings,
    Tracks3dSettings,
)


def short_hash(*parts: str) -> str:
    """16 hex digits of the sha256 of ``parts`` joined by a unit separator.

    Examples:
        >>> short_hash("a", "b") == short_hash("a", "b"), short_hash("a", "b") == short_hash("ab")
        (True, False)
    """
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


class StageConfig(BaseModel):
    """The paths, the stage's own settings section and the lineage of its inputs.

    Attributes:
        paths: where videos, intermediates and outputs live.
        lineage: hash of this stage's output settings and those of every stage upstream
            (filled by the registry); with a video's content hash it is the fingerprint.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: ClassVar[StageName]
    paths: PathsSettings
    lineage: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """This stage's part of ``settings`` (``lineage`` left empty for the registry)."""
        raise NotImplementedError

    def output_settings(self) -> dict[str, Any]:
        """The settings that change this stage's own outputs (upstream ones come by lineage)."""
        raise NotImplementedError

    def fingerprint(self, content_hash: str) -> str:
        """What a completion marker of a video with ``content_hash`` records."""
        return short_hash(self.stage, content_hash, self.lineage)

    def cache_key(self) -> str:
        """Key of the worker model cache: everything this config holds."""
        return short_hash(self.stage, self.model_dump_json())

    def quarantine_key(self, content_hash: str) -> str:
        """What must change to release a quarantined video: its content or this config
        (paths aside: moving the dataset does not change what fits on a GPU)."""
        return short_hash(self.stage, content_hash, self.model_dump_json(exclude={"paths"}))


def _dump(section: BaseModel) -> dict[str, Any]:
    return section.model_dump(mode="json")


class PreprocessConfig(StageConfig):
    """Decoding and resampling of a source video."""

    stage: ClassVar[StageName] = "preprocess"
    section: PreprocessSettings

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(paths=settings.paths, section=settings.preprocess)

    def output_settings(self) -> dict[str, Any]:
        return {"section": _dump(self.section)}


class ModelStageConfig(StageConfig):
    """A GPU stage: its section, its synthetic model when that backend is chosen, the fake GPUs.

    ``synthetic`` is ``None`` for the real backend, so nothing a test double reads can enter
    a real model's fingerprint or cache key.
    """

    section: DepthCameraSettings | Tracks3dSettings | HandsSettings
    synthetic: SyntheticModelSettings | None = None
    fake_gpus: tuple[FakeGpu, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        section = getattr(settings, cls.stage)
        synthetic = settings.synthetic.for_stage(cls.stage) if section.backend == "synthetic" else None
        return cls(
            paths=settings.paths, section=section, synthetic=synthetic, fake_gpus=tuple(settings.cluster.fake_gpus)
        )

    def output_settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"section": _dump(self.section)}
        if self.synthetic is not None:
            out["noise_std"] = self.synthetic.noise_std  # the cost only changes time and memory
        return out


class DepthCameraConfig(ModelStageConfig):
    """Depth and camera (ViPE or synthetic)."""

    stage: ClassVar[StageName] = "depth_camera"
    section: DepthCameraSettings


class Tracks3dConfig(ModelStageConfig):
    """3D point tracks (TAPIP3D or synthetic)."""

    stage: ClassVar[StageName] = "tracks_3d"
    section: Tracks3dSettings


class HandsConfig(ModelStageConfig):
    """Hand poses (WiLoR or synthetic)."""

    stage: ClassVar[StageName] = "hands"
    section: HandsSettings


class H5BuildConfig(StageConfig):
    """The per-video H5 build, which also needs the tracks' window length."""

    stage: ClassVar[StageName] = "h5_build"
    section: H5Settings
    window_length: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(paths=settings.paths, section=settings.h5, window_length=settings.tracks_3d.window_length)

    def output_settings(self) -> dict[str, Any]:
        return {"section": _dump(self.section), "window_length": self.window_length}


def lineage_of(stage: StageName, config: StageConfig, inputs: list[str]) -> str:
    """Hash of ``config``'s output settings chained with the lineages of its ``inputs``.

    Examples:
        >>> config = PreprocessConfig(paths=PathsSettings(), section=PreprocessSettings())
        >>> lineage_of("preprocess", config, []) == lineage_of("preprocess", config, ["x"])
        False
    """
    own = json.dumps(config.output_settings(), sort_keys=True)
    return short_hash(stage, own, *inputs)
