"""Every knob of trackset, parsed and validated in one place.

Settings are resolved once, when a flow or the CLI starts, with this precedence
(highest first), in the manner of ``distributed.Nanny``'s environment handling:

1. flow parameters / CLI overrides (a nested dict, e.g. ``{"h5": {"target_size": 128}}``)
2. environment variables with the ``TRACKSET_`` prefix and ``__`` between levels
   (``TRACKSET_H5__TARGET_SIZE=128``)
3. ``settings.yaml`` (or the file given with ``--settings``)
4. the defaults below

Stages and tasks receive the typed sub-models; they never read YAML or the environment
themselves. Wrong values fail at start with a line each, naming the key and where the value
came from: the file and line, the variable, or the override
(:class:`~trackset.errors.SettingsError`, :mod:`trackset.config.sources`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from trackset.config.sources import SettingSources, env_parse_issue, validation_issues
from trackset.domain import StageName, TrackType
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

    videos_dir: Path = Field(Path("videos"), description="source videos, searched recursively")
    work_dir: Path = Field(Path("work"), description="intermediates: frames/, vipe/, tracks_3d/, hand_poses/, markers/")
    dataset_dir: Path = Field(
        Path("dataset"), description="<vid>.hdf5, normalization_stats.yaml, manifest.jsonl, partials/"
    )
    video_extensions: tuple[str, ...] = Field((".mp4", ".mov", ".mkv", ".avi", ".webm"), description="case-insensitive")


class PreprocessSettings(_Section):
    """Decoding and resampling of source videos."""

    fps: float = Field(10.0, gt=0, description="frames per second after resampling by timestamps")
    width: int = Field(512, gt=0, description="pixels, frames are resized to width x height")
    height: int = Field(384, gt=0, description="pixels")
    write_png: bool = Field(False, description="also write frames/<vid>/<n:05d>.png (script-pipeline compatibility)")


class MetadataSettings(_Section):
    """The per-clip ``metadata.csv`` of the script pipeline (``clip_id,text[,noun]``).

    ``clip_id`` names a video by its source file (its path under ``paths.videos_dir``
    without the extension, or its stem; numbers compare as numbers, so ``42`` names
    ``00042.mp4``) or, with ``clip_id: video_id``, by its trackset id as the scripts did
    (``int(frames folder)``), for datasets imported from them.
    """

    csv: Path | None = Field(None, description="metadata.csv; null = paths.videos_dir/metadata.csv")
    clip_id: Literal["source", "video_id"] = Field(
        "source",
        description=(
            "source: clip_id names the video file (path under videos_dir without extension, or stem; 42 = "
            "00042.mp4); video_id: the trackset id (imported script datasets)"
        ),
    )


class HumanMasksSettings(_Section):
    """Person masks (the script's ``gsam_human``: SAM3 with a fixed prompt); run with human removal."""

    backend: Backend = Field("synthetic", description="synthetic | real (SAM3, see docs/real-models.md)")
    text_prompt: str = Field(
        "person.", min_length=1, description="what SAM3 segments (the script's gsam_human.text_prompt)"
    )
    key_frame: int = Field(-1, description="frame SAM3 detects on; -1 = middle frame")
    checkpoint_path: Path | None = Field(
        None, description="SAM3 checkpoint sam3.pt; null = SAM3's own Hugging Face download"
    )


class CleanFramesSettings(_Section):
    """Human removal (the script's ``diffueraser``): inpainted frames that masks and tracks read."""

    enabled: bool = Field(False, description="true: run human_masks and clean_frames")
    backend: Backend = Field("synthetic", description="synthetic | real (DiffuEraser + ProPainter)")
    mask_dilation_iter: int = Field(
        8, ge=0, description="iterations of 3x3 dilation of the person masks before inpainting"
    )
    max_img_size: int = Field(512, ge=256, le=1920, description="pixels, largest side DiffuEraser works at (256-1920)")
    ref_stride: int = Field(10, ge=1, description="ProPainter reference frame stride")
    neighbor_length: int = Field(10, ge=1, description="ProPainter neighbouring frames")
    subvideo_length: int = Field(50, ge=1, description="ProPainter frames per sub-video")
    checkout_dir: Path | None = Field(
        None, description="the DiffuEraser checkout (code and weights/) when backend is real"
    )


class ObjectMasksSettings(_Section):
    """Object masks from a text prompt (the script's ``gsam`` with ``detection_model: sam3``)."""

    enabled: bool = Field(True, description="false: queries come from the whole frame")
    backend: Backend = Field("synthetic", description="synthetic | real (SAM3)")
    text_prompt: str | None = Field(
        None,
        description=(
            'one prompt for every clip ("red t-shaped block."); null = the clip\'s noun in metadata.csv + "."; '
            "a clip without either is tracked unmasked (counted as unprompted)"
        ),
    )
    key_frame: int = Field(
        0, description="frame SAM3 detects on (-1 = middle); the middle frame is tried when nothing is found there"
    )
    checkpoint_path: Path | None = Field(
        None, description="SAM3 checkpoint sam3.pt; null = SAM3's own Hugging Face download"
    )


class DepthCameraSettings(_Section):
    """Depth and camera stage (ViPE or synthetic)."""

    backend: Backend = Field("synthetic", description="synthetic | real (NVIDIA ViPE, see docs/real-models.md)")
    flat_std_m: float = Field(0.1, ge=0, description='metres; a frame whose depth std is below this is "flat"')
    max_flat_fraction: float = Field(
        0.1, ge=0, le=1, description="more flat frames than this fraction -> video rejected as unusable"
    )
    weights_dir: Path | None = Field(None, description="ViPE weights directory when backend is real")
    fov_min_deg: float | None = Field(
        60.0,
        gt=0,
        lt=180,
        description=(
            "degrees; ViPE's vertical field of view is clamped to [fov_min_deg, fov_max_deg] as the script's vipe "
            "config does (y2r's vendored ViPE applies it; upstream ViPE cannot, and the log says so); null = no bound"
        ),
    )
    fov_max_deg: float | None = Field(
        90.0, gt=0, lt=180, description="degrees; the clamp's upper bound; null = no bound"
    )

    @model_validator(mode="after")
    def _fov_range(self) -> DepthCameraSettings:
        if self.fov_min_deg is not None and self.fov_max_deg is not None and self.fov_min_deg > self.fov_max_deg:
            raise ValueError("fov_min_deg must not be above fov_max_deg")
        return self


class Tracks3dSettings(_Section):
    """3D point tracking stage (TAPIP3D or synthetic)."""

    backend: Backend = Field("synthetic", description="synthetic | real (TAPIP3D)")
    window_length: int = Field(10, ge=2, description="frames per sliding window (L, also root/num_track_ts)")
    stride: int = Field(1, ge=1, description="frames between window starts")
    points_per_window: int = Field(256, ge=1, description="query points sampled per window")
    visibility_threshold: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "TAPIP3D visibility (0-1) a point needs at every step to be kept; 0 keeps occluded points, as y2r's "
            "config.yaml does"
        ),
    )
    weights_path: Path | None = Field(None, description="TAPIP3D checkpoint when backend is real")
    sampling_method: Literal["random", "grid"] = Field(
        "random",
        description=(
            "random | grid: how queries are taken from the window's first-frame object mask (script: "
            "tapip3d.sampling_method)"
        ),
    )
    grid_size: int = Field(
        64, ge=1, description="grid method: a grid_size x grid_size grid over the image, kept inside the mask"
    )
    min_mask_percent: float = Field(
        0.0,
        ge=0,
        le=100,
        description=(
            "percent of the image the eroded mask (with valid depth) must cover, else the window gets no queries"
        ),
    )
    mask_erosion_px: int = Field(
        2, ge=0, description="pixels the object mask is eroded by before sampling (keeps queries off its edges)"
    )


