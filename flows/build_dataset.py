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

How a run ends says what happened, so the UI, an automation or a notification can tell:
*Completed* when every video landed; *Completed* named ``CompletedWithFailures`` when some
failed and the others landed; *Failed* when a stage failed every video it was given, not for
the videos' own input (a broken model, a GPU too small: :func:`final_state`), when ``run.fail_on_video_error`` is set
and any video failed (the nightly deployment sets it), or when the run exceeded
``timeouts.flow_hours``. A run whose process died is marked *Crashed* by the automation
``deployments/deploy.sh`` creates, once its heartbeats stop; a crashed nightly refresh is
rerun once by another (``deployments/rerun-crashed-nightly.yaml``), and the first lines of
any run that takes over a crashed run's build say so and what is left.

At its end a run writes ``dataset.json`` (the dataset's version and the runs that built it,
:mod:`trackset.dataset.record`) and, when it changed the version, materializes the dataset
as a Prefect asset and emits ``trackset.dataset.updated`` (:mod:`trackset.flows.lineage`).

Run it from the command line (``trackset run``), a deployment (``deployments/prefect.yaml``)
or Python::

    from trackset.flows.build_dataset import build_dataset
    build_dataset(settings_path="settings.yaml", overrides={"h5": {"target_size": 128}})
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed
from prefect.utilities.timeout import timeout

from trackset.adapters import check_real_backends
from trackset.config.overrides import NO_OVERRIDES, SettingsOverrides
from trackset.config.settings import RunSettings, Settings, load_settings
from trackset.dataset.lock import DatasetLock, LockHolder
from trackset.dataset.record import RunInfo
from trackset.dataset.retention import remove_stale_temporaries
from trackset.domain import StageOutcome, VideoFailure
from trackset.engine.run_cluster import RunCluster
from trackset.errors import TracksetError
from trackset.flows.lineage import publish_dataset
from trackset.flows.waves import process_waves
from trackset.formats.layout import DatasetLayout
from trackset.reports.run_report import RunReport, RunSummary, StageTally
from trackset.scheduling.worklist import WorkList
from trackset.stages.registry import enabled_stages, stage_spec
from trackset.tasks.dataset_tasks import aggregate_statistics_task, import_intermediates_task, register_videos_task
from trackset.tasks.run_logs import send_trackset_logs_to_prefect


def resolve_settings(
    settings_path: str | None,
    overrides: Mapping[str, Any] | SettingsOverrides | None,
    videos_dir: str | None = None,
    work_dir: str | None = None,
    dataset_dir: str | None = None,
) -> Settings:
    """Settings with flow parameters on top (they win over env and file), paths made absolute.

    Paths are resolved once, here, against this process's working directory: every worker,
    on whatever host and in whatever directory it runs, is handed the same absolute paths
    (they must be on storage the workers share, README "Several machines").
    """
    merged: dict[str, Any] = overrides.as_dict() if isinstance(overrides, SettingsOverrides) else dict(overrides or {})
    paths = {k: v for k, v in (("videos_dir", videos_dir), ("work_dir", work_dir), ("dataset_dir", dataset_dir)) if v}
    if paths:
        merged["paths"] = {**merged.get("paths", {}), **paths}
    settings = load_settings(settings_path, merged)
    folders = {name: getattr(settings.paths, name).resolve() for name in ("videos_dir", "work_dir", "dataset_dir")}
    return settings.model_copy(update={"paths": settings.paths.model_copy(update=folders)})


class VideosFailedError(TracksetError):
    """Raised at the end of a run with failures when ``run.fail_on_video_error`` is set."""


class StageFailedError(VideosFailedError):
    """Raised at the end of a run when a stage failed every video it was given.

    A kind of :class:`VideosFailedError`, so the CLI reports it the same way (one line, exit 1).
    """


class RunTimeoutError(TimeoutError):
    """The run took longer than ``timeouts.flow_hours``."""


COMPLETED_WITH_FAILURES = "CompletedWithFailures"
"""Name of the final state of a run where some videos failed and the others landed."""


def _listed(failures: list[VideoFailure], shown: int = 10) -> str:
    listed = "\n".join(f"  {f.video_id} {f.stage} ({f.kind}): {f.reason}" for f in failures[:shown])
    more = f"\n  ... and {len(failures) - shown} more" if len(failures) > shown else ""
    return listed + more


def _stage_at_fault(failure: VideoFailure) -> bool:
    """True unless the failure is the video's own: a typed input error (unreadable, unusable,
    bad intermediate) is final at its first attempt; a video that does not fit on the GPU
    (quarantined, out of memory) or an error retries did not cure says the stage is broken."""
    return failure.kind != "error" or failure.attempts > 1


def final_state(summary: RunSummary, run: RunSettings) -> RunSummary:
    """What the run ends as (module docstring): the summary, or it in a named state.

    A stage "failed every video" when none of the videos it was given got through and not
    all of them failed for their own input: a run of one new broken file is not a broken
    stage, a stage that quarantined every video is.

    Returns:
        ``summary`` when nothing failed (plain *Completed*); ``summary`` in a *Completed*
        state named :data:`COMPLETED_WITH_FAILURES` when some videos failed. Prefect hands
        the caller of the flow the summary either way, hence the return type.

    Raises:
        StageFailedError: a stage failed every video it was given, naming it.
        VideosFailedError: videos failed and ``run.fail_on_video_error`` is set.
    """
    failures = summary.failures
    if not failures:
        return summary
    dead = [
        tally
        for tally in summary.stages
        if tally.failed and not (tally.done or tally.skipped) and any(map(_stage_at_fault, tally.failures))
    ]
    if dead:
        names = ", ".join(f"{tally.stage} ({tally.failed})" for tally in dead)
        raise StageFailedError(
            f"every video failed in {names}; the run cannot have built anything past it:\n"
            + _listed([f for tally in dead for f in tally.failures])
        )
    if run.fail_on_video_error:
        raise VideosFailedError(
            f"{len(failures)} video(s) failed (run.fail_on_video_error is set); the others landed:\n"
            + _listed(failures)
        )
    state = Completed(
        name=COMPLETED_WITH_FAILURES,
        message=f"{len(failures)} of {summary.videos_pending} video(s) failed; the others landed (see run-summary)",
        data=summary,
    )
    return cast(RunSummary, state)  # Prefect ends the run in this state and returns its data


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
        # One cluster for the whole run: every stage and wave connects to it by address.
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
            summary.stages = waves(work, cluster.attached(settings), stages, str(report), importing=importing)
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
