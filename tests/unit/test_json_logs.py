"""LOG_FORMAT=json: one JSON object per line, with the fields of the request or job it concerns, and
secrets redacted as in text lines."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider

from jobs.logs import JsonFormatter, bind


def line(message: str, *args: object, exc_info: object = None) -> dict:
    record = logging.LogRecord("worker.runner", logging.WARNING, __file__, 1, message, args, exc_info)
    return json.loads(JsonFormatter("worker").format(record))


def test_a_line_has_time_level_logger_message_and_process() -> None:
    got = line("job %s retried", "j1")
    assert got.pop("time").endswith("+00:00")
    assert got == {"level": "WARNING", "logger": "worker.runner", "message": "job j1 retried", "process": "worker"}


async def test_each_task_has_the_fields_of_its_own_job() -> None:
    async def run(job_id: str, tenant: str) -> dict:
        bind(job_id=job_id)
        await asyncio.sleep(0)  # the other task binds its own meanwhile
        bind(tenant=tenant)
        return line("working")

    first, second = await asyncio.gather(run("a", "acme"), run("b", "globex"))
    assert (first["job_id"], first["tenant"]) == ("a", "acme")
    assert (second["job_id"], second["tenant"]) == ("b", "globex")
    assert "job_id" not in line("outside any job")


def test_a_line_logged_in_a_span_names_its_trace_and_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("attempt") as span:
        got = line("working")
    context = span.get_span_context()
    assert got["trace_id"] == f"{context.trace_id:032x}" and got["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in line("outside any span")


def test_secrets_are_redacted_in_the_message_and_the_traceback() -> None:
    secret = "lh_0123abcd_supersecretvalue"
    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        got = line("refused Bearer %s", secret, exc_info=sys.exc_info())
    assert secret not in json.dumps(got)
    assert got["message"] == "refused Bearer [REDACTED]"
    assert "ValueError: bad key lh_0123abcd_[REDACTED]" in got["exception"]


def test_an_unknown_format_stops_the_process_with_the_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from jobs.logs import setup_logging; setup_logging('server')"],
        env={"LOG_FORMAT": "yaml", "PATH": "/usr/bin"}, capture_output=True, text=True,
    )
    assert result.returncode == 1 and "LOG_FORMAT='yaml': use text or json" in result.stderr
