"""Flow ``build-dataset``: raw videos to per-video H5 files and dataset statistics.

It registers the videos of ``paths.videos_dir`` in the append-only manifest, runs only
those whose outputs are missing or stale through preprocess -> depth & camera -> 3D tracks
-> hands -> H5 build, then aggregates statistics over *every* video of the dataset in one
sequential final task. A video that fails a stage is reported with its reason and skips
the later stages; every other video still lands.

Run it from the command line (``trackset run``), a deployment (``deployments/prefect.yaml``)
or Python::

    from flows.build_dataset import build_dataset
    build_dataset(settings_path="settings.yaml", overrides={"h5": {"target_size": 128}})
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stage_runs import run_stage
from tasks.dataset_tasks import aggregate_statistics_task, import_intermediates_task, register_videos_task
from trackset.adapters import check_real_backends
from trackset.domain import STAGE_ORDER
from trackset.errors import TracksetError
from trackset.run_report import RunSummary
from trackset.settings import Settings, load_settings


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
    if import_dir:
        registration = import_intermediates_task(settings)
        stages: tuple[str, ...] = ("h5_build",)
    else:
        registration = register_videos_task(settings)
        stages = STAGE_ORDER
    summary = RunSummary(
        dataset_dir=str(settings.paths.dataset_dir),
        videos_total=len(registration.videos),
        videos_pending=len(registration.pending),
        extra_failures=list(registration.excluded),
    )
    alive = list(registration.pending)
    for stage in stages:
        outcome = run_stage(stage, alive, settings)
        summary.stages.append(outcome)
        succeeded = set(outcome.succeeded)
        alive = [video for video in alive if video.video_id in succeeded]

    summary.statistics = aggregate_statistics_task(settings)
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


if __name__ == "__main__":
    build_dataset()