class Tracks2dSettings(_Section):
    """2D point tracking stage (CoTracker3 or synthetic), for ``h5.track_type: 2d``."""

    backend: Backend = Field("synthetic", description="synthetic | real (CoTracker3 offline)")
    window_length: int = Field(10, ge=2, description="frames per sliding window (root/num_track_ts of a 2d dataset)")
    stride: int = Field(1, ge=1, description="frames between window starts")
    grid_size: int = Field(
        64,
        ge=1,
        description=(
            "a grid_size x grid_size grid of queries, kept inside the eroded object mask of the window's first frame"
        ),
    )
    visibility_threshold: float = Field(
        0.95, ge=0, le=1, description="visibility (0-1) a point needs at every step to be kept"
    )
    mask_erosion_px: int = Field(2, ge=0, description="pixels the object mask is eroded by")
    subtract_human_masks: bool = Field(
        False, description="true: remove the (dilated) person masks from the object masks first; runs human_masks"
    )
    human_mask_dilation_px: int = Field(
        10, ge=0, description="pixels the person masks are dilated by before the subtraction"
    )
    checkpoint_path: Path | None = Field(
        None,
        description="CoTracker3 offline checkpoint; null = torch.hub facebookresearch/co-tracker cotracker3_offline",
    )


class HandsSettings(_Section):
    """Hand pose stage (WiLoR or synthetic)."""

    backend: Backend = Field("synthetic", description="synthetic | real (WiLoR)")
    wrist_depth_offset_m: float = Field(0.02, description="metres added to the depth under the 2D wrist")
    max_wrist_speed_m_s: float = Field(1.0, gt=0, description="metres/second; faster jumps are dropped")
    max_gap_frames: int = Field(20, ge=0, description="frames; gaps up to this long are interpolated")
    weights_dir: Path | None = Field(None, description="WiLoR weights directory when backend is real")


