"""Every fact about a stage, in one table: its class, config, inputs, resources and backends.

The flows ask this table which stages run on GPUs, which share tasks, and what a stage
reads; the worker cache asks it which class to build; a GPU stage asks it which backend
class its ``backend`` setting names. Classes are named as ``"module:Class"`` strings and
imported only when used, so reading the table never imports a model, and
``trackset/stages/`` never imports ``trackset/synthetic/`` (the synthetic backends are
named here like the real adapters are).

Which stages a run includes, and so what each reads, depends on the settings
(:func:`enabled_stages`, :func:`stage_inputs`): human removal is off by default, a 2D dataset
runs CoTracker instead of TAPIP3D and needs neither depth nor hands.

Examples:
    >>> [name for name in STAGE_ORDER if STAGES[name].resources.uses_gpu]
    ['human_masks', 'clean_frames', 'depth_camera', 'object_masks', 'tracks_3d', 'tracks_2d', 'hands']
    >>> enabled_stages(Settings())
    ['preprocess', 'depth_camera', 'object_masks', 'tracks_3d', 'hands', 'h5_build']
    >>> stage_inputs("tracks_3d", Settings())
    ('depth_camera', 'object_masks')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

from trackset.config.settings import Backend, Settings
from trackset.domain import STAGE_ORDER, StageName
from trackset.gpu.sizing import gib_to_bytes
from trackset.stages import provenance
from trackset.stages.config import (
    CleanFramesConfig,
    DepthCameraConfig,
    H5BuildConfig,
    HandsConfig,
    HumanMasksConfig,
    ModelStageConfig,
    ObjectMasksConfig,
    PreprocessConfig,
    StageConfig,
    Tracks2dConfig,
    Tracks3dConfig,
    lineage_of,
)

if TYPE_CHECKING:
    from trackset.stages.base import Stage


@dataclass(frozen=True)
class StageResources:
    """What one worker of a stage needs.

    Attributes:
        cpus: cores one video keeps busy.
        gpus: 1 for a GPU stage (its tasks run only on GPU workers), else 0.
        gpu_memory_gb: the real model's GPU memory per worker (GiB), as its authors report
            it; sizes the cluster when profiling measured no peak (see
            :func:`prior_peak_bytes`).

    Examples:
        >>> StageResources(gpus=1, gpu_memory_gb=16).uses_gpu
        True
        >>> StageResources(gpu_memory_gb=16)
        Traceback (most recent call last):
        ...
        ValueError: gpu_memory_gb needs gpus=1
    """

    cpus: float = 1.0
    gpus: int = 0
    gpu_memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise ValueError(f"cpus must be positive, got {self.cpus}")
        if self.gpus not in (0, 1):
            raise ValueError(f"gpus must be 0 or 1 (a worker owns one GPU), got {self.gpus}")
        if self.gpu_memory_gb is not None and not self.gpus:
            raise ValueError("gpu_memory_gb needs gpus=1")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise ValueError(f"gpu_memory_gb must be positive or None, got {self.gpu_memory_gb}")

    @property
    def uses_gpu(self) -> bool:
        return self.gpus > 0


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table.

    Attributes:
        name: the stage's name (``trackset.domain.StageName``).
        stage: ``"module:Class"`` of its :class:`~trackset.stages.base.Stage`.
        config: the :class:`~trackset.stages.config.StageConfig` it is built from.
        inputs: the stages whose outputs it may read; it reads those a run includes
            (:func:`stage_inputs`), and their settings enter its fingerprint.
        resources: what one of its workers needs.
        batched: cheap per video, so several videos share one task
            (``cluster.cpu_task_videos``); Dask tasks cost ~0.3 s each.
        backends: ``backend`` setting value -> ``"module:Class"`` of the model backend.
        enabled: whether a run with these settings includes the stage.
        replaces: the script pipeline's stage (``dataset_scripts/config.yaml``) it replaces.
        model_distribution: the installed distribution whose version names the real model
            in every file's provenance (:mod:`trackset.stages.provenance`); empty for a
            research checkout, which its weights' sha256 names instead.
    """

    name: StageName
    stage: str
    config: type[StageConfig]
    inputs: tuple[StageName, ...] = ()
    resources: StageResources = StageResources()
    batched: bool = False
    backends: Mapping[Backend, str] = field(default_factory=dict)
    enabled: Callable[[Settings], bool] = lambda settings: True
    replaces: str = ""
    model_distribution: str = ""


def _three_d(settings: Settings) -> bool:
    return settings.h5.track_type == "3d"


