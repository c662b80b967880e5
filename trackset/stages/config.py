"""What each stage receives from the settings: the paths and its own section, nothing else.

A stage (and the Prefect task around it) gets one of these small frozen models instead of
the whole :class:`~trackset.config.settings.Settings`, so:

- a stage's **fingerprint** (what its completion marker records) depends only on what
  changes its outputs: its own section, the synthetic noise when its backend is synthetic,
  and, through :attr:`StageConfig.lineage`, the same of every stage it reads from;
- the **worker model cache** (:mod:`trackset.cluster.worker_cache`) keys on the config, so changing
  retries, the runner or another stage's knobs never reloads a model;
- the **quarantine key** of a video that did not fit on a GPU changes with what decides its
  memory: the stage's settings, its synthetic cost and the fake GPUs.

:func:`trackset.stages.registry.stage_config` builds them, lineage included.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from trackset.config.settings import (
    CleanFramesSettings,
    DepthCameraSettings,
    FakeGpu,
    H5Settings,
    HandsSettings,
    HumanMasksSettings,
    MetadataSettings,
    ObjectMasksSettings,
    PathsSettings,
    PreprocessSettings,
    Settings,
    StageTimeout,
    SyntheticModelSettings,
    Tracks2dSettings,
    Tracks3dSettings,
)
from trackset.domain import StageName, VideoRef
from trackset.formats.clip_metadata import ClipColumn, MetadataError, find_row, metadata_path

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+; only mypy reads these annotations


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
        clip_columns: the ``metadata.csv`` columns whose per-clip value changes this stage's
            outputs or those of a stage upstream (filled by the registry): a clip's noun
            prompts its object masks, its text is written to its H5. They enter the
            fingerprint per video (:meth:`video_fingerprint`), so editing one clip's row
            redoes that clip, not the dataset. Not part of the cache key: no model depends on them.
        metadata: where ``metadata.csv`` is and how its ids name videos (with ``clip_columns``).
        timeout: how long one video may take in this stage (``timeouts``, filled by the
            registry). Not part of the fingerprint or the cache key: a time limit changes no
            output and needs no new model.
        verify_checksums: ``run.verify_checksums`` (filled by the registry): whether a video
            is done only when its outputs' checksums, not only their sizes, match its marker.
            Not part of the fingerprint or the cache key either.
        provenance: what made this stage's outputs, its inputs' included
            (:mod:`trackset.stages.provenance`, filled by the registry); the H5 build writes it
            into every file. Not part of the fingerprint: a new trackset version or a
            re-downloaded checkpoint does not redo a finished dataset. Part of the cache key,
            so a worker never writes a stale provenance nor keeps a model whose weights changed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: ClassVar[StageName]
    paths: PathsSettings
    lineage: str = ""
    clip_columns: tuple[ClipColumn, ...] = Field((), exclude=True)
    timeout: StageTimeout = Field(StageTimeout(), exclude=True)
    metadata: MetadataSettings = Field(MetadataSettings(), exclude=True)
    verify_checksums: bool = Field(False, exclude=True)
    provenance: dict[str, str] = Field(default_factory=dict, exclude=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """This stage's part of ``settings`` (``lineage`` left empty for the registry)."""
        raise NotImplementedError

    def output_settings(self) -> dict[str, Any]:
        """The settings that change this stage's own outputs (upstream ones come by lineage)."""
        raise NotImplementedError

    def fingerprint(self, content_hash: str) -> str:
        """What a completion marker of a video with ``content_hash`` records, per-clip
        metadata aside (:meth:`video_fingerprint`)."""
        return short_hash(self.stage, content_hash, self.lineage)

    def own_clip_columns(self) -> tuple[ClipColumn, ...]:
        """The ``metadata.csv`` columns this stage itself reads (its inputs' come by the registry)."""
        return ()

    def video_fingerprint(self, video: VideoRef) -> str:
        """What ``video``'s completion marker records: :meth:`fingerprint`, and the values of
        :attr:`clip_columns` in its ``metadata.csv`` row when it has any (a clip without
        them keeps the plain fingerprint, so a run without metadata fingerprints as before)."""
        base = self.fingerprint(video.content_hash)
        if not self.clip_columns:
            return base
        path = metadata_path(self.metadata.csv, self.paths.videos_dir)
        try:
            row = find_row(video, path, self.paths.videos_dir, self.metadata.clip_id)
        except FileNotFoundError:
            row = None
        except MetadataError as exc:  # never current: the stage itself reports the file
            return short_hash(base, "unusable metadata", str(exc))
        values = [None if row is None else row.value(column) for column in self.clip_columns]
        if all(value is None for value in values):
            return base
        pairs = zip(self.clip_columns, values, strict=True)
        return short_hash(base, *(f"{column}={value!r}" for column, value in pairs))

    def cache_key(self) -> str:
        """Key of the worker model cache: everything this config holds, provenance included."""
        return short_hash(self.stage, self.model_dump_json(), json.dumps(self.provenance, sort_keys=True))

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

    section: (
        DepthCameraSettings
        | Tracks3dSettings
        | HandsSettings
        | HumanMasksSettings
        | CleanFramesSettings
        | ObjectMasksSettings
        | Tracks2dSettings
    )
    synthetic: SyntheticModelSettings | None = None
    fake_gpus: tuple[FakeGpu, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        section = getattr(settings, cls.stage)
        synthetic = settings.synthetic.for_stage(cls.stage) if section.backend == "synthetic" else None
        return cls(
            paths=settings.paths,
            section=section,
            synthetic=synthetic,
            fake_gpus=tuple(settings.cluster.fake_gpus),
            **cls.reads(settings),
        )

    @classmethod
    def reads(cls, settings: Settings) -> dict[str, bool]:
        """Which optional inputs this stage reads under ``settings`` (its extra fields)."""
        return {}

    def output_settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"section": _dump(self.section)}
        if self.synthetic is not None:
            out["noise_std"] = self.synthetic.noise_std  # the cost only changes time and memory
        return out


