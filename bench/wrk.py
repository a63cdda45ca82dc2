"""wrk, a load generator written in C, for latency under load over HTTP. It keeps its connections
busy from one event loop per thread at a fraction of a core, so the latency it records is the
service's: a Python load process on these two cores records its own waits for the CPU as well (see
BENCHMARKS.md, "Tail latency")."""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

THREADS = 2

# wrk calls done() once at the end with every request's latency (microseconds); it prints them as
# one JSON line, so nothing depends on the layout of wrk's own report.
_DONE = """
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "failed": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.status + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class WrkResult:
    rate: float  # requests per second
    failed: int  # socket errors, timeouts and replies outside 2xx/3xx
    p50_s: float
    p90_s: float
    p99_s: float


def _lua_string(text: str) -> str:
    """A Lua long string: no escapes to get right, whatever the text holds (but its closing mark)."""
    if "]==]" in text:
        raise ValueError("text that holds ]==] cannot be a Lua long string here")
    return f"[==[{text}]==]"


def _script(headers: tuple[tuple[str, str], ...], body: bytes) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}" for name, value in headers]
    return "\n".join(lines) + "\n" + _DONE


def wrk(url: str, connections: int, duration_s: float, headers: tuple[tuple[str, str], ...], json_body: bytes) -> WrkResult:
    """POSTs `json_body` from `connections` connections, each sending its next request when the last
    is answered, for `duration_s` (whole seconds, at least one: wrk's unit); what it measured."""
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "load.lua"
        script.write_text(_script((*headers, ("Content-Type", "application/json")), json_body))
        argv = [
            "wrk", "--threads", str(THREADS), "--connections", str(connections),
            "--duration", f"{max(1, math.ceil(duration_s))}s", "--script", str(script), url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=True)
    reports = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not reports:
        raise RuntimeError(f"wrk printed no figures: {done.stderr.strip() or done.stdout.strip()}")
    figures = json.loads(reports[0])
    return WrkResult(
        rate=figures["requests"] / (figures["duration_us"] / 1e6),
        failed=figures["failed"],
        p50_s=figures["p50_us"] / 1e6,
        p90_s=figures["p90_us"] / 1e6,
        p99_s=figures["p99_us"] / 1e6,
    )
