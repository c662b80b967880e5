"""Flow ``build-dataset``: raw videos to per-video H5 files and dataset statistics.

It registers the videos of ``paths.videos_dir`` in the append-only manifest, runs only
those whose outputs are missing or stale through preprocess -> depth & camera -> 3D tracks
-> hands -> H5 build in waves of ``run.wave_size`` (the ``process-waves`` subflow,
``flows/waves.py``), then aggregates statistics over *every* video of the dataset in one
sequential final task. A video that fails a stage is reported with its reason and skips
the later stages; every other video still lands. The run holds the dataset's lock
(:mod:`trackset.dataset_lock`) from start to end, so a second run on the same dataset fails
at once, naming the run that holds it.

Run it from the command line (``trackset run``), a deployment (``deployments/prefect.yaml``)
or Python::

    from flows.build_dataset import build_dataset
    build_dataset(settings_path="settings.yaml", overrides={"h5": {"target_size": 128}})
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.run_cluster import RunCluster
from flows.waves import process_waves
from tasks.dataset_tasks import aggregate_statistics_task, import_intermediates_task, register_videos_task
from trackset.adapters import check_real_backends
from trackset.dataset_lock import DatasetLock
from trackset.domain import STAGE_ORDER
from trackset.errors import TracksetError
from trackset.run_report import RunSummary, StageOutcome
from trackset.settings import Settings, load_settings
from trackset.worklist import WorkList


def resolve_settings(
    settings_path: str | None,
    overrides: dict[str, Any] | None,
    videos_dir: str | None = None,
    work_dir: str | None = None,
    dataset_dir: str | None = None,
) -> Settings:
    """Settings with flow parameters on top (they win over env and file)."""
    merged: dict[str, Any] = dict(overrides or {})
    paths = {k: v for k, v in (("videos_dir", videos_dir), ("work_dir", work_dir), ("dataset_dir", dataset_dir)) if v}
    if paths:
        merged["paths"] = {**merged.get("paths", {}), **paths}
    return load_settings(settings_path, merged)


class VideosFailedError(TracksetError):
    """Raised at the end of a run with failures when ``run.fail_on_video_error`` is set."""


@flow(name="build-dataset")
def build_dataset(
    settings_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    videos_dir: str | None = None,
    work_dir: str | None = None,
    dataset_dir: str | None = None,
    import_dir: str | None = None,
) -> RunSummary:
    """Process new or changed videos and rewrite the statistics of the whole dataset.

    Args:
        settings_path: settings YAML; ``None`` uses defaults and ``TRACKSET_*`` variables.
        overrides: nested settings that win over the file and the environment.
        videos_dir, work_dir, dataset_dir: shortcuts for the ``paths`` settings.
        import_dir: build from the script pipeline's intermediates in this directory instead
            of from videos: only the H5 build and the statistics run (trackset.importer).
    """
    logger = get_run_logger()
    settings = resolve_settings(settings_path, overrides, videos_dir, import_dir or work_dir, dataset_dir)
    if not import_dir:
        check_real_backends(settings)  # a missing model fails the run before any video
    with DatasetLock(settings.paths.dataset_dir, flow_run_id=str(flow_run.id or "")):
        summary = _build(settings, import_dir is not None)
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
    if summary.failures and settings.run.fail_on_video_error:
        listed = "\n".join(f"  {f.video_id} {f.stage} ({f.kind}): {f.reason}" for f in summary.failures[:10])
        more = f"\n  ... and {len(summary.failures) - 10} more" if len(summary.failures) > 10 else ""
        raise VideosFailedError(
            f"{len(summary.failures)} video(s) failed (run.fail_on_video_error is set); "
            f"the others landed:\n{listed}{more}"
        )
    return summary


def _build(settings: Settings, importing: bool) -> RunSummary:
    """Register, run the pending videos through the stages in waves, aggregate statistics."""
    if importing:
        registration = import_intermediates_task(settings)
        stages: list[str] = ["h5_build"]
    else:
        registration = register_videos_task(settings)
        stages = list(STAGE_ORDER)
    summary = RunSummary(
        dataset_dir=str(settings.paths.dataset_dir),
        videos_total=len(registration.videos),
        videos_pending=len(registration.pending),
        extra_failures=list(registration.excluded),
    )
    if registration.pending:
        # One cluster for the whole run: every stage and wave connects to it by address.
        with RunCluster(settings) as cluster, WorkList.written("waves", registration.pending) as work:
            waves = process_waves.with_options(task_runner=cluster.task_runner())
            summary.stages = waves(work, cluster.attached(settings), stages, release=not importing)
    else:
        summary.stages = [StageOutcome(stage) for stage in stages]
    summary.statistics = aggregate_statistics_task(settings)
    return summary


if __name__ == "__main__":
    build_dataset()