class DepthCameraConfig(ModelStageConfig):
    """Depth and camera (ViPE or synthetic)."""

    stage: ClassVar[StageName] = "depth_camera"
    section: DepthCameraSettings

    def output_settings(self) -> dict[str, Any]:
        """The section, less the field-of-view clamp where the synthetic backend, which does
        not read it, runs: its datasets keep the fingerprints they had before the clamp existed."""
        out = super().output_settings()
        if self.section.backend == "synthetic":
            out["section"] = {k: v for k, v in out["section"].items() if k not in ("fov_min_deg", "fov_max_deg")}
        return out


class FrameReaderConfig(ModelStageConfig):
    """A GPU stage that reads the inpainted frames when human removal is on (hands never do).

    Attributes:
        clean: read ``clean_frames/`` instead of the preprocessed frames.
    """

    clean: bool = False

    @classmethod
    def reads(cls, settings: Settings) -> dict[str, bool]:
        return {"clean": settings.clean_frames.enabled}


class TrackerConfig(FrameReaderConfig):
    """A point tracker: its queries come from the object masks when there are any.

    Attributes:
        masked: object masks exist for its videos (``object_masks.enabled``).
    """

    masked: bool = False

    @classmethod
    def reads(cls, settings: Settings) -> dict[str, bool]:
        return {**super().reads(settings), "masked": settings.object_masks.enabled}


class Tracks3dConfig(TrackerConfig):
    """3D point tracks (TAPIP3D or synthetic)."""

    stage: ClassVar[StageName] = "tracks_3d"
    section: Tracks3dSettings


class Tracks2dConfig(TrackerConfig):
    """2D point tracks (CoTracker3 or synthetic).

    Attributes:
        subtract: person masks are removed from the object masks (``tracks_2d.subtract_human_masks``).
    """

    stage: ClassVar[StageName] = "tracks_2d"
    section: Tracks2dSettings
    subtract: bool = False

    @classmethod
    def reads(cls, settings: Settings) -> dict[str, bool]:
        return {**super().reads(settings), "subtract": settings.tracks_2d.subtract_human_masks}


class HumanMasksConfig(ModelStageConfig):
    """Person masks (SAM3 or synthetic) on the preprocessed frames."""

    stage: ClassVar[StageName] = "human_masks"
    section: HumanMasksSettings


class CleanFramesConfig(ModelStageConfig):
    """Human removal (DiffuEraser or synthetic): the frames with the people inpainted."""

    stage: ClassVar[StageName] = "clean_frames"
    section: CleanFramesSettings


class ObjectMasksConfig(FrameReaderConfig):
    """Object masks from each clip's prompt (SAM3 or synthetic)."""

    stage: ClassVar[StageName] = "object_masks"
    section: ObjectMasksSettings

    def own_clip_columns(self) -> tuple[ClipColumn, ...]:
        return ("noun",) if self.section.text_prompt is None else ()


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
        tracker = settings.tracks_2d if settings.h5.track_type == "2d" else settings.tracks_3d
        return cls(paths=settings.paths, section=settings.h5, window_length=tracker.window_length)

    def own_clip_columns(self) -> tuple[ClipColumn, ...]:
        return ("text",) if self.section.include_text else ()

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
