"""Logging set-up shared by the process entry points, with secrets redacted from every line.

LOG_FORMAT=json writes one JSON object per line (time, level, logger, message; the trace_id and
span_id of the current span, when tracing is on; and the job_id and tenant of the request or job the
line concerns), for log pipelines; the default is plain text.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from opentelemetry import trace

# What must never reach a log, whoever logs it (our code, grpc, botocore, aiohttp) and wherever it
# hides (a message, an argument, a traceback): bearer tokens, API keys (their id stays, to tell keys
# apart), webhook secrets, JWTs, passwords in URLs, and the signing parts of presigned URLs (the URL stays, to tell
# objects apart).
_SECRETS = [
    (re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"), r"\1[REDACTED]"),
    (re.compile(r"\b(lh_[0-9a-f]{8}_)[A-Za-z0-9_-]+"), r"\1[REDACTED]"),
    (re.compile(r"\b(whsec_)[A-Za-z0-9+/=]+"), r"\1[REDACTED]"),  # webhook signing secrets
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED JWT]"),
    (re.compile(r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)\b(Signature=)[^&\s'\"]+"), r"\1[REDACTED]"),  # SigV2-style presigned URLs
    (re.compile(r"\b([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), r"\1[REDACTED]@"),  # passwords in URLs (REDIS_URL)
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """Redacts the finished line, so tracebacks and third-party messages are covered too."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# What the current request or job is about (job_id, tenant): each RPC and each job runs in a task of
# its own, so a context variable holds exactly its own.
_FIELDS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("log_fields", default=MappingProxyType({}))


def bind(**fields: str) -> None:
    """Adds fields to every line logged from here on in the current task (and the tasks it starts)."""
    _FIELDS.set({**_FIELDS.get(), **fields})


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "process": self._process,
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = trace.format_trace_id(span.trace_id)
            line["span_id"] = trace.format_span_id(span.span_id)
        line.update(_FIELDS.get())
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


_GRPC_BAD_METADATA = "Invalid encoding on "


class ClientMistakes(logging.Filter):
    """gRPC logs metadata that is not UTF-8 (a client's header with a stray byte) as an ERROR with a
    traceback, then serves the call with the value as it is: a client's mistake, not a server error.
    Such a record becomes one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and message.startswith(_GRPC_BAD_METADATA):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            value = message.removeprefix(_GRPC_BAD_METADATA)
            record.msg, record.args = "a client sent metadata that is not UTF-8: %s (served as it is)", (value,)
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(process: str) -> None:
    handler = logging.StreamHandler()
    log_format = os.environ.get("LOG_FORMAT", "text")
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process))
    elif log_format == "text":
        handler.setFormatter(RedactingFormatter(f"%(asctime)s {process}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    else:
        sys.exit(f"{process}: LOG_FORMAT={log_format!r}: use text or json")
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), handlers=[handler])
    # botocore logs every retry and credential lookup at INFO.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiobotocore").setLevel(logging.WARNING)
    logging.getLogger("grpc._cython.cygrpc").addFilter(ClientMistakes())