class H5Settings(_Section):
    """Per-video HDF5 build."""

    target_size: int = Field(256, gt=0, description="pixels, S of the square crop in root/video and root/depth")
    depth_min_m: float = Field(0.1, gt=0, description="metres, lower clip of root/depth and query depths")
    depth_max_m: float = Field(2.5, gt=0, description="metres, upper clip")
    compression: Literal["none", "lzf", "gzip"] = Field(
        "none", description="none | lzf | gzip for root/video and root/depth"
    )
    hands_in_image: bool = Field(
        True, description="keep a hand in a window only if its wrist is in the crop (0<=u,v<=1, d>0) at every step"
    )
    track_type: TrackType = Field(
        "3d",
        description=(
            "3d: TAPIP3D tracks, depth, poses, hands; 2d: CoTracker tracks only (the script's "
            "create_h5_dataset.track_type); one type per dataset directory"
        ),
    )
    include_text: bool = Field(
        False, description="write root/text from metadata.csv; a clip without a description fails its H5 build"
    )

    @model_validator(mode="after")
    def _depth_range(self) -> H5Settings:
        if self.depth_min_m >= self.depth_max_m:
            raise ValueError("depth_min_m must be below depth_max_m")
        return self


class StatisticsSettings(_Section):
    """Final normalisation statistics."""

    std_floor: float = Field(1e-6, gt=0, description="each std component is floored here and listed in std_floored")


class SyntheticStageCost(_Section):
    """What a synthetic backend pretends to cost, so packing and profiling are exercised."""

    model_mb: float = Field(0.0, ge=0, description="MiB held while the model is loaded")
    per_video_mb: float = Field(0.0, ge=0, description="MiB held while a video is processed")
    per_frame_mb: float = Field(0.0, ge=0, description="extra MiB per frame while a video is processed")
    load_s: float = Field(0.0, ge=0, description="seconds to load the model")
    gpu_s_per_frame: float = Field(0.0, ge=0, description="seconds per frame in the (serialised) GPU phase")
    cpu_s_per_frame: float = Field(0.0, ge=0, description="seconds per frame of real CPU work")


class SyntheticModelSettings(_Section):
    """What one stage's synthetic backend needs: its noise and what it pretends to cost."""

    noise_std: float = Field(0.0, ge=0)
    cost: SyntheticStageCost = SyntheticStageCost()


