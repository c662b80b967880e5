"""The dataset as a Prefect asset and the event a training deployment starts on, read back
from a real server after ``build-dataset/manual`` built the session's dataset.

A Prefect 3.8 open-source server keeps assets as events (it has no assets endpoint): the
materialization names the dataset's key and, as a related resource of role ``asset``, the
videos directory it was made from.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e import Build, PrefectServer, read_events
from trackset.flows.lineage import DATASET_UPDATED, asset_key

pytestmark = pytest.mark.slow


def test_the_build_materializes_the_dataset_asset_from_the_videos_and_emits_its_version(
    deployed: PrefectServer, manual_build: Build
):
    dataset, videos = asset_key(manual_build.dirs.dataset), asset_key(manual_build.dirs.videos)
    record = json.loads((manual_build.dirs.dataset / "dataset.json").read_text())
    run = f"prefect.flow-run.{manual_build.flow_run_id}"
    with deployed.client() as client:
        [materialized] = read_events(client, "prefect.asset.materialization.succeeded", dataset)
        referenced = read_events(client, "prefect.asset.referenced", videos)
        [updated] = read_events(client, DATASET_UPDATED, dataset)

    upstream = [r.id for r in materialized.related if r.role == "asset"]
    assert upstream == [videos]
    assert materialized.payload["dataset_version"] == record["dataset_version"]
    assert materialized.payload["videos"] == record["videos"] == 6
    assert referenced, "the videos directory is not recorded as the dataset's upstream"

    assert updated.payload["dataset_version"] == record["dataset_version"]
    assert updated.payload["previous_version"] is None
    assert updated.resource["trackset.dataset.dir"] == str(manual_build.dirs.dataset)
    assert run in {r.id for r in updated.related}  # which run made this version
