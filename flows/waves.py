"""Subflow ``process-waves``: the pending videos stream through every stage in bounded waves.

A build of 50,000 videos as one barrier (every video through preprocess, then every one
through depth, ...) keeps ~9.6 TB of intermediates before the first H5 exists, leaves the
GPUs idle through all of preprocessing and all of the H5 build, and shows an H5-stage bug
after days. Here the videos go in waves of ``run.wave_size``, in manifest (video-id) order,
so a resumed build continues where it stopped. Wave i runs its GPU stages while, on this
subflow's CPU runner, wave i+1 is preprocessed and wave i-1 gets its H5 files::

    CPU runner:  [pre 0] [pre 1 | H5 -  ] [pre 2 | H5 0 ] [  -  | H5 1 ] [H5 2]
    GPU stages:          [  wave 0      ] [  wave 1     ] [  wave 2    ]

This is plain Prefect/Dask concurrency on the run's one cluster (``flows/run_cluster.py``):
CPU tasks are futures on CPU workers, submitted before the wave's GPU tasks and collected
after them; GPU tasks ask for GPU workers. Once a
wave's H5 files and partials are durable, the intermediates ``run.keep_intermediates``
does not keep are deleted (:mod:`trackset.retention`). Statistics stay one sequential
final task of ``build-dataset`` over the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger

from flows.run_cluster import RunCluster
from flows.stage_runs import StageRun
from flows.submission import SubmittedStage
from trackset.domain import VideoRef
from trackset.retention import release_intermediates
from trackset.run_report import StageOutcome
from trackset.settings import Settings
from trackset.sizing import format_gib
from trackset.stages.registry import stage_spec
from trackset.worklist import WorkList


def split_lanes(stages: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The CPU stages before the first GPU stage, the GPU stages, and the CPU stages after.

    Examples:
        >>> split_lanes(["preprocess", "depth_camera", "tracks_3d", "hands", "h5_build"])
        (['preprocess'], ['depth_camera', 'tracks_3d', 'hands'], ['h5_build'])
        >>> split_lanes(["h5_build"])
        ([], [], ['h5_build'])
    """
    gpu = [i for i, stage in enumerate(stages) if stage_spec(stage).resources.uses_gpu]
    if not gpu:
        return [], [], list(stages)
    first, last = gpu[0], gpu[-1]
    if any(not stage_spec(stage).resources.uses_gpu for stage in stages[first : last + 1]):
        raise ValueError(f"CPU stages between GPU stages are not supported: {stages}")
    return list(stages[:first]), list(stages[first : last + 1]), list(stages[last + 1 :])


def waves_of(videos: list[VideoRef], size: int) -> list[list[VideoRef]]:
    """``videos`` in order, cut into waves of at most ``size``.

    Examples:
        >>> [len(w) for w in waves_of([VideoRef(f"{i:05d}", None, "") for i in range(5)], 2)]
        [2, 2, 1]
    """
    return [videos[i : i + size] for i in range(0, len(videos), size)]


@dataclass
class CpuLane:
    """CPU stages of one wave in flight: the first stage's tasks run while the flow does other work.

    Attributes:
        runs: the lane's stages, in order.
        videos: the wave's videos that reached the lane.
        size: the wave's size, videos dropped by earlier stages included (for progress).
    """

    runs: list[StageRun]
    videos: list[VideoRef]
    size: int
    submitted: SubmittedStage | None = None

    def start(self) -> CpuLane:
        """Submit the first stage's tasks and return at once."""
        if self.runs:
            self.submitted = self.runs[0].submit(self.videos)
        return self

    def finish(self) -> list[VideoRef]:
        """Wait for the first stage, run the others; return the videos that got through all."""
        if not self.runs:
            return list(self.videos)
        alive = self.runs[0].collect(self.size, self.videos, self.submitted)
        for run in self.runs[1:]:
            alive = run.run(self.size, alive)
        return alive


@flow(name="process-waves", flow_run_name="waves")
def process_waves(work: WorkList, settings: Settings, stages: list[str], release: bool = True) -> list[StageOutcome]:
    """Run ``stages`` over the videos of ``work`` in waves (module docstring).

    Args:
        work: the pending videos, in manifest order.
        settings: the run's settings (``run.wave_size``, ``run.keep_intermediates``), with
            ``cluster.scheduler_address`` set to the run's cluster unless it runs on threads.
        stages: the stages to run, in pipeline order.
        release: delete unkept intermediates of finished waves (False for imports, whose
            intermediates belong to the script pipeline).

    Returns:
        Each stage's outcome over every wave.
    """
    with RunCluster(settings) as cluster:
        return _stream(work.load(), settings, stages, release, cluster)


def _stream(
    videos: list[VideoRef], settings: Settings, stages: list[str], release: bool, cluster: RunCluster
) -> list[StageOutcome]:
    logger = get_run_logger()
    plan = cluster.plan()
    runs = {stage: StageRun(stage, settings, len(videos), cluster, plan) for stage in stages}
    head, gpu, tail = (list(map(runs.__getitem__, lane)) for lane in split_lanes(stages))
    waves = waves_of(videos, settings.run.wave_size)
    logger.info("%d videos in %d waves of up to %d", len(videos), len(waves), settings.run.wave_size)

    heads = [CpuLane(head, wave, len(wave)) for wave in waves]
    if heads:
        heads[0].start()
    behind: tuple[list[VideoRef], CpuLane] | None = None
    for index, wave in enumerate(waves):
        alive = heads[index].finish()
        if index + 1 < len(heads):
            heads[index + 1].start()  # preprocess the next wave while this one is on the GPUs
        for run in gpu:
            alive = run.run(len(wave), alive)
        if behind is not None:
            _land(*behind, settings, release)  # the previous wave's H5 ran beside these GPU stages
        behind = (wave, CpuLane(tail, alive, len(wave)).start())
        logger.info("wave %d of %d: %d videos through the GPU stages", index + 1, len(waves), len(alive))
    if behind is not None:
        _land(*behind, settings, release)
    return [run.finish() for run in runs.values()]


def _land(wave: list[VideoRef], lane: CpuLane, settings: Settings, release: bool) -> None:
    """Finish a wave's last CPU stages, then free its intermediates (those not kept)."""
    lane.finish()
    if release:
        freed = release_intermediates(wave, settings)
        if freed:
            get_run_logger().info("freed %s of intermediates of %d videos", format_gib(freed), len(wave))
