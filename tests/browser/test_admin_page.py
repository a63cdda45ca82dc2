"""The operators' page (/admin) in headless Chromium, against the same stack as the downloads page: what
an operator sees live, and what they can do from it."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from devstack.seed import seed_content
from jobs.connections import botocore_session, s3_client_kwargs
from jobs.storage import source_key
from longhaul.download.v1 import download_pb2 as pb
from longhaul_client import Client, JobFailed, Unavailable
from tests.conftest import SMALL_IDS
from tests.credentials import OPERATOR, OPERATOR_TOKEN, TOKEN


@pytest.fixture
def admin(browser: Browser, gateway) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://{gateway.address}/admin#token={OPERATOR_TOKEN}")
    yield page
    context.close()


def failed_job(gateway) -> tuple[str, int]:
    """A job whose only file is not in S3 yet: a dead letter."""
    file_id = 85_000_000 + random.randrange(1_000_000)
    with Client(gateway.address, token=TOKEN) as client:
        job_id = client.initiate([file_id]).job_id
        with pytest.raises(JobFailed):
            client.wait(job_id)
    return job_id, file_id


def test_the_queue_its_workers_and_the_last_hour_are_shown_live(admin: Page, gateway) -> None:
    with Client(gateway.address, token=TOKEN) as client:
        job = client.initiate(SMALL_IDS[:1])
        # The worker's row names the job while it runs (4 s here), without a reload.
        expect(admin.locator("#workers")).to_contain_text(job.job_id, timeout=10_000)
        expect(admin.get_by_role("definition").nth(3)).not_to_have_text("0")  # "Running"
        client.wait(job.job_id)
    ended = admin.get_by_role("img", name=re.compile(r"Jobs ended in the last hour: [1-9]\d* completed"))
    expect(ended).to_be_visible(timeout=10_000)
    expect(admin.locator("#ended-chart rect.completed").first).to_be_visible()
    expect(admin.get_by_role("img", name=re.compile(r"Jobs waiting and running over the last hour"))).to_be_visible()


def test_a_dead_letter_is_retried_or_discarded_from_the_page(admin: Page, gateway) -> None:
    retried, file_id = failed_job(gateway)
    discarded, _ = failed_job(gateway)
    row = admin.locator(f"#dead-letters tr[data-job-id='{retried}']")
    expect(row).to_contain_text("ALL_FILES_MISSING", timeout=10_000)
    expect(admin.get_by_role("list", name="Failures by error code in the last hour")).to_contain_text("ALL_FILES_MISSING")

    # The file turns up; the operator runs the job again, and it completes under its id.
    s = gateway.settings
    s3 = botocore_session().create_client("s3", **s3_client_kwargs(s))
    s3.put_object(Bucket=s.source_bucket, Key=source_key(s, file_id), Body=seed_content(file_id))
    row.get_by_role("button", name="Retry").click()
    expect(row).to_have_count(0)
    with Client(gateway.address, token=TOKEN) as client:
        done = client.wait(retried)
        assert (done.state, done.retries) == (pb.JOB_STATE_COMPLETED, 1)

    other = admin.locator(f"#dead-letters tr[data-job-id='{discarded}']")
    other.get_by_role("button", name="Discard").click()
    expect(other).to_have_count(0)
    with Client(gateway.address, token=TOKEN) as client:
        assert client.status(discarded).state == pb.JOB_STATE_FAILED, "its owner still sees it failed"


def test_intake_is_paused_and_resumed_from_the_page(admin: Page, gateway) -> None:
    status = admin.locator("#intake-status")
    expect(status).to_contain_text("Intake open")
    admin.get_by_label("Why intake is paused").fill("Redis upgrade")
    admin.get_by_role("button", name="Pause intake").click()
    try:
        expect(status).to_contain_text(f"Intake paused by operator:{OPERATOR}")
        expect(status).to_contain_text("Redis upgrade")
        with Client(gateway.address, token=TOKEN, timeout_s=5) as client, pytest.raises(Unavailable) as refused:
            client.initiate(SMALL_IDS[:1])
        assert "paused" in str(refused.value)
    finally:
        admin.get_by_role("button", name="Resume intake").click()
    expect(status).to_contain_text("Intake open")
    with Client(gateway.address, token=TOKEN) as client:
        assert client.initiate(SMALL_IDS[:1]).state == pb.JOB_STATE_QUEUED


def test_a_tenant_key_is_refused_with_what_to_do(browser: Browser, gateway) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://{gateway.address}/admin#token={TOKEN}")
    expect(page.get_by_role("alert")).to_contain_text("a tenant's key")
    expect(page.get_by_role("alert")).to_contain_text("Enter an operator key above")
    expect(page.get_by_label("Operator key")).to_have_attribute("aria-invalid", "true")
    context.close()
