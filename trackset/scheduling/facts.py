"""What the wave planner is told: the run's stages, the settings it decides by, the cluster's shape.

Plain values, read once from the settings and the stage table (or given by a simulator), so
the planner (:mod:`trackset.scheduling.planner`) never reads a setting or a stage class itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trackset.config.settings import Settings
from trackset.stages.registry import prior_peak_bytes, stage_inputs, stage_spec


@dataclass(frozen=True)
class StageFacts:
    """What the planner knows of a stage of the run.

    Attributes:
        name: the stage.
        uses_gpu: its tasks run on GPU workers.
        batched: cheap per video: several videos share a CPU task (``cluster.cpu_task_videos``).
        inputs: the stages of this run whose outputs it reads.
        prior_peak_bytes: the real model's declared GPU memory, for sizing without a measured peak.
    """

    name: str
    uses_gpu: bool = False
    batched: bool = False
    inputs: tuple[str, ...] = ()
    prior_peak_bytes: int | None = None


def stage_facts(stages: Sequence[str], settings: Settings) -> list[StageFacts]:
    """The facts of ``stages`` from the stage table, for a run with ``settings``.

    Examples:
        >>> [(f.name, f.uses_gpu, f.inputs) for f in stage_facts(["preprocess", "hands"], Settings())]
        [('preprocess', False, ()), ('hands', True, ('depth_camera',))]
    """
    return [
        StageFacts(
            name,
            stage_spec(name).resources.uses_gpu,
            stage_spec(name).batched,
            stage_inputs(name, settings),
            prior_peak_bytes(name, settings),
        )
        for name in stages
    ]


@dataclass(frozen=True)
class Knobs:
    """The settings the planner decides by (``run.*``, ``cluster.*``, ``retry.retries``)."""

    wave_size: int = 500
    profiling_videos: int = 2
    headroom: float = 0.9
    max_workers_per_gpu: int = 4
    gpu_task_videos: int = 10
    cpu_task_videos: int = 4
    retries: int = 2
    pictures_videos: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Knobs:
        cluster = settings.cluster
        return cls(
            settings.run.wave_size,
            cluster.profiling_videos,
            cluster.headroom,
            cluster.max_workers_per_gpu,
            cluster.gpu_task_videos,
            cluster.cpu_task_videos,
            settings.retry.retries,
            settings.run.pictures_videos,
        )


@dataclass(frozen=True)
class RunShape:
    """The run's cluster as it started.

    Attributes:
        threads: every task in the flow's process: nothing to size, nothing to shrink.
        cpu_slots: workers a CPU task may run on.
        free_intermediates: delete intermediates once a wave lands (false for an import,
            whose work directory is only read).
        here: the flow process's name, for the records of skipped videos.
    """

    threads: bool = False
    cpu_slots: int = 2
    free_intermediates: bool = True
    here: str = "flow"