class SyntheticSettings(_Section):
    """Synthetic backends and corpus."""

    noise_std: float = Field(0.0, ge=0, description="Gaussian noise of synthetic depth (m) and tracks (m); 0 = exact")
    depth_camera: SyntheticStageCost = Field(
        SyntheticStageCost(), description="what the synthetic ViPE pretends to cost"
    )
    tracks_3d: SyntheticStageCost = Field(
        SyntheticStageCost(), description="what the synthetic TAPIP3D pretends to cost"
    )
    hands: SyntheticStageCost = Field(SyntheticStageCost(), description="what the synthetic WiLoR pretends to cost")
    human_masks: SyntheticStageCost = Field(
        SyntheticStageCost(), description="what the synthetic SAM3 (person masks) pretends to cost"
    )
    clean_frames: SyntheticStageCost = Field(
        SyntheticStageCost(), description="what the synthetic DiffuEraser pretends to cost"
    )
    object_masks: SyntheticStageCost = Field(
        SyntheticStageCost(), description="what the synthetic SAM3 (object masks) pretends to cost"
    )
    tracks_2d: SyntheticStageCost = Field(
        SyntheticStageCost(), description="what the synthetic CoTracker3 pretends to cost"
    )

    def for_stage(self, stage: str) -> SyntheticModelSettings:
        """The part of this section one stage's synthetic backend reads.

        Examples:
            >>> SyntheticSettings(noise_std=0.01).for_stage("hands").noise_std
            0.01
        """
        return SyntheticModelSettings(noise_std=self.noise_std, cost=getattr(self, stage))


class FakeGpu(_Section):
    """One GPU of the fake inventory used on machines without NVML."""

    name: str = Field("FakeGPU", description="the GPU's name in tables and logs")
    memory_gb: float = Field(32.0, gt=0, description="GiB of memory of the fake GPU")


def walltime_seconds(walltime: str) -> int:
    """Seconds of a SLURM time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.

    Examples:
        >>> walltime_seconds("24:00:00"), walltime_seconds("1-12"), walltime_seconds("90"), walltime_seconds("05:30")
        (86400, 129600, 5400, 330)
        >>> walltime_seconds("1:2:3:4")
        Traceback (most recent call last):
        ...
        ValueError: not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS): '1:2:3:4'
    """
    days, _, clock = walltime.strip().rpartition("-")
    parts = clock.split(":")
    if not all(part.isdigit() for part in [*parts, *([days] if days else [])]) or len(parts) > 3:
        raise ValueError(f"not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS): {walltime!r}")
    numbers = [int(part) for part in parts]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = [*numbers, 0, 0][:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    hours, minutes, seconds = {1: (0, numbers[0], 0), 2: (0, *numbers), 3: tuple(numbers)}[len(numbers)]
    return (hours * 60 + minutes) * 60 + seconds


class SlurmSettings(_Section):
    """The SLURM jobs a run of ``cluster.kind: slurm`` submits for its GPU workers (dask-jobqueue)."""

    partition: str | None = Field(None, description="partition the jobs go to (--partition); null: SLURM's default")
    account: str | None = Field(None, description="account the jobs are charged to (--account); null: your default")
    gpus_per_job: int = Field(
        1, ge=1, description="GPUs each job asks for (--gres=gpu:N); each worker is pinned to one"
    )
    gpu_type: str | None = Field(
        None, description="GRES type of the GPUs (--gres=gpu:TYPE:N, e.g. a100); null: any GPU the partition has"
    )
    workers_per_gpu: int | None = Field(
        None,
        ge=1,
        description=(
            "worker processes per GPU in each job; null: cluster.max_workers_per_gpu (each stage uses as many "
            "of them as its memory profile allows on that GPU)"
        ),
    )
    cpus_per_job: int | None = Field(
        None, ge=1, description="CPUs each job asks for (--cpus-per-task); null: one per worker process"
    )
    memory: str = Field("64GB", description="host memory each job asks for (--mem), e.g. 64GB")
    walltime: str = Field("24:00:00", description="time limit of each job (--time: HH:MM:SS or D-HH:MM:SS)")
    max_jobs: int = Field(
        4,
        ge=1,
        description="most jobs at once; the run asks for as many as the GPU work of this wave and the next can use",
    )
    job_directives: list[str] = Field(
        [], description="more #SBATCH options for each job, e.g. [--qos=high, --constraint=a100]"
    )
    job_prologue: list[str] = Field(
        [], description="shell lines each job runs before its workers start, e.g. [module load cuda/12.4]"
    )
    interface: str = Field(
        "lo",
        description=(
            "network interface the scheduler and every worker listen on (e.g. ib0, eth0); lo keeps everything on "
            "this machine, so set it where the jobs run on other nodes"
        ),
    )
    retire_before_walltime_s: float = Field(
        1800.0,
        gt=0,
        description=(
            "a worker stops taking GPU tasks this long before its job's walltime and leaves once its task is done: "
            "give it more than one task's time (cluster.gpu_task_videos videos)"
        ),
    )
    retire_stagger_s: float = Field(
        300.0,
        ge=0,
        description="each job retires up to this much earlier still, at random, so jobs do not leave at once",
    )
    log_dir: Path | None = Field(
        None, description="folder of the jobs' output and error files (shared storage); null: <work_dir>/slurm"
    )
    poll_s: float = Field(
        5.0,
        gt=0,
        description="seconds between looks at the jobs (squeue): one that ended is replaced while work is left",
    )

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, walltime: str) -> str:
        walltime_seconds(walltime)
        return walltime

    @property
    def walltime_s(self) -> int:
        """The walltime in seconds."""
        return walltime_seconds(self.walltime)


