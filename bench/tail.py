"""Tail latency: REST InitiateDownload through Envoy at 64 connections, p99 against p50, and where
the time of the slow calls goes. The load comes from wrk (bench/wrk.py). Envoy times each request
downstream (all of it) and upstream (the server's answer); the server times its handlers
(grpc_server_handling_seconds), how late its event loop runs what is ready (event_loop_lag_seconds)
and its garbage collections (python_gc_pause_seconds). The same load is then sent from two Python
asyncio processes, the load generator of the other benchmarks, to show what a load generator
sharing the two cores adds to the tail it records.
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
from bench.wrk import wrk

IN_FLIGHT = 64
LOAD_PROCESSES = 2  # the Python comparison's
_WARMUP_S = 1
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
    url = f"http://{envoy}/v1/download/initiate"
    wrk(url, IN_FLIGHT, _WARMUP_S, env.metadata, _BODY)
    before = _scrape(metrics_url)
    load = wrk(url, IN_FLIGHT, duration_s, env.metadata, _BODY)
    after = _scrape(metrics_url)
    if load.failed:
        raise RuntimeError(f"{load.failed} REST creates failed during the benchmark")
    time.sleep(2 * _ENVOY_FLUSH_S)  # Envoy merges its histograms at each stats flush
    downstream = _envoy_quantiles(admin, "http.public.downstream_rq_time")
    upstream = _envoy_quantiles(admin, "cluster.longhaul_grpc.upstream_rq_time")
    handler_p99 = _quantile(before, after, "grpc_server_handling_seconds", {"grpc_method": "InitiateDownload"}, 0.99)
    lag_p99 = _quantile(before, after, "event_loop_lag_seconds", {}, 0.99)
    longest_gc = _quantile(before, after, "python_gc_pause_seconds", {"generation": "2"}, 1.0)
    python_rate, latencies, errors = http(HttpLoad(url, IN_FLIGHT, duration_s, env.metadata, json_body=_BODY), LOAD_PROCESSES)
    if errors:
        raise RuntimeError(f"{errors} REST creates failed during the benchmark")
    python_p50, python_p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    p50, p99 = load.p50_s * 1000, load.p99_s * 1000
    return [
        Row(
            f"REST InitiateDownload through Envoy, {IN_FLIGHT} connections (wrk): p99 against p50",
            f"p50 {p50:.1f} ms, p90 {load.p90_s * 1000:.1f} ms, p99 {p99:.1f} ms ({load.rate:,.0f}/s)",
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
        Row(
            f"the same load from {LOAD_PROCESSES} Python asyncio processes (aiohttp), as the load generator records it",
            f"p50 {python_p50:.1f} ms, p99 {python_p99:.1f} ms ({python_rate:,.0f}/s)",
            "",
            f"{python_p99 / python_p50:.1f} x",
            "(report)",
            None,
        ),
    ]
