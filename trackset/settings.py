"""Every knob of trackset, parsed and validated in one place.

Settings are resolved once, when a flow or the CLI starts, with this precedence
(highest first), in the manner of ``distributed.Nanny``'s environment handling:

1. flow parameters / CLI overrides (a nested dict, e.g. ``{"h5": {"target_size": 128}}``)
2. environment variables with the ``TRACKSET_`` prefix and ``__`` between levels
   (``TRACKSET_H5__TARGET_SIZE=128``)
3. ``settings.yaml`` (or the file given with ``--settings``)
4. the defaults below

Stages and tasks receive the typed sub-models; they never read YAML or the environment
themselves. A wrong value fails at start with one line naming the key
(:class:`~trackset.errors.SettingsError`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from trackset.errors import SettingsError

Backend = Literal["synthetic", "real"]


class _Section(BaseModel):
    """Base of every settings section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """Stable short hash of this section, used to invalidate outputs when it changes."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class PathsSettings(_Section):
    """Where videos come from and where everything is written."""

    videos_dir: Path = Path("videos")
    work_dir: Path = Path("work")
    dataset_dir: Path = Path("dataset")
    video_extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi", ".webm")


class PreprocessSettings(_Section):
    """Decoding and resampling of source videos."""

    fps: float = Field(10.0, gt=0)
    width: int = Field(512, gt=0)
    height: int = Field(384, gt=0)
    write_png: bool = False


class DepthCameraSettings(_Section):
    """Depth and camera stage (ViPE or synthetic)."""

    backend: Backend = "synthetic"
    flat_std_m: float = Field(0.1, ge=0)
    max_flat_fraction: float = Field(0.1, ge=0, le=1)
    weights_dir: Path | None = None


class Tracks3dSettings(_Section):
    """3D point tracking stage (TAPIP3D or synthetic)."""

    backend: Backend = "synthetic"
    window_length: int = Field(10, ge=2)
    stride: int = Field(1, ge=1)
    points_per_window: int = Field(256, ge=1)
    visibility_threshold: float = Field(0.0, ge=0, le=1)
    weights_path: Path | None = None


class HandsSettings(_Section):
    """Hand pose stage (WiLoR or synthetic)."""

    backend: Backend = "synthetic"
    wrist_depth_offset_m: float = 0.02
    max_wrist_speed_m_s: float = Field(1.0, gt=0)
    max_gap_frames: int = Field(20, ge=0)
    weights_dir: Path | None = None


class H5Settings(_Section):
    """Per-video HDF5 build."""

    target_size: int = Field(256, gt=0)
    depth_min_m: float = Field(0.1, gt=0)
    depth_max_m: float = Field(2.5, gt=0)
    compression: Literal["none", "lzf", "gzip"] = "none"
    hands_in_image: bool = True

    @model_validator(mode="after")
    def _depth_range(self) -> H5Settings:
        if self.depth_min_m >= self.depth_max_m:
            raise ValueError("depth_min_m must be below depth_max_m")
        return self


class StatisticsSettings(_Section):
    """Final normalisation statistics."""

    std_floor: float = Field(1e-6, gt=0)


class SyntheticStageCost(_Section):
    """What a synthetic backend pretends to cost, so packing and profiling are exercised."""

    model_mb: float = Field(0.0, ge=0)
    per_video_mb: float = Field(0.0, ge=0)
    per_frame_mb: float = Field(0.0, ge=0)
    load_s: float = Field(0.0, ge=0)
    gpu_s_per_frame: float = Field(0.0, ge=0)
    cpu_s_per_frame: float = Field(0.0, ge=0)


class SyntheticModelSettings(_Section):
    """What one stage's synthetic backend needs: its noise and what it pretends to cost."""

    noise_std: float = Field(0.0, ge=0)
    cost: SyntheticStageCost = SyntheticStageCost()


class SyntheticSettings(_Section):
    """Synthetic backends and corpus."""

    noise_std: float = Field(0.0, ge=0)
    depth_camera: SyntheticStageCost = SyntheticStageCost()
    tracks_3d: SyntheticStageCost = SyntheticStageCost()
    hands: SyntheticStageCost = SyntheticStageCost()

    def for_stage(self, stage: str) -> SyntheticModelSettings:
        """The part of this section one stage's synthetic backend reads.

        Examples:
            >>> SyntheticSettings(noise_std=0.01).for_stage("hands").noise_std
            0.01
        """
        return SyntheticModelSettings(noise_std=self.noise_std, cost=getattr(self, stage))


