"""The Prefect UI, in a real headless Chromium, shows a build's run summary and a typed run form.

A user opens the flow run, its Artifacts tab, the ``run-summary`` card, and that run's
version of the artifact; the rendered markdown must show the run's video counts. Debian's
chromium is driven by Python playwright (never ``playwright install``: nothing can be
downloaded here). Without them the test skips, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e import BASE_VIDEOS, Build, PrefectServer, artifacts_by_key

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    # The v2 UI calls an analytics host even with --analytics-off; fail its DNS at once.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def missing_browser_tools() -> str | None:
    """Why the UI cannot be driven here, or None when chromium and playwright are installed."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "python package playwright not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def browser_tools() -> None:
    """Skip outside CI, fail in CI, when the browser tools are missing (DECISIONS.md)."""
    reason = missing_browser_tools()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"UI test needs a browser: {reason}")
    pytest.skip(reason)


@pytest.fixture
def page(browser_tools: None, tmp_path: Path) -> Iterator[Page]:
    """A Chromium page; a screenshot of wherever it ended is saved even when the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # A 2-core machine with a busy server renders the single-page app slowly.
            page.set_default_timeout(60_000)
            yield page
            page.screenshot(path=tmp_path / "last.png", full_page=True)
        finally:
            browser.close()


def test_flow_run_artifacts_tab_leads_to_the_rendered_run_summary(
    browser_tools: None, deployed: PrefectServer, manual_build: Build, page: Page, tmp_path: Path
):
    from playwright.sync_api import expect

    with deployed.client() as client:
        summary = artifacts_by_key(client, manual_build.flow_run_id)["run-summary"]

    page.goto(f"{deployed.ui_url}/v2/runs/flow-run/{manual_build.flow_run_id}")
    page.get_by_role("tab", name="Artifacts").click()
    card = page.get_by_role("link", name=re.compile(r"run-summary"))
    expect(card).to_be_visible()
    card.scroll_into_view_if_needed()
    page.screenshot(path=tmp_path / "1-flow-run-artifacts.png")

    # The card opens the key's history (one entry per run); pick this run's version.
    card.click()
    version = page.locator(f"a[href$='/artifacts/artifact/{summary.id}']")
    expect(version).to_be_visible()
    page.screenshot(path=tmp_path / "2-run-summary-versions.png")

    version.click()
    markdown = page.locator("[data-testid=markdown-display]")
    expect(markdown).to_contain_text(f"videos in dataset: {BASE_VIDEOS}")
    expect(markdown).to_contain_text(f"videos processed this run: {BASE_VIDEOS}")
    expect(markdown).to_contain_text("failures: 0")
    expect(page).to_have_url(re.compile(rf"/artifacts/artifact/{summary.id}(\?|$)"))
    page.screenshot(path=tmp_path / "3-run-summary.png", full_page=True)


def test_the_run_form_of_the_manual_deployment_explains_the_settings(
    browser_tools: None, deployed: PrefectServer, page: Page, tmp_path: Path
):
    """Deployment, Run, Custom run: the form shows the settings with their descriptions."""
    from playwright.sync_api import expect

    from trackset.config.settings import Settings

    with deployed.client() as client:
        deployment = client.read_deployment_by_name("build-dataset/manual")
    h5 = Settings.model_fields["h5"]
    target_size = h5.annotation.model_fields["target_size"]  # type: ignore[union-attr]

    page.goto(f"{deployed.ui_url}/v2/deployments/deployment/{deployment.id}/run")
    expect(page.get_by_text(str(Settings.model_fields["run"].description), exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "1-run-form.png", full_page=True)
    section = page.get_by_text(str(h5.description), exact=True)
    section.scroll_into_view_if_needed()
    expect(section).to_be_visible()
    # A setting's own description, inside its section of the form.
    expect(page.locator("body")).to_contain_text(str(target_size.description))
    page.screenshot(path=tmp_path / "2-run-form-h5.png", full_page=True)
