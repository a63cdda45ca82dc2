"""What the browser tests share: one stack behind Envoy (server, worker, as processes) and one headless
Chromium (Debian's) driven by Playwright, for every page's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.gateway.conftest import start_gateway, stop_gateway

# Flags that let Chromium run as root with no network beyond loopback: no sandbox (root), no background
# traffic (it would try to reach Google's hosts at every start).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="package")
def gateway(base_settings, work_dir):
    """Jobs of 4 s: long enough to watch the bar move, reload and cancel mid-job."""
    started = start_gateway(base_settings, work_dir, delay_min_ms=4_000, delay_max_ms=4_000)
    yield started
    stop_gateway(started)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()