class FakeGpu(_Section):
    """One GPU of the fake inventory used on machines without NVML."""

    name: str = "FakeGPU"
    memory_gb: float = Field(32.0, gt=0)


class ClusterSettings(_Section):
    """GPU inventory, Dask cluster shape and profiling."""

    runner: Literal["dask", "threads"] = "dask"
    gpus: Literal["auto"] | list[int] = "auto"
    fake_gpus: list[FakeGpu] = [FakeGpu(), FakeGpu()]
    max_workers_per_gpu: int = Field(4, ge=1)
    headroom: float = Field(0.9, gt=0, le=1)
    profiling_videos: int = Field(2, ge=1)
    scheduler_address: str | None = None
    cpu_workers: int = Field(2, ge=1)
    cpu_task_videos: int = Field(4, ge=1)
    worker_preload: list[str] = []
    connect_timeout_s: float = Field(120.0, gt=0)


class RetrySettings(_Section):
    """Retries of transient failures (out-of-memory is handled by shrinking, not here)."""

    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(2.0, ge=0)
    retry_jitter_factor: float = Field(0.5, ge=0)


IntermediateStage = Literal["preprocess", "depth_camera", "tracks_3d", "hands"]


class RunSettings(_Section):
    """How a run moves through the corpus and what it keeps."""

    fail_on_video_error: bool = False
    wave_size: int = Field(500, ge=1)
    keep_intermediates: Literal["all", "none"] | list[IntermediateStage] = "all"


class Settings(BaseSettings):
    """All settings of a trackset run (see the module docstring for precedence)."""

    model_config = SettingsConfigDict(
        env_prefix="TRACKSET_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    paths: PathsSettings = PathsSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    depth_camera: DepthCameraSettings = DepthCameraSettings()
    tracks_3d: Tracks3dSettings = Tracks3dSettings()
    hands: HandsSettings = HandsSettings()
    h5: H5Settings = H5Settings()
    statistics: StatisticsSettings = StatisticsSettings()
    synthetic: SyntheticSettings = SyntheticSettings()
    cluster: ClusterSettings = ClusterSettings()
    retry: RetrySettings = RetrySettings()
    run: RunSettings = RunSettings()

    @field_validator("cluster")
    @classmethod
    def _gpus_non_empty(cls, value: ClusterSettings) -> ClusterSettings:
        if isinstance(value.gpus, list) and not value.gpus:
            raise ValueError("gpus must be 'auto' or a non-empty list of indices")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = settings_cls.model_config.get("yaml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


#: Keys that moved, so a settings file written for an older trackset fails with a pointer.
RENAMED_KEYS: dict[str, str] = {"h5.shard_size": "cluster.cpu_task_videos"}


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Resolve settings from the defaults, a YAML file, the environment and overrides.

    Args:
        path: the settings YAML; ``None`` uses defaults and the environment only.
        overrides: nested dict of flow parameters / CLI values, highest precedence.

    Raises:
        SettingsError: one line naming the offending key, e.g.
            ``settings: h5.target_size: Input should be greater than 0``.

    Examples:
        >>> load_settings(overrides={"h5": {"target_size": 128}}).h5.target_size
        128
        >>> load_settings(overrides={"h5": {"target_size": -1}})
        Traceback (most recent call last):
        ...
        trackset.errors.SettingsError: settings: h5.target_size: Input should be greater than 0 (got -1)
    """
    cls: type[Settings] = Settings
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"settings: file not found: {path}")
        # The YAML file is a per-call choice, so bind it on a throwaway subclass instead of
        # mutating the shared model_config.
        cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}})
    try:
        return cls(**(overrides or {}))
    except ValidationError as exc:
        raise SettingsError(_first_error_line(exc)) from None
    except ValueError as exc:  # malformed YAML or env values that are not JSON
        raise SettingsError(f"settings: {exc}".splitlines()[0]) from None


def _first_error_line(exc: ValidationError) -> str:
    """One line for the first validation error, naming its dotted key."""
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-after"))
    message = error["msg"].replace("Value error, ", "")
    if error["type"] == "extra_forbidden":
        renamed = f" (renamed to {RENAMED_KEYS[loc]})" if loc in RENAMED_KEYS else ""
        return f"settings: {loc}: unknown key{renamed}"
    got = error.get("input")
    suffix = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    more = f"; and {len(exc.errors()) - 1} more" if len(exc.errors()) > 1 else ""
    return f"settings: {loc}: {message}{suffix}{more}"
