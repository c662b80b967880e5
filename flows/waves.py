"""Subflow ``process-waves``: the pending videos stream through every stage in bounded waves.

A build of 50,000 videos as one barrier (every video through preprocess, then every one
through depth, ...) keeps ~9.6 TB of intermediates before the first H5 exists, leaves the
GPUs idle through all of preprocessing and all of the H5 build, and shows an H5-stage bug
after days. Here the videos go in waves of ``run.wave_size``, in manifest (video-id) order,
so a resumed build continues where it stopped. Wave i runs its GPU stages while, on this
subflow's CPU runner, wave i+1 is preprocessed and wave i-1 gets its H5 files::

    CPU runner:  [pre 0] [pre 1 | H5 -  ] [pre 2 | H5 0 ] [  -  | H5 1 ] [H5 2]
    GPU stages:          [  wave 0      ] [  wave 1     ] [  wave 2    ]

This is plain Prefect/Dask concurrency on the run's one cluster (``engine/run_cluster.py``):
CPU tasks are futures on CPU workers, submitted before the wave's GPU tasks and collected
after them; GPU tasks ask for GPU workers. From the second wave on, a GPU stage's tasks are
queued behind the stage before's (Dask dependencies, :mod:`trackset.engine.stage_runs`), and the
next wave's first GPU stage behind the last one of this wave, so the GPUs do not idle at
stage boundaries. Once a
wave's H5 files and partials are durable, the intermediates ``run.keep_intermediates``
does not keep are deleted (:mod:`trackset.dataset.retention`). Statistics stay one sequential
final task of ``build-dataset`` over the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_API_URL, temporary_settings

from trackset.cluster.plan import ClusterPlan
from trackset.config.settings import Settings
from trackset.dataset.retention import release_intermediates
from trackset.domain import VideoRef
from trackset.engine.run_cluster import RunCluster, worker_env
from trackset.engine.stage_runs import NextWave, StageRun
from trackset.engine.submission import SubmittedStage
from trackset.errors import ClusterShapeError
from trackset.gpu.sizing import format_gib
from trackset.reports.pictures import pictures_dir, write_run_pictures
from trackset.reports.run_report import RunReport, StageTally
from trackset.scheduling.worklist import WorkList
from trackset.stages.registry import stage_spec


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
    finished: list[VideoRef] | None = None

    def start(self) -> CpuLane:
        """Submit the first stage's tasks and return at once."""
        if self.runs:
            self.submitted = self.runs[0].submit(self.videos)
        return self

    def finish(self) -> list[VideoRef]:
        """Wait for the first stage, run the others; return the videos that got through all.

        Once only: a later call returns the same videos (the last GPU stage of the wave
        before may have asked first, to queue this wave's first GPU stage).
        """
        if self.finished is not None:
            return self.finished
        alive = list(self.videos)
        if self.runs:
            submitted, self.submitted = self.submitted, None  # its futures go once collected
            alive = self.runs[0].collect(self.size, self.videos, submitted)
            for run in self.runs[1:]:
                alive = run.run(self.size, alive)
        self.finished = alive
        return alive


@flow(name="process-waves", flow_run_name="waves")
def process_waves(
    work: WorkList, settings: Settings, stages: list[str], report: str, importing: bool = False
) -> list[StageTally]:
    """Run ``stages`` over the videos of ``work`` in waves (module docstring).

    Args:
        work: the pending videos, in manifest order.
        settings: the run's settings (``run.wave_size``, ``run.keep_intermediates``), with
            ``cluster.scheduler_address`` set to the run's cluster unless it runs on threads.
        stages: the stages to run, in pipeline order.
        report: where the run report goes (``trackset.reports.run_report``): every video's record.
        importing: the work directory holds the script pipeline's intermediates: read only,
            and none of them is ever deleted.

    Returns:
        Each stage's tally over every wave.

    Raises:
        ClusterShapeError: a worker cannot take part (trackset missing or of another version,
            a folder of the run it cannot see, the Prefect API out of its reach), named.
    """
    paths = settings.paths
    readable = [str(paths.work_dir)] if importing else [str(paths.videos_dir)]
    writable = [str(paths.dataset_dir)] + ([] if importing else [str(paths.work_dir)])
    # Task runs report to this flow's API wherever their worker runs: the URL travels in the
    # settings context Prefect ships with each task (the temporary server of a CLI run too).
    with (
        RunCluster(settings) as cluster,
        temporary_settings(updates={PREFECT_API_URL: worker_env()["PREFECT_API_URL"]}),
    ):
        plan = cluster.plan(readable, writable)
        return _stream(work.load(), settings, stages, RunReport(Path(report)), not importing, cluster, plan)


def _stream(
    videos: list[VideoRef],
    settings: Settings,
    stages: list[str],
    report: RunReport,
    release: bool,
    cluster: RunCluster,
    plan: ClusterPlan | None,
) -> list[StageTally]:
    logger = get_run_logger()
    runs = {stage: StageRun(stage, settings, len(videos), cluster, plan, report) for stage in stages}
    head, gpu, tail = (list(map(runs.__getitem__, lane)) for lane in split_lanes(stages))
    if gpu and plan is not None and not plan.gpus:
        raise ClusterShapeError(
            f"no worker of the cluster at {cluster.address} offers a GPU "
            "(start GPU workers pinned with CUDA_VISIBLE_DEVICES and --resources GPU=1)"
        )
    waves = waves_of(videos, settings.run.wave_size)
    logger.info("%d videos in %d waves of up to %d", len(videos), len(waves), settings.run.wave_size)

    ahead = CpuLane(head, waves[0], len(waves[0])).start() if waves else None
    behind: tuple[list[VideoRef], CpuLane] | None = None
    pictures_left = settings.run.pictures_videos
    for index, wave in enumerate(waves):
        alive = ahead.finish() if ahead is not None else list(wave)
        ahead = None
        if index + 1 < len(waves):  # preprocess the next wave while this one is on the GPUs
            ahead = CpuLane(head, waves[index + 1], len(waves[index + 1])).start()
        following = NextWave(gpu[0], ahead.finish) if gpu and ahead is not None else None
        for position, run in enumerate(gpu):
            last = position + 1 == len(gpu)
            alive = run.run(len(wave), alive, gpu[position + 1 :], following if last else None)
        if behind is not None:
            # The previous wave's H5 ran beside these GPU stages.
            pictures_left -= _land(*behind, settings, release, pictures_left)
        behind = (wave, CpuLane(tail, alive, len(wave)).start())
        logger.info("wave %d of %d: %d videos through the GPU stages", index + 1, len(waves), len(alive))
    if behind is not None:
        _land(*behind, settings, release, pictures_left)
    return [run.finish() for run in runs.values()]


def _land(wave: list[VideoRef], lane: CpuLane, settings: Settings, release: bool, pictures: int) -> int:
    """Finish a wave's last CPU stages, draw the pictures of up to ``pictures`` of its videos
    (``run.pictures_videos``), then free its intermediates (those not kept).

    Returns:
        How many videos got pictures.
    """
    landed = lane.finish()
    chosen = [video.video_id for video in landed[: max(pictures, 0)]]
    if chosen:
        drawn = write_run_pictures(settings.paths.dataset_dir, chosen, settings.h5)
        get_run_logger().info("pictures of %d videos in %s", len(drawn), pictures_dir(settings.paths.dataset_dir))
    if release:
        freed = release_intermediates(wave, settings)
        if freed:
            get_run_logger().info("freed %s of intermediates of %d videos", format_gib(freed), len(wave))
    return len(chosen)