def _human_masks_needed(settings: Settings) -> bool:
    """Person masks feed the inpainting, and the 2D tracker when it subtracts them."""
    subtracts = settings.h5.track_type == "2d" and settings.tracks_2d.subtract_human_masks
    return settings.clean_frames.enabled or subtracts


SAM3 = "trackset.adapters.sam3:SAM3Backend"


STAGES: dict[StageName, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "preprocess",
            "trackset.stages.preprocess:PreprocessStage",
            PreprocessConfig,
            batched=True,
            replaces="preprocess",
        ),
        StageSpec(
            "human_masks",
            "trackset.stages.human_masks:HumanMasksStage",
            HumanMasksConfig,
            inputs=("preprocess",),
            # SAM3: "~8-10GB per worker" (y2r config.yaml, gsam_human.max_workers).
            resources=StageResources(gpus=1, gpu_memory_gb=10),
            backends={"real": SAM3, "synthetic": "trackset.synthetic.masks:SyntheticHumanMasks"},
            enabled=_human_masks_needed,
            replaces="gsam_human",
            model_distribution="sam3",
        ),
        StageSpec(
            "clean_frames",
            "trackset.stages.clean_frames:CleanFramesStage",
            CleanFramesConfig,
            inputs=("human_masks",),
            # DiffuEraser: 12 GB at 640x360 (its README; max_img_size 512 is below that).
            resources=StageResources(gpus=1, gpu_memory_gb=12),
            backends={
                "real": "trackset.adapters.diffueraser:DiffuEraserBackend",
                "synthetic": "trackset.synthetic.inpaint:SyntheticCleanFrames",
            },
            enabled=lambda settings: settings.clean_frames.enabled,
            replaces="diffueraser",
        ),
        StageSpec(
            "depth_camera",
            "trackset.stages.depth_camera:DepthCameraStage",
            DepthCameraConfig,
            inputs=("preprocess",),
            # ViPE: ~13 GB to load plus 1-4 GB per video (FORMATS.md).
            resources=StageResources(gpus=1, gpu_memory_gb=16),
            backends={
                "real": "trackset.adapters.vipe:ViPEBackend",
                "synthetic": "trackset.synthetic.backends:SyntheticDepthCamera",
            },
            enabled=_three_d,
            replaces="vipe",
            model_distribution="nvidia-vipe",
        ),
        StageSpec(
            "object_masks",
            "trackset.stages.object_masks:ObjectMasksStage",
            ObjectMasksConfig,
            inputs=("preprocess", "clean_frames"),
            # SAM3: "~8-10GB per worker" (y2r config.yaml, gsam.max_workers).
            resources=StageResources(gpus=1, gpu_memory_gb=10),
            backends={"real": SAM3, "synthetic": "trackset.synthetic.masks:SyntheticObjectMasks"},
            enabled=lambda settings: settings.object_masks.enabled,
            replaces="gsam",
            model_distribution="sam3",
        ),
        StageSpec(
            "tracks_3d",
            "trackset.stages.tracks_3d:Tracks3dStage",
            Tracks3dConfig,
            inputs=("depth_camera", "clean_frames", "object_masks"),
            resources=StageResources(gpus=1, gpu_memory_gb=8),
            backends={
                "real": "trackset.adapters.tapip3d:TAPIP3DBackend",
                "synthetic": "trackset.synthetic.backends:SyntheticTracks3d",
            },
            enabled=_three_d,
            replaces="tapip3d",
        ),
        StageSpec(
            "tracks_2d",
            "trackset.stages.tracks_2d:Tracks2dStage",
            Tracks2dConfig,
            inputs=("preprocess", "clean_frames", "object_masks", "human_masks"),
            # CoTracker3 offline: the scripts give no figure; a 10-frame 512x384 window and
            # a 64x64 grid stay near 4 GB. Profiling replaces it.
            resources=StageResources(gpus=1, gpu_memory_gb=4),
            backends={
                "real": "trackset.adapters.cotracker:CoTracker3Backend",
                "synthetic": "trackset.synthetic.tracks_2d:SyntheticTracks2d",
            },
            enabled=lambda settings: not _three_d(settings),
            replaces="cotracker",
            model_distribution="cotracker",
        ),
        StageSpec(
            "hands",
            "trackset.stages.hands:HandsStage",
            HandsConfig,
            inputs=("depth_camera",),
            resources=StageResources(gpus=1, gpu_memory_gb=6),
            backends={
                "real": "trackset.adapters.wilor:WiLoRBackend",
                "synthetic": "trackset.synthetic.backends:SyntheticHands",
            },
            enabled=_three_d,
            replaces="wilor",
        ),
        StageSpec(
            "h5_build",
            "trackset.stages.h5_build:H5BuildStage",
            H5BuildConfig,
            inputs=("tracks_3d", "tracks_2d", "hands"),
            batched=True,
            replaces="create_h5_dataset",
        ),
    )
}
if tuple(STAGES) != STAGE_ORDER:  # pragma: no cover - a wrong edit of the table above
    raise RuntimeError(f"the stage table lists {tuple(STAGES)}, not the pipeline order {STAGE_ORDER}")

