"""Flow ``build-dataset``: raw videos to per-video H5 files and dataset statistics.

It registers the videos of ``paths.videos_dir`` in the append-only manifest, runs only
those whose outputs are missing or stale through preprocess -> depth & camera -> 3D tracks
-> hands -> H5 build in waves of ``run.wave_size`` (the ``process-waves`` subflow,
``flows/waves.py``), then aggregates statistics over *every* video of the dataset in one
sequential final task. A video that fails a stage is reported with its reason and skips
the later stages; every other video still lands. The run holds the dataset's lock and its
work directory's (:mod:`trackset.dataset.lock`) from start to end, so a second run on the
same dataset, or of another dataset with the same work directory, fails at once, naming the
run that holds it; it then removes what a killed run left half-written.

How a run ends says what happened (*Completed*, ``CompletedWithFailures``, *Failed*,
*Crashed*): :mod:`trackset.engine.run_outcome`. A crashed nightly refresh is rerun once by
another (``deployments/rerun-crashed-nightly.yaml``), and the first lines of any run that
takes over a crashed run's build say so and what is left. This module only wires the run:
settings, the lock, registration, the run's one cluster, ``process-waves`` on it, statistics.

At its end a run writes ``dataset.json`` (the dataset's version and the runs that built it,
:mod:`trackset.dataset.record`) and, when it changed the version, materializes the dataset
as a Prefect asset and emits ``trackset.dataset.updated`` (:mod:`trackset.flows.lineage`).

Run it from the command line (``trackset run``), a deployment (``deployments/prefect.yaml``)
or Python::

    from trackset.flows.build_dataset import build_dataset
    build_dataset(settings_path="settings.yaml", overrides={"h5": {"target_size": 128}})
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from prefect.utilities.timeout import timeout

from trackset.adapters import check_real_backends
from trackset.config.overrides import NO_OVERRIDES, SettingsOverrides, resolve_settings
from trackset.config.settings import Settings
from trackset.dataset.lock import DatasetLock, LockHolder
from trackset.dataset.record import RunInfo
from trackset.dataset.retention import remove_stale_temporaries
from trackset.domain import StageOutcome
from trackset.engine.run_cluster import RunCluster
from trackset.engine.run_outcome import RunTimeoutError, final_state
from trackset.flows.lineage import publish_dataset
from trackset.flows.waves import process_waves
from trackset.formats.layout import DatasetLayout
from trackset.reports.run_report import RunReport, RunSummary, StageTally
from trackset.scheduling.worklist import WorkList
from trackset.stages.registry import enabled_stages, stage_spec
from trackset.tasks.dataset_tasks import aggregate_statistics_task, import_intermediates_task, register_videos_task
from trackset.tasks.run_logs import send_trackset_logs_to_prefect


@flow(name="build-dataset")
def build_dataset(
    settings_path: str | None = None,
    overrides: SettingsOverrides = NO_OVERRIDES,
    videos_dir: str | None = None,
    work_dir: str | None = None,
    dataset_dir: str | None = None,
    import_dir: str | None = None,
) -> RunSummary:
    """Process new or changed videos and rewrite the statistics of the whole dataset.

    Args:
        settings_path: settings YAML (relative to the checkout); empty uses the defaults and
            the ``TRACKSET_*`` variables.
        overrides: settings that win over the file and the environment, by section (the
            run form shows each with its description; the API rejects a wrong value).
        videos_dir: shortcut for ``paths.videos_dir``.
        work_dir: shortcut for ``paths.work_dir``.
        dataset_dir: shortcut for ``paths.dataset_dir``.
        import_dir: build from the script pipeline's intermediates in this directory instead
            of from videos: only the H5 build and the statistics run (trackset.dataset.importer).
    """
    send_trackset_logs_to_prefect()
    logger = get_run_logger()
    settings = resolve_settings(settings_path, overrides, videos_dir, import_dir or work_dir, dataset_dir)
    if not import_dir:
        check_real_backends(settings)  # a missing model fails the run before any video
    hours = settings.timeouts.flow_hours
    try:
        with (
            timeout(hours * 3600 if hours else None, timeout_exc_type=RunTimeoutError),
            DatasetLock(
                settings.paths.dataset_dir,
                flow_run_id=str(flow_run.id or ""),
                work_dir=None if import_dir else settings.paths.work_dir,  # an import only reads it
            ) as lock,
        ):
            summary = _build(settings, import_dir is not None, lock.previous)
    except RunTimeoutError:
        raise RunTimeoutError(f"the run took longer than timeouts.flow_hours ({hours:g} h)") from None
    create_markdown_artifact(
        summary.to_markdown(),
        key="run-summary",
        description="Counts, failures with reasons, statistics and output location of this run",
    )
    logger.info(
        "dataset %s: %d videos, %d processed now, %d failures",
        summary.dataset_dir,
        summary.videos_total,
        summary.videos_pending,
        len(summary.failures),
    )
    return final_state(summary, settings.run)


def run_name() -> str:
    """This run's name for its report: UTC start time and flow run name, sortable by time."""
    started = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{started}-{flow_run.name or 'run'}"