class ClusterSettings(_Section):
    """GPU inventory, Dask cluster shape and profiling."""

    runner: Literal["dask", "threads"] = Field(
        "dask", description="dask: GPU-pinned process workers sized by profiling; threads: one process (tests)"
    )
    kind: Literal["local", "slurm"] = Field(
        "local",
        description=(
            "local: the GPU workers run on this machine (or are the cluster at scheduler_address); slurm: the run "
            "submits them as SLURM jobs (cluster.slurm), as many as its work can use"
        ),
    )
    gpus: Literal["auto"] | list[int] = Field(
        "auto", description="auto (NVML, else the fake GPUs below) or a list of GPU indices"
    )
    fake_gpus: list[FakeGpu] = Field([FakeGpu(), FakeGpu()], description="inventory used when NVML finds no GPU")
    max_workers_per_gpu: int = Field(
        4, ge=1, description="upper bound of the sizing formula; a local cluster starts this many workers per GPU"
    )
    headroom: float = Field(0.9, gt=0, le=1, description="workers per GPU = floor(headroom * total / peak)")
    profiling_videos: int = Field(2, ge=1, description="K first videos profiled with one worker per GPU")
    trusted_network: bool = Field(
        False,
        description=(
            "true: accept an unencrypted tcp:// scheduler_address on another host (whoever reaches it runs code "
            "as you), and let deployments/server.sh serve the Prefect API over plain HTTP beyond loopback; "
            "false: only tls:// and HTTPS, or tcp:// and HTTP on this machine"
        ),
    )
    scheduler_address: str | None = Field(
        None, description="tls://host:8786 to use an existing Dask cluster (tcp:// only on this machine)"
    )
    tls_dir: Path | None = Field(
        None,
        description=(
            "folder with the Dask cluster's ca.pem, cert.pem and key.pem (trackset secrets DIR makes them); "
            "null: a local cluster gets a certificate of its own, an existing one Dask's config"
        ),
    )
    cpu_workers: int = Field(2, ge=1, description="workers of the CPU stages (preprocess, H5 build)")
    cpu_worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="added to the nice value of the CPU workers a run starts, so GPU work gets the cores first",
    )
    cpu_task_videos: int = Field(
        4, ge=1, description="most videos per task of the CPU stages (fewer when a worker would get under two tasks)"
    )
    # 10: four GPU stages at 0.1 task per video stay under the orchestration budget of 0.5 task
    # runs per video (BENCHMARKS.md, scale) with room for the one-video profiling tasks and each
    # wave's short last chunk, which 8 (0.5 exactly, 0.506 measured) did not leave; a worker
    # killed mid-chunk loses at most ~7.5 min of ViPE (10 x 40-50 s) to Dask's rerun.
    gpu_task_videos: int = Field(
        10,
        ge=1,
        description="most videos per task of a GPU stage (fewer when a round would give a worker under two tasks)",
    )
    worker_preload: list[str] = Field(
        [], description="Dask preload modules run in every worker at start (dask_setup(worker))"
    )
    connect_timeout_s: float = Field(120.0, gt=0, description="seconds to wait for the cluster's scheduler and workers")
    slurm: SlurmSettings = Field(
        SlurmSettings(), description="the SLURM jobs of cluster.kind slurm (dask-jobqueue's SLURMCluster)"
    )

    @field_validator("scheduler_address")
    @classmethod
    def _encrypted_unless_local(cls, address: str | None, info: ValidationInfo) -> str | None:
        # trusted_network is declared before scheduler_address, so it is already validated here.
        if address and not info.data.get("trusted_network", False) and unencrypted_remote(address):
            raise ValueError(
                "an unencrypted address on another machine: whoever reaches it runs code as you; start the "
                "cluster with TLS and give its tls:// address and cluster.tls_dir (README, 'Several machines'), "
                "or set cluster.trusted_network: true"
            )
        return address

    @model_validator(mode="after")
    def _slurm_needs(self) -> ClusterSettings:
        if self.kind != "slurm":
            return self
        if self.runner != "dask":
            raise ValueError("kind slurm runs its tasks on SLURM jobs: runner must be dask")
        if self.scheduler_address:
            raise ValueError("kind slurm starts its own scheduler: leave scheduler_address null")
        if self.tls_dir is None:
            raise ValueError(
                "kind slurm needs tls_dir: the jobs run on other machines and talk TLS with the certificates "
                "there (trackset secrets DIR makes them in DIR/tls)"
            )
        return self