GPU_STAGES: tuple[StageName, ...] = tuple(name for name, spec in STAGES.items() if spec.resources.uses_gpu)


def enabled_stages(settings: Settings) -> list[StageName]:
    """The stages a run with ``settings`` includes, in pipeline order.

    Examples:
        >>> enabled_stages(Settings(h5={"track_type": "2d"}, object_masks={"enabled": False}))
        ['preprocess', 'tracks_2d', 'h5_build']
        >>> enabled_stages(Settings(clean_frames={"enabled": True}))[:4]
        ['preprocess', 'human_masks', 'clean_frames', 'depth_camera']
    """
    return [name for name in STAGE_ORDER if STAGES[name].enabled(settings)]


def stage_inputs(name: str, settings: Settings) -> tuple[StageName, ...]:
    """The stages whose outputs ``name`` reads in a run with ``settings``.

    Examples:
        >>> stage_inputs("tracks_3d", Settings(clean_frames={"enabled": True}))
        ('depth_camera', 'clean_frames', 'object_masks')
        >>> stage_inputs("hands", Settings(clean_frames={"enabled": True}))  # hands see the original frames
        ('depth_camera',)
    """
    enabled = set(enabled_stages(settings))
    return tuple(upstream for upstream in stage_spec(name).inputs if upstream in enabled)


def stage_spec(name: str) -> StageSpec:
    """The table row of ``name``; ``ValueError`` naming the known stages otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]


def import_object(target: str) -> Any:
    """The object at ``"module:Name"`` (imported now).

    Examples:
        >>> import_object("trackset.domain:stage_slug")("tracks_3d")
        'tracks-3d'
    """
    module_name, _, attribute = target.partition(":")
    return getattr(import_module(module_name), attribute)


def stage_class(name: str) -> type[Stage[Any]]:
    """The Stage class of ``name``, imported lazily (stages pull in models)."""
    stage: type[Stage[Any]] = import_object(stage_spec(name).stage)
    return stage


def stage_config(name: str, settings: Settings) -> StageConfig:
    """``name``'s config from ``settings``, with the lineage of everything upstream.

    Examples:
        >>> base = {n: stage_config(n, Settings()).lineage for n in STAGE_ORDER}
        >>> other = {n: stage_config(n, Settings(tracks_3d={"window_length": 8})).lineage for n in STAGE_ORDER}
        >>> [n for n in STAGE_ORDER if base[n] != other[n]]
        ['tracks_3d', 'h5_build']
    """
    spec = stage_spec(name)
    config = spec.config.from_settings(settings)
    inputs = stage_inputs(name, settings)
    upstream = [stage_config(input_name, settings) for input_name in inputs]
    columns = {*config.own_clip_columns(), *(column for other in upstream for column in other.clip_columns)}
    model_section = config.section if isinstance(config, ModelStageConfig) else None
    own = provenance.stage_entries(
        spec.name, config.output_settings(), list(inputs), model_section, spec.model_distribution
    )
    update = {
        "lineage": lineage_of(spec.name, config, [other.lineage for other in upstream]),
        "clip_columns": tuple(sorted(columns)),
        "metadata": settings.metadata,
        "timeout": settings.timeouts.for_stage(name),
        "verify_checksums": settings.run.verify_checksums,
        "provenance": provenance.chained(spec.name, own, [other.provenance for other in upstream]),
    }
    return config.model_copy(update=update)


def build_stage(name: str, settings: Settings) -> Stage[Any]:
    """A new (not set up) stage ``name`` configured from ``settings``."""
    return stage_class(name)(stage_config(name, settings))


def prior_peak_bytes(name: str, settings: Settings) -> int | None:
    """The sizing prior of a GPU stage: its real model's declared memory, else None.

    A synthetic backend's memory is whatever its cost settings say, measured exactly by the
    fake device, so it has no prior.

    Examples:
        >>> prior_peak_bytes("depth_camera", Settings(depth_camera={"backend": "real"})) == 16 * 1024**3
        True
        >>> prior_peak_bytes("depth_camera", Settings()) is None
        True
    """
    spec = stage_spec(name)
    gib = spec.resources.gpu_memory_gb
    if gib is None or getattr(settings, name).backend != "real":
        return None
    return gib_to_bytes(gib)
