"""The run cluster's Dask dashboard serves its pages (bokeh is installed), not "needs bokeh"."""

from __future__ import annotations

import urllib.request

from distributed import Client, SpecCluster

from trackset.cluster.worker_spec import scheduler_spec


def test_the_scheduler_the_run_starts_serves_its_dashboard():
    with (
        SpecCluster(scheduler=scheduler_spec(), workers={}) as cluster,  # RunCluster's scheduler
        Client(cluster) as client,
        urllib.request.urlopen(client.dashboard_link, timeout=30) as page,
    ):
        body = page.read().decode()
    assert page.status == 200
    assert "bokeh" in body.lower() and "install" not in body.lower()