def unencrypted_remote(address: str) -> bool:
    """Whether a Dask address goes to another machine without encryption.

    Dask reads an address without a scheme as ``tcp://``; ``tls://`` and ``wss://`` are
    encrypted; ``inproc://`` never leaves the process. Only a literal loopback host counts as
    this machine: a name is not resolved (``head`` may be this host today and not tomorrow).

    Examples:
        >>> [unencrypted_remote(a) for a in ("tcp://head:8786", "10.0.0.2:8786", "ucx://10.0.0.2:8786")]
        [True, True, True]
        >>> [unencrypted_remote(a) for a in ("tls://head:8786", "tcp://127.0.0.1:8786", "tcp://[::1]:1", "localhost:1")]
        [False, False, False, False]
    """
    scheme, _, rest = address.rpartition("://")
    if scheme.lower() in ("tls", "wss", "inproc"):
        return False
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


class RetrySettings(_Section):
    """Retries of transient failures (out-of-memory is handled by shrinking, not here)."""

    retries: int = Field(2, ge=0, description="retries of transient failures (not out-of-memory, not bad input)")
    retry_delay_s: float = Field(2.0, ge=0, description="seconds, base of the exponential backoff")
    retry_jitter_factor: float = Field(0.5, ge=0, description="random extra delay, fraction of the delay")


IntermediateStage = Literal[
    "preprocess", "depth_camera", "tracks_3d", "hands", "human_masks", "clean_frames", "object_masks", "tracks_2d"
]


