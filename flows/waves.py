"""Subflow ``process-waves``: the pending videos stream through every stage in bounded waves.

A build of 50,000 videos as one barrier (every video through preprocess, then every one
through depth, ...) keeps ~9.6 TB of intermediates before the first H5 exists, leaves the
GPUs idle through all of preprocessing and all of the H5 build, and shows an H5-stage bug
after days. Here the videos go in waves of ``run.wave_size``, in manifest (video-id) order,
so a resumed build continues where it stopped: wave i runs its GPU stages while wave i+1
is preprocessed and wave i-1 gets its H5 files, and from the second wave on each GPU
stage's tasks are queued behind the stage before's.

What runs where and when is the wave planner's (:mod:`trackset.scheduling.planner`); the
engine carries it out on the run's one cluster (:mod:`trackset.engine.executor`), which
``build-dataset`` opens and hands down. This subflow only wires them: it checks the
cluster's workers, points the task runs at this flow's API, and hands the engine the
``profile-memory`` subflow. Statistics stay one sequential final task of ``build-dataset``
over the whole dataset.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.settings import PREFECT_API_URL, temporary_settings

from trackset.config.settings import Settings
from trackset.engine.executor import stream
from trackset.engine.run_cluster import RunCluster, worker_env
from trackset.flows.profile_memory import profile_memory
from trackset.reports.run_report import RunReport, StageTally
from trackset.scheduling.worklist import WorkList


@flow(name="process-waves", flow_run_name="waves")
def process_waves(
    work: WorkList, settings: Settings, stages: list[str], report: str, cluster: RunCluster, importing: bool = False
) -> list[StageTally]:
    """Run ``stages`` over the videos of ``work`` in waves on the run's ``cluster`` (module docstring).

    Args:
        work: the pending videos, in manifest order.
        settings: the run's settings (``run.wave_size``, ``run.keep_intermediates``).
        stages: the stages to run, in pipeline order.
        report: where the run report goes (``trackset.reports.run_report``): every video's record.
        cluster: the run's cluster, open (shown as ``<RunCluster>`` among the run's parameters).
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
    with temporary_settings(updates={PREFECT_API_URL: worker_env()["PREFECT_API_URL"]}):
        plan = cluster.plan(readable, writable)
        videos, run_report = work.load(), RunReport(Path(report))
        return stream(
            videos, settings, stages, run_report, cluster, plan, profile_memory, free_intermediates=not importing
        )
