"""The dataset as a Prefect asset and the event a training deployment starts on, read back
from a real server after ``build-dataset/manual`` built the session's dataset.

A Prefect 3.8 open-source server keeps assets as events (it has no assets endpoint): the
materialization names the dataset's key and, as a related resource of role ``asset``, the
videos directory it was made from.
"""

from __future__ import annotations

import json

import pytest
from prefect.events.schemas.events import Event

from tests.e2e import Build, PrefectServer, read_events
from trackset.flows.lineage import DATASET_UPDATED, asset_key

pytestmark = pytest.mark.slow


def test_the_build_materializes_the_dataset_asset_from_the_videos_and_emits_its_version(
    deployed: PrefectServer, manual_build: Build
):
    dataset, videos = asset_key(manual_build.dirs.dataset), asset_key(manual_build.dirs.videos)
    record = json.loads((manual_build.dirs.dataset / "dataset.json").read_text())
    # The nightly test refreshes this dataset later: this build's version is its entry's.
    [built] = [entry for entry in record["runs"] if entry["flow_run_id"] == str(manual_build.flow_run_id)]
    run = f"prefect.flow-run.{manual_build.flow_run_id}"

    def this_runs(events: list[Event]) -> list[Event]:
        return [event for event in events if run in {related.id for related in event.related}]

    with deployed.client() as client:
        [materialized] = this_runs(read_events(client, "prefect.asset.materialization.succeeded", dataset))
        referenced = this_runs(read_events(client, "prefect.asset.referenced", videos))
        [updated] = this_runs(read_events(client, DATASET_UPDATED, dataset))

    assert [related.id for related in materialized.related if related.role == "asset"] == [videos]
    assert materialized.payload["dataset_version"] == built["dataset_version"]
    assert materialized.payload["videos"] == built["videos_built"] == 6
    assert referenced, "the videos directory is not recorded as the dataset's upstream"

    assert updated.payload["dataset_version"] == built["dataset_version"]
    assert updated.payload["previous_version"] is None
    assert updated.resource["trackset.dataset.dir"] == str(manual_build.dirs.dataset)