class RunSettings(_Section):
    """How a run moves through the corpus and what it keeps."""

    fail_on_video_error: bool = Field(False, description="true: the flow run fails when any video failed")
    wave_size: int = Field(
        500, ge=1, description="videos that go through every stage together before the next ones start"
    )
    keep_intermediates: Literal["all", "none"] | list[IntermediateStage] = Field(
        "all",
        description=(
            "all | none | a list of stages (e.g. [depth_camera, object_masks]) whose intermediates are kept once "
            "a video's H5 is durable"
        ),
    )
    verify_checksums: bool = Field(
        False,
        description=(
            "true: a finished output counts as done only when its sha256 still matches its marker's (reads every "
            "byte of every output a run checks); false: when its size does"
        ),
    )
    pictures_videos: int = Field(
        0,
        ge=0,
        description=(
            "the first N videos a run builds get an MP4 and a PNG of their tracks in <dataset_dir>/pictures "
            "(trackset show draws any video)"
        ),
    )


class StageTimeout(_Section):
    """How long one video may take in a stage: ``floor_s + s_per_frame x frames``.

    Per frame, so a long video gets a budget in proportion and is not killed for its length;
    the floor covers the fixed cost of a video (opening files, the first CUDA call).
    """

    floor_s: float = Field(600.0, gt=0, description="seconds every video gets, whatever its length")
    s_per_frame: float = Field(
        5.0,
        ge=0,
        description=(
            "seconds more per frame (preprocess: frames after resampling, estimated from the source's duration)"
        ),
    )

    def budget_s(self, frames: int | None) -> float:
        """Seconds a video of ``frames`` frames may take (the floor when its length is unknown).

        Examples:
            >>> StageTimeout(floor_s=60, s_per_frame=2).budget_s(100), StageTimeout().budget_s(None)
            (260.0, 600.0)
        """
        return self.floor_s + self.s_per_frame * (frames or 0)


class TimeoutSettings(_Section):
    """Time limits of a run and of each video in each stage (a hung call must not run forever)."""

    flow_hours: float | None = Field(
        None,
        gt=0,
        description="hours the whole run may take, then it fails (the dataset lock goes with it); null = no limit",
    )
    default: StageTimeout = Field(
        StageTimeout(),
        description=(
            "budget of one video in a stage: floor_s + s_per_frame x its frames; a video over it fails like a "
            "transient error (retried, then reported)"
        ),
    )
    stages: dict[StageName, StageTimeout] = Field(
        {}, description="per-stage budgets that replace default, e.g. {depth_camera: {floor_s: 900, s_per_frame: 10}}"
    )

    def for_stage(self, stage: str) -> StageTimeout:
        """The budget of ``stage``: its own entry under ``stages``, else ``default``.

        Examples:
            >>> TimeoutSettings(stages={"hands": {"floor_s": 5}}).for_stage("hands").floor_s
            5.0
        """
        # Keys are the StageName literal; any str may be asked (a stage without an entry gets the default).
        return self.stages.get(stage, self.default)  # type: ignore[call-overload]


