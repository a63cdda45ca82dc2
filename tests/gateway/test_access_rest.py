"""Authentication, limits and secrets as REST and grpc-web clients meet them through the real Envoy:
401 with a reason, 429 with Retry-After, RateLimit-* headers on replies, and no secret in any log."""

from __future__ import annotations

import time

import pytest

from longhaul.download.v1 import download_pb2 as pb
from tests.conftest import SMALL_IDS
from tests.credentials import OTHER_TOKEN, TOKEN
from tests.gateway.conftest import start_gateway, stop_gateway
from tests.helpers import fetch
from tests.web_clients import grpc_web, rest, sse

LIMIT = 4


@pytest.fixture(scope="module")
def limited(base_settings, work_dir):
    """Servers with low limits, logging everything (DEBUG), to look for secrets in the logs after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOG_LEVEL", "DEBUG")
        started = start_gateway(
            base_settings, work_dir, tenant_requests_per_s=LIMIT, tenant_max_active_jobs=1,
            delay_min_ms=1_500, delay_max_ms=1_500,
        )
    yield started
    stop_gateway(started)


def next_window() -> None:
    time.sleep(1.02 - time.time() % 1)


def test_rest_without_valid_credentials_is_401_with_the_reason(limited) -> None:
    for token, reason in ((None, "no credentials"), ("lh_12345678_" + "x" * 43, "unknown or revoked")):
        for method, path, body in (
            ("GET", "/v1/download/jobs", None),
            ("POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]}),
            ("GET", "/v1/download/00000000-0000-4000-8000-000000000000/file", None),
        ):
            status, headers, reply = rest(limited.port, method, path, body, token=token)
            assert status == 401, (path, reply)
            assert reason in reply["message"], reply
            assert headers.get("www-authenticate", "").startswith("Bearer"), headers
    events = sse(limited.port, "/v1/download/00000000-0000-4000-8000-000000000000/events", token=None)
    assert events.status == 401
    web = grpc_web(limited.port, "ListDownloads", pb.ListDownloadsRequest(), token=None)
    assert web.grpc_status == 16 and "no credentials" in web.headers.get("grpc-message", ""), "trailers-only reply"


def test_oversized_credentials_are_refused_at_envoy(limited) -> None:
    status, _, _ = rest(limited.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]}, token="x" * 40_000)
    assert status == 431, "headers over 32 kB never reach a server"


def test_rest_replies_carry_ratelimit_headers_and_a_burst_gets_429(limited) -> None:
    next_window()
    replies = [rest(limited.port, "GET", "/v1/download/jobs") for _ in range(LIMIT + 2)]
    statuses = [status for status, _, _ in replies]
    assert statuses == [200] * LIMIT + [429, 429], statuses
    for remaining, (_, headers, _) in zip(range(LIMIT - 1, -1, -1), replies[:LIMIT], strict=True):
        assert headers["ratelimit-limit"] == str(LIMIT)
        assert headers["ratelimit-remaining"] == str(remaining)
        assert headers["ratelimit-reset"] == "1"
        assert headers["ratelimit-policy"] == f"{LIMIT};w=1"
    _, headers, reply = replies[-1]
    assert headers["retry-after"] == "1" and headers["ratelimit-remaining"] == "0"
    assert "the limit is 4 per second" in reply["message"]
    next_window()
    status, _, _ = rest(limited.port, "GET", "/v1/download/jobs", token=OTHER_TOKEN)
    assert status == 200, "each tenant has its own budget"


def test_the_active_jobs_quota_over_rest_is_429_with_retry_after(limited) -> None:
    next_window()
    status, _, first = rest(limited.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]})
    assert status == 200, first
    status, headers, reply = rest(limited.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[1:2]})
    assert status == 429, reply
    assert headers["retry-after"] == "5"
    assert "1 downloads queued or running" in reply["message"]


def test_no_secret_reaches_the_logs(limited) -> None:
    """After calls with good and bad keys and a finished download (its presigned URL handed out,
    its /file redirect followed), the servers' and worker's DEBUG logs hold none of the secrets."""
    next_window()
    status, _, reply = rest(limited.port, "POST", "/v1/download/initiate", {"file_ids": SMALL_IDS[:1]}, token=OTHER_TOKEN)
    assert status == 200, reply
    job_id = reply["job"]["jobId"]
    events = sse(limited.port, f"/v1/download/{job_id}/events", token=OTHER_TOKEN,
                 until=lambda event: event.get("job", {}).get("state") == "JOB_STATE_COMPLETED")
    assert events.headers["ratelimit-limit"] == str(LIMIT), "a stream's headers carry them too"
    url = events.events[-1][1]["job"]["result"]["downloadUrl"]
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    assert fetch(url)
    next_window()
    status, headers, _ = rest(limited.port, "GET", f"/v1/download/{job_id}/file", token=OTHER_TOKEN)
    assert status == 302
    redirect_signature = headers["location"].split("X-Amz-Signature=")[1].split("&")[0]
    rest(limited.port, "GET", "/v1/download/jobs", token=TOKEN[:-4] + "abcd")
    logs = "".join(p.log_path.read_text() for p in (*limited.servers, limited.worker, limited.envoy))
    assert "DEBUG" in logs, "the servers did log at DEBUG"
    secrets = {
        "API key": TOKEN.split("_", 2)[2],
        "other API key": OTHER_TOKEN.split("_", 2)[2],
        "near-miss key": TOKEN.split("_", 2)[2][:-4],
        "URL signature": signature,
        "redirect signature": redirect_signature,
        "S3 secret": limited.settings.s3_secret_access_key,
    }
    leaked = [name for name, secret in secrets.items() if secret in logs]
    assert not leaked, f"in the logs: {leaked}"
