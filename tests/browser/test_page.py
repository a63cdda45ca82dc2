"""The browser page, in headless Chromium (Debian's) driven by Playwright, through a real Envoy in
front of a server and a worker running as processes: what a person does, and what they see."""

from __future__ import annotations

import io
import random
import re
import zipfile
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from devstack.seed import seed_content
from jobs.connections import botocore_session, s3_client_kwargs
from jobs.storage import source_key
from tests.conftest import MISSING_IDS, SMALL_IDS
from tests.credentials import TOKEN

IDS = " ".join(map(str, SMALL_IDS[:3]))


@pytest.fixture
def page(browser: Browser, gateway) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)  # fresh local storage per test
    page = context.new_page()
    page.goto(f"http://{gateway.address}/#token={TOKEN}")  # the sign-in link `make run` prints
    yield page
    context.close()


def start(page: Page, ids: str) -> None:
    page.get_by_label("File ids").fill(ids)
    page.get_by_role("button", name="Start download").click()


def card(page: Page, index: int = 0):
    return page.locator("li.download").nth(index)


def initiate_trace_ids(page: Page) -> list[str]:
    """The trace id of each InitiateDownload call the page makes from now on (its traceparent)."""
    sent: list[str] = []

    def note(request: Request) -> None:
        if "InitiateDownload" in request.url:
            sent.append(request.headers.get("traceparent", "").split("-")[1])

    page.on("request", note)
    return sent


def percents_until_done(page: Page, timeout_s: float = 20) -> list[int]:
    """The progress bar's aria-valuenow, sampled until the download is over."""
    seen: list[int] = []
    bar = card(page).get_by_role("progressbar")
    for _ in range(int(timeout_s / 0.05)):
        # The state first: once it reads as over, the bar read after it shows the final value.
        over = card(page).get_attribute("data-state") in ("COMPLETED", "FAILED", "CANCELLED")
        value = int(bar.get_attribute("aria-valuenow") or 0)
        if not seen or seen[-1] != value:
            seen.append(value)
        if over:
            break
        page.wait_for_timeout(50)
    return seen


def test_a_download_moves_to_100_percent_and_the_file_arrives(page: Page) -> None:
    start(page, IDS)
    expect(card(page)).to_have_count(1)
    seen = percents_until_done(page)
    assert seen[-1] == 100 and any(0 < p < 100 for p in seen), f"the bar moved: {seen}"
    expect(card(page).locator(".state")).to_have_text("Completed")
    expect(card(page).locator(".detail")).to_contain_text("3 of 3 files")
    link = card(page).get_by_role("link", name=re.compile(r"^Download longhaul-.*\.zip"))
    with page.expect_download() as download_info:
        link.click()
    data = open(download_info.value.path(), "rb").read()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == sorted(f"{i}.zip" for i in SMALL_IDS[:3])


def test_a_reload_mid_job_brings_the_download_back_and_resumes(page: Page) -> None:
    start(page, IDS)
    bar = card(page).get_by_role("progressbar")
    expect(bar).not_to_have_attribute("aria-valuenow", "0", timeout=10_000)
    job_id = card(page).get_attribute("data-job-id")
    saved_seq = page.evaluate("JSON.parse(localStorage.getItem('longhaul.downloads.v1'))[0].lastSeq")
    assert int(saved_seq) > 1
    page.reload()
    expect(page.locator("li.download")).to_have_count(1)
    assert card(page).get_attribute("data-job-id") == job_id
    # Before any new event arrives, the card already shows where it was.
    assert int(card(page).get_by_role("progressbar").get_attribute("aria-valuenow")) > 0
    expect(card(page).locator(".state")).to_have_text("Completed", timeout=20_000)
    expect(card(page).get_by_role("link", name=re.compile("^Download"))).to_be_visible()


def test_several_downloads_at_once_and_cancel_one(page: Page) -> None:
    start(page, IDS)
    expect(page.locator("li.download")).to_have_count(1)
    start(page, " ".join(map(str, SMALL_IDS[3:5])))
    expect(page.locator("li.download")).to_have_count(2)
    newest = card(page, 0)
    newest.get_by_role("button", name="Cancel").click()
    expect(newest.locator(".state")).to_have_text("Cancelled")
    expect(newest.get_by_role("button", name="Retry")).to_be_visible()
    expect(card(page, 1).locator(".state")).to_have_text("Completed", timeout=20_000)
    expect(newest.locator(".state")).to_have_text("Cancelled")