def _build(settings: Settings, importing: bool, unfinished: LockHolder | None = None) -> RunSummary:
    """Register, run the pending videos through the stages in waves, aggregate statistics,
    publish the dataset's new version.

    ``unfinished`` is the run whose lock this one took over (it died holding it): the log
    says this run resumes its build.
    """
    if importing:
        registration = import_intermediates_task(settings)
        stages: list[str] = ["h5_build"]
    else:
        registration = register_videos_task(settings)
        stages = list(enabled_stages(settings))
    get_run_logger().info(registration.resume_line(unfinished))
    removed = remove_stale_temporaries(settings, registration.pending, importing)
    if removed:
        get_run_logger().warning(
            "removed %d temporary file(s) a killed run left, e.g. %s", len(removed), ", ".join(map(str, removed[:3]))
        )
    report = DatasetLayout(settings.paths.dataset_dir).run_report(run_name())
    summary = RunSummary(
        dataset_dir=str(settings.paths.dataset_dir),
        videos_total=len(registration.videos),
        videos_pending=len(registration.pending),
        extra_failures=list(registration.excluded),
        report_path=str(report),
        skipped=registration.skipped,
    )
    RunReport(report).write(StageOutcome("register", failures=list(registration.excluded)))
    if registration.pending:
        if not importing:  # the workers are asked at start whether they can write it: it must exist
            settings.paths.work_dir.mkdir(parents=True, exist_ok=True)
        # One cluster for the whole run, handed down: every stage and wave runs on it.
        gpu_workers = any(stage_spec(stage).resources.uses_gpu for stage in stages)
        with (
            RunCluster(settings, gpu_workers) as cluster,
            WorkList.written("waves", registration.pending) as work,
        ):
            if cluster.client is not None:
                get_run_logger().info("Dask dashboard of this run: %s", cluster.client.dashboard_link)
                # In the run's Artifacts tab too, where users look while the stages run.
                create_link_artifact(
                    cluster.client.dashboard_link,
                    link_text="Dask dashboard",
                    key="dask-dashboard",
                    description="Dask dashboard of this run's cluster (live while the run is)",
                )
            waves = process_waves.with_options(task_runner=cluster.task_runner())
            started = time.monotonic()
            summary.stages = waves(work, settings, stages, str(report), cluster, importing=importing)
            summary.seconds = time.monotonic() - started
    else:
        summary.stages = [StageTally(stage) for stage in stages]
    run = RunInfo(
        flow_run_id=str(flow_run.id or ""),
        flow_run_name=str(flow_run.name or ""),
        videos_built=summary.stage("h5_build").done,
        videos_failed=len(summary.failures),
    )
    update = aggregate_statistics_task(settings, run)
    summary.statistics = update.statistics
    summary.dataset_version = update.record.dataset_version
    publish_dataset(settings, update, importing)
    return summary


if __name__ == "__main__":
    build_dataset()
