"""Subflow ``profile-memory``: measure a GPU stage's peak on its first videos, size the cluster.

It runs the first ``cluster.profiling_videos`` videos of a stage with one worker per GPU
(the runner is chosen by the caller), takes the largest per-video peak (DECISIONS.md: the
maximum, not the mean), and computes workers per GPU for each GPU from what that GPU has
available now, with the one sizing function of ``trackset.sizing``. The profile is
published as the ``memory-profile-<stage>`` table artifact and logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.process_stage import StageProgress, run_stage_tasks
from trackset.gpu_inventory import GpuInfo
from trackset.run_report import StageOutcome
from trackset.settings import Settings
from trackset.sizing import MemoryProfile, format_gib
from trackset.stages.base import VideoRef, stage_slug


@dataclass
class ProfileResult:
    """The profiling videos' outcome and, when a peak was measured, one profile per GPU."""

    outcome: StageOutcome
    profiles: list[MemoryProfile] = field(default_factory=list)

    @property
    def workers_per_gpu(self) -> int | None:
        """The smallest plan over the GPUs, so one cluster shape fits every GPU."""
        return min((p.workers_per_gpu for p in self.profiles), default=None)


@flow(name="profile-memory", flow_run_name="profile-{stage}")
def profile_memory(
    stage: str, videos: list[VideoRef], settings: Settings, gpus: list[GpuInfo], progress: StageProgress | None = None
) -> ProfileResult:
    """Run ``videos`` one worker per GPU, then size the cluster from their largest peak.

    Raises:
        PeakExceedsGpuError: the peak does not fit on a GPU even alone.
    """
    logger = get_run_logger()
    outcome = run_stage_tasks(stage, videos, settings, None, progress)
    peaks = [r.peak_bytes for r in outcome.records if r.status == "done" and r.peak_bytes]
    if not peaks:
        logger.warning("%s: no peak measured on %d profiling videos; keeping one worker per GPU", stage, len(videos))
        return ProfileResult(outcome)
    peak = max(peaks)
    cluster = settings.cluster
    profiles = [
        MemoryProfile.plan(stage, gpu.index, gpu.available_bytes, peak, cluster.headroom, cluster.max_workers_per_gpu)
        for gpu in gpus
    ]
    create_table_artifact(
        [p.to_row() for p in profiles],
        key=f"memory-profile-{stage_slug(stage)}",
        description=f"Peak GPU memory of {stage} over {len(peaks)} profiling videos and the workers per GPU it allows",
    )
    result = ProfileResult(outcome, profiles)
    logger.info(
        "%s: peak %s over %d videos -> %d workers per GPU (%s)",
        stage,
        format_gib(peak),
        len(peaks),
        result.workers_per_gpu,
        ", ".join(f"GPU {p.gpu_index}: {format_gib(p.total_bytes)} available" for p in profiles),
    )
    return result
