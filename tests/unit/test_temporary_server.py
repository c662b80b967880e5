"""The CLI starts Prefect's temporary server early, and the flow's client then uses that one."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from trackset.flows.temporary_server import EarlyServer


@pytest.mark.slow  # starts a real temporary server (~8 s of CPU)
def test_the_early_server_is_the_one_the_flows_client_finds_running():
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        early = EarlyServer.start_if_needed()
        early.wait()
        try:
            assert early.started_server and early.server.running
            with get_client(sync_client=True) as client:  # what a flow's engine asks for
                assert str(client.api_url).rstrip("/") == early.server.api_url
                assert client.api_healthcheck() is None
            assert early.server.server_process.poll() is None  # not restarted, still serving
        finally:
            early.server.stop()


def test_with_an_api_url_set_nothing_is_started():
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        early = EarlyServer.start_if_needed()
        early.wait()
    assert early.server is None and not early.started_server