class Settings(BaseSettings):
    """All settings of a trackset run (see the module docstring for precedence)."""

    model_config = SettingsConfigDict(
        env_prefix="TRACKSET_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    paths: PathsSettings = Field(PathsSettings(), description="where videos come from and where everything is written")
    metadata: MetadataSettings = Field(
        MetadataSettings(),
        description="per-clip descriptions and nouns (the script pipeline's metadata.csv: clip_id,text,noun)",
    )
    preprocess: PreprocessSettings = Field(
        PreprocessSettings(), description="decoding and resampling of the source videos"
    )
    human_masks: HumanMasksSettings = Field(
        HumanMasksSettings(),
        description=(
            "person masks (script: gsam_human); runs when human removal is on (or tracks_2d.subtract_human_masks)"
        ),
    )
    clean_frames: CleanFramesSettings = Field(
        CleanFramesSettings(),
        description=(
            "human removal (script: diffueraser): inpainted frames that object masks and tracks read; hands keep "
            "the original frames"
        ),
    )
    depth_camera: DepthCameraSettings = Field(
        DepthCameraSettings(), description="depth and camera (script: vipe), run when h5.track_type is 3d"
    )
    object_masks: ObjectMasksSettings = Field(
        ObjectMasksSettings(),
        description=(
            "masks of the manipulated objects from a text prompt (script: gsam, detection_model sam3); query "
            "points are sampled inside them"
        ),
    )
    tracks_3d: Tracks3dSettings = Field(
        Tracks3dSettings(), description="3D point tracks (script: tapip3d), run when h5.track_type is 3d"
    )
    tracks_2d: Tracks2dSettings = Field(
        Tracks2dSettings(), description="2D point tracks (script: cotracker), run when h5.track_type is 2d"
    )
    hands: HandsSettings = Field(
        HandsSettings(), description="hand poses (script: wilor), run when h5.track_type is 3d"
    )
    h5: H5Settings = Field(H5Settings(), description="the per-video HDF5 files (script: create_h5_dataset)")
    statistics: StatisticsSettings = Field(
        StatisticsSettings(), description="the dataset statistics, normalization_stats.yaml"
    )
    synthetic: SyntheticSettings = Field(
        SyntheticSettings(),
        description="the synthetic backends and corpus (tests, the demo, machines without the real models)",
    )
    cluster: ClusterSettings = Field(
        ClusterSettings(), description="GPU inventory, Dask cluster shape and memory profiling"
    )
    retry: RetrySettings = Field(
        RetrySettings(), description="retries of transient failures (out-of-memory shrinks the workers per GPU instead)"
    )
    run: RunSettings = Field(RunSettings(), description="how a run moves through the corpus and what it keeps")
    timeouts: TimeoutSettings = Field(
        TimeoutSettings(), description="time limits: a hung call must not keep a run Running forever"
    )

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


def settings_reference(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, FieldInfo]:
    """Dotted key -> field of every section and setting, nested sections included, in order.

    What ``trackset settings`` prints and what the tests compare with settings.yaml's
    comments and the run form's schema: the descriptions have this one source.

    Examples:
        >>> reference = settings_reference()
        >>> reference["h5.target_size"].default, reference["h5"].description
        (256, 'the per-video HDF5 files (script: create_h5_dataset)')
    """
    fields: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        fields[key] = info
        annotation = info.annotation
        candidates = (annotation, *getattr(annotation, "__args__", ()))
        nested = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nested is not None:
            fields |= settings_reference(nested, f"{key}.")
    return fields


#: Keys that moved, so a settings file written for an older trackset fails with a pointer.
RENAMED_KEYS: dict[str, str] = {"h5.shard_size": "cluster.cpu_task_videos"}


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Resolve settings from the defaults, a YAML file, the environment and overrides.

    Args:
        path: the settings YAML; ``None`` uses defaults and the environment only.
        overrides: nested dict of flow parameters / CLI values, highest precedence.

    Raises:
        SettingsError: a line per wrong key (all of them, not only the first), each naming
            the key and where its value came from, e.g. ``settings: h5.target_size: Input
            should be greater than 0 (got 0); from settings.yaml, line 12``; or one line
            naming the file, line, column and key of a YAML syntax error.

    Examples:
        >>> load_settings(overrides={"h5": {"target_size": 128}}).h5.target_size
        128
        >>> load_settings(overrides={"h5": {"target_size": -1}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        trackset.errors.SettingsError: settings: h5.target_size: Input should be greater than 0 (got -1); from the ...
    """
    cls: type[Settings] = Settings
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"settings: file not found: {path}")
        # The YAML file is a per-call choice, so bind it on a throwaway subclass instead of
        # mutating the shared model_config.
        cls = type("Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}})
    # Read before pydantic-settings does: a syntax error is named with its line and key here,
    # and the raw inputs say where each wrong value came from.
    sources = SettingSources.collect(path, overrides, os.environ)
    try:
        return cls(**(overrides or {}))
    except ValidationError as exc:
        raise SettingsError.of(validation_issues(exc, Settings, sources, RENAMED_KEYS)) from None
    except ValueError as exc:  # pydantic-settings: a TRACKSET_* section or list that is not JSON
        raise SettingsError.of([env_parse_issue(exc, sources)]) from None
