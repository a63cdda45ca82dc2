"""Tail latency: REST InitiateDownload through Envoy at 64 connections, p99 against p50, and where
the time of the slow calls goes. Envoy times each request downstream (all of it) and upstream (the
server's answer); the server times its handlers (grpc_server_handling_seconds), how late its event
loop runs what is ready (event_loop_lag_seconds) and its garbage collections (python_gc_pause_seconds).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

from bench.env import BenchEnv
from bench.envoy_streams import admin_get
from bench.loadgen import HttpLoad, http
from bench.report import Row, percentile

IN_FLIGHT = 64
LOAD_PROCESSES = 2
_ENVOY_FLUSH_S = 0.5  # how often the bench's Envoy merges its histograms (its default: 5 s)
_BODY = json.dumps({"file_ids": [70000, 70007, 70014]}).encode()


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"}


def _quantile(before: dict[str, float], after: dict[str, float], metric: str, labels: dict[str, str], q: float) -> str:
    """The bucket bound under which `q` of the observations made between two scrapes fall."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    counts = []
    for name, value in after.items():
        if not name.startswith(metric + "_bucket{"):
            continue
        pairs = set(name[len(metric) + len("_bucket{") : -1].split(","))
        le = next(pair for pair in pairs if pair.startswith("le="))[4:-1]
        if wanted <= pairs:
            counts.append((float("inf") if le == "+Inf" else float(le), value - before.get(name, 0.0)))
    counts.sort()
    total = counts[-1][1] if counts else 0
    if not total:
        return "none observed"
    bound = next(le for le, count in counts if count >= q * total)
    return f"<= {bound * 1000:g} ms" if bound != float("inf") else "over the last bucket"


def _envoy_quantiles(admin: str, name: str) -> tuple[float, float]:
    """(p50, p99) in ms of one of Envoy's histograms, over all it has seen (the cumulative figures;
    the others are the last flush interval's)."""
    line = next(line for line in admin_get(admin, f"/stats?filter={name}").splitlines() if line.startswith(name + ":"))
    values = dict(re.findall(r"P([\d.]+)\((?:[\d.]+|nan),([\d.]+|nan)\)", line))
    return float(values["50"]), float(values["99"])


def run(env: BenchEnv, duration_s: float) -> list[Row]:
    server, address = env.start_server()
    _, envoy, admin = env.start_envoy_with_admin(address, stats_flush_s=_ENVOY_FLUSH_S)
    metrics_url = f"http://{server.env['HTTP_LISTEN']}/metrics" if server.env else ""
    before = _scrape(metrics_url)
    load = HttpLoad(f"http://{envoy}/v1/download/initiate", IN_FLIGHT, duration_s, env.metadata, json_body=_BODY)
    rate, latencies, errors = http(load, LOAD_PROCESSES)
    if errors:
        raise RuntimeError(f"{errors} REST creates failed during the benchmark")
    after = _scrape(metrics_url)
    time.sleep(2 * _ENVOY_FLUSH_S)  # Envoy merges its histograms at each stats flush
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    downstream = _envoy_quantiles(admin, "http.public.downstream_rq_time")
    upstream = _envoy_quantiles(admin, "cluster.longhaul_grpc.upstream_rq_time")
    handler_p99 = _quantile(before, after, "grpc_server_handling_seconds", {"grpc_method": "InitiateDownload"}, 0.99)
    lag_p99 = _quantile(before, after, "event_loop_lag_seconds", {}, 0.99)
    longest_gc = _quantile(before, after, "python_gc_pause_seconds", {"generation": "2"}, 1.0)
    return [
        Row(
            f"REST InitiateDownload through Envoy, {IN_FLIGHT} connections: p99 against p50",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({rate:,.0f}/s)",
            "",
            f"{p99 / p50:.1f} x",
            "<= 3 x",
            p99 <= 3 * p50,
        ),
        Row(
            "where the slow calls' time goes (p50 / p99)",
            f"Envoy, all of it: {downstream[0]:.1f} / {downstream[1]:.1f} ms; the server's answer as Envoy waits for it: "
            f"{upstream[0]:.1f} / {upstream[1]:.1f} ms; the handler itself: p99 {handler_p99}",
            f"the server's event loop late by: p99 {lag_p99}; its longest full collection: {longest_gc}",
            "",
            "(report)",
            None,
        ),
    ]
