"""Tasks that run once per flow run: registering videos and the final statistics."""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from trackset.config.settings import Settings
from trackset.dataset.record import DatasetUpdate, RunInfo, write_dataset_files
from trackset.dataset.registration import Registration, import_intermediates, register_videos
from trackset.formats.layout import DatasetLayout


@task(name="register-videos", cache_policy=NO_CACHE)
def register_videos_task(settings: Settings) -> Registration:
    """Discover source videos, give new ones ids in the manifest, and list what needs work."""
    registration = register_videos(settings)
    get_run_logger().info(registration.describe())
    return registration


@task(name="import-intermediates", cache_policy=NO_CACHE)
def import_intermediates_task(settings: Settings) -> Registration:
    """Register the script pipeline's videos found in the work directory (``import_dir``)."""
    registration = import_intermediates(settings)
    get_run_logger().info(registration.describe())
    return registration


@task(name="aggregate-statistics", cache_policy=NO_CACHE)
def aggregate_statistics_task(settings: Settings, run: RunInfo) -> DatasetUpdate:
    """Sequential final task: statistics over every video of the dataset, old and new, and
    ``dataset.json`` with the dataset's version (trackset.dataset.record)."""
    dataset = DatasetLayout(settings.paths.dataset_dir)
    return write_dataset_files(dataset, settings.statistics.std_floor, run, datetime.now(timezone.utc))
