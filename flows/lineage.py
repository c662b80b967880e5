"""The dataset as a Prefect asset, and the event a training deployment can start on.

A run that changes the dataset's version (``dataset.json``, :mod:`trackset.dataset.record`)
materializes the asset ``file://<dataset_dir>`` with Prefect's ``materialize``, with the
videos directory (for an import, the script pipeline's folder) as its upstream asset, and
emits ``trackset.dataset.updated`` whose resource is the same key and whose payload carries
the dataset version. A run that changed nothing does neither, so a trigger on the event
starts training only on new data. README "Training on every new dataset version" shows a
deployment trigger on it.

On a Prefect 3.8 open-source server an asset is its events: ``prefect.asset.materialization.succeeded``
(resource: the dataset's key; related: the upstream key, role ``asset``, and the metadata
below as payload) and ``prefect.asset.referenced`` for the upstream. Prefect Cloud also
draws them as a lineage graph.

Examples:
    >>> asset_key(Path("/data/my dataset"))
    'file:///data/my_dataset'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from trackset.config.settings import Settings
from trackset.dataset.record import DatasetUpdate

DATASET_UPDATED = "trackset.dataset.updated"
"""The event a run emits when it changed the dataset's version."""

# Characters Prefect refuses in an asset key (prefect.types.names.RESTRICTED_ASSET_CHARACTERS).
_RESTRICTED = set("\n\r\t\0 #?&%\"'<>[]{}|\\^`")


def asset_key(folder: Path) -> str:
    """``file://`` and the absolute folder, each character an asset key may not hold as ``_``."""
    return "file://" + "".join("_" if char in _RESTRICTED else char for char in Path(folder).absolute().as_posix())


def dataset_asset(settings: Settings) -> Asset:
    """The dataset directory as an asset."""
    folder = settings.paths.dataset_dir
    return Asset(
        key=asset_key(folder),
        properties=AssetProperties(
            name=f"trackset dataset {folder.name}",
            description=f"Per-video HDF5 files and normalization_stats.yaml in {folder}; version in dataset.json",
        ),
    )


def upstream_asset(settings: Settings, importing: bool) -> Asset:
    """What the dataset is made from: the videos directory, or the folder of an import."""
    folder = settings.paths.work_dir if importing else settings.paths.videos_dir
    what = "intermediates of the script pipeline" if importing else "source videos"
    return Asset(key=asset_key(folder), properties=AssetProperties(name=f"{what} {folder.name}"))


def event_payload(update: DatasetUpdate) -> dict[str, Any]:
    """What the asset's materialization and the ``trackset.dataset.updated`` event carry."""
    record = update.record
    latest = record.runs[-1] if record.runs else None
    return {
        "dataset_version": record.dataset_version,
        "previous_version": update.previous_version,
        "videos": record.videos,
        "videos_built": latest.videos_built if latest else 0,
        "track_type": record.track_type,
        "statistics_sha256": record.statistics_sha256,
        "trackset_version": record.trackset_version,
    }


def publish_dataset(settings: Settings, update: DatasetUpdate, importing: bool = False) -> None:
    """Materialize the dataset asset and emit ``trackset.dataset.updated``, if the run changed it."""
    if not update.changed:
        get_run_logger().info("dataset version unchanged (%s): no asset update", update.record.dataset_version)
        return
    dataset = dataset_asset(settings)
    publish = materialize(
        dataset,
        asset_deps=[upstream_asset(settings, importing)],
        name="publish-dataset",
        cache_policy=NO_CACHE,
    )(_publish)
    publish(dataset, settings.paths.dataset_dir, update)


def _publish(dataset: Asset, folder: Path, update: DatasetUpdate) -> None:
    """The body of ``publish-dataset``: the materialization's metadata and the event."""
    payload = event_payload(update)
    add_asset_metadata(dataset, payload)
    emit_event(
        DATASET_UPDATED,
        resource={
            "prefect.resource.id": dataset.key,
            "prefect.resource.name": dataset.properties.name if dataset.properties else dataset.key,
            "trackset.dataset.dir": str(folder),
        },
        payload=payload,
    )
    get_run_logger().info(
        "dataset version %s (%d videos): emitted %s", payload["dataset_version"], payload["videos"], DATASET_UPDATED
    )