def test_a_failure_shows_retry_and_retry_works(page: Page, gateway) -> None:
    file_id = 80_000_000 + random.randrange(1_000_000)  # not in S3 yet
    created = initiate_trace_ids(page)
    start(page, str(file_id))
    expect(card(page).locator(".state")).to_have_text("Failed", timeout=20_000)
    expect(card(page).locator(".message")).to_contain_text("ALL_FILES_MISSING")
    # The failure names the trace the download was created in.
    expect(card(page).locator(".message")).to_contain_text(f"trace {created[0]}")
    failed_id = card(page).get_attribute("data-job-id")

    # The file turns up; trying again now succeeds. (Playwright's sync API owns this thread's event
    # loop, hence a blocking S3 client.)
    s = gateway.settings
    s3 = botocore_session().create_client("s3", **s3_client_kwargs(s))
    s3.put_object(Bucket=s.source_bucket, Key=source_key(s, file_id), Body=seed_content(file_id))
    card(page).get_by_role("button", name="Retry").click()
    # The same job runs again, and the card follows it to the end.
    expect(card(page).locator(".state")).to_have_text("Completed", timeout=20_000)
    expect(page.locator("li.download")).to_have_count(1)
    assert card(page).get_attribute("data-job-id") == failed_id
    expect(card(page).get_by_role("link", name=re.compile("^Download"))).to_be_visible()


def test_bad_input_is_explained(page: Page) -> None:
    start(page, "abc")
    expect(page.get_by_role("alert")).to_contain_text("Enter one or more file ids")
    start(page, "5")
    expect(page.get_by_role("alert")).to_contain_text("file_ids[0]: 5 is out of range")
    expect(page.locator("li.download")).to_have_count(0)
    page.get_by_label("File ids").fill(f"{SMALL_IDS[0]} {MISSING_IDS[0]}")
    page.get_by_role("button", name="Check availability").click()
    checks = page.get_by_role("list", name="Availability of the files")
    expect(checks).to_contain_text(f"{SMALL_IDS[0]}: available")
    expect(checks).to_contain_text(f"{MISSING_IDS[0]}: not found")


def test_a_dropped_stream_reconnects_by_itself(page: Page, gateway) -> None:
    start(page, IDS)
    expect(card(page).get_by_role("progressbar")).not_to_have_attribute("aria-valuenow", "0", timeout=10_000)
    gateway.envoy.kill()
    expect(card(page).locator(".message")).to_contain_text("reconnecting", timeout=10_000)
    gateway.envoy.start()
    expect(card(page).locator(".state")).to_have_text("Completed", timeout=30_000)


def test_readable_on_a_phone_and_usable_by_keyboard(browser: Browser, gateway) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 667}, is_mobile=True)
    page = context.new_page()
    page.goto(f"http://{gateway.address}/#token={TOKEN}")
    page.keyboard.press("Tab")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Save key")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("File ids")).to_be_focused()
    page.keyboard.type(str(SMALL_IDS[0]))
    page.keyboard.press("Enter")
    bar = card(page).get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuemin", "0")
    expect(bar).to_have_attribute("aria-valuemax", "100")
    expect(bar).to_have_attribute("aria-label", re.compile(str(SMALL_IDS[0])))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "no sideways scrolling"
    expect(card(page).locator(".state")).to_have_text("Completed", timeout=20_000)
    page.screenshot(path=str(gateway.worker.log_path.parent / "page-phone.png"), full_page=True)
    context.close()


def test_without_a_key_the_page_says_so_and_a_typed_key_works(browser: Browser, gateway) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://{gateway.address}/")
    expect(page.get_by_role("status")).to_contain_text("No key yet")
    start(page, IDS)
    expect(page.get_by_role("alert")).to_contain_text("no credentials")
    expect(page.get_by_role("alert")).to_contain_text("Enter a valid API key above")
    page.get_by_label("API key").fill("lh_00000000_" + "x" * 43)
    page.get_by_role("button", name="Save key").click()
    start(page, IDS)
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")
    page.get_by_label("API key").fill(TOKEN)
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("status")).to_contain_text("A key is saved")
    start(page, IDS)
    expect(card(page)).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("")
    context.close()


def test_the_sign_in_link_leaves_no_key_in_the_address_bar(page: Page) -> None:
    assert "token" not in page.url
    expect(page.get_by_role("status")).to_contain_text("A key is saved")


def test_an_error_names_the_trace_of_the_call_that_failed(browser: Browser, gateway) -> None:
    """Every call carries a traceparent of its own; the error a person sees quotes its trace id."""
    context = browser.new_context()
    page = context.new_page()
    sent = initiate_trace_ids(page)
    page.goto(f"http://{gateway.address}/")  # no key: the call is refused
    start(page, IDS)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("no credentials")
    match = re.search(r"\(trace ([0-9a-f]{32})\)", alert.text_content() or "")
    assert match, alert.text_content()
    assert sent == [match.group(1)]
    context.close()
