"""Secrets never reach a log line: what the redacting formatter removes, and what it keeps."""

from __future__ import annotations

import logging

from jobs.logs import RedactingFormatter, redact

KEY = "lh_0a1b2c3d_" + "s3cr3tS3cr3t-_" * 3 + "x"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
URL = (
    "http://127.0.0.1:8333/artifacts/tenants/acme/j/longhaul-j.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=longhaul%2F20261126%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261126T000000Z"
    "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef"
)


def test_tokens_keys_jwts_and_signatures_are_redacted_and_the_rest_kept() -> None:
    line = redact(f"authorization: Bearer {KEY}; token {JWT}; key {KEY}; url {URL}")
    for secret in (KEY[12:], JWT, "0123456789abcdef", "longhaul%2F20261126"):
        assert secret not in line
    assert "lh_0a1b2c3d_[REDACTED]" in line, "the key id stays, to tell keys apart"
    assert "/artifacts/tenants/acme/j/longhaul-j.zip?" in line and "X-Amz-Expires=900" in line


def test_passwords_in_urls_are_redacted_and_the_address_kept() -> None:
    line = redact("connecting to redis://:hunter2@redis-0:6379/0 and rediss://app:s3cr3t@redis-1:6380/0")
    assert "hunter2" not in line and "s3cr3t" not in line
    assert "redis://:[REDACTED]@redis-0:6379/0" in line and "rediss://app:[REDACTED]@redis-1:6380/0" in line
    assert redact("http://127.0.0.1:8333/artifacts") == "http://127.0.0.1:8333/artifacts", "a port is no password"


def test_the_formatter_covers_arguments_and_tracebacks() -> None:
    formatter = RedactingFormatter("%(message)s")
    try:
        raise ValueError(f"could not use {KEY}")
    except ValueError as error:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "calling %s with %s", (URL, JWT), (type(error), error, error.__traceback__)
        )
    text = formatter.format(record)
    assert "Traceback" in text
    for secret in (KEY[12:], JWT, "0123456789abcdef"):
        assert secret not in text
