"""Requests the server handles per completed download: ours against the original design's polling.

Computed, not timed: over the original service's job durations (uniform 10-120 s), polling every `interval`
costs one request to start plus one per poll until a poll sees the job done; ours costs one
InitiateDownload and one WatchProgress stream, whatever the duration (plus one per dropped stream)."""

from __future__ import annotations

import math

from bench.report import Row

DURATION_S = (10.0, 120.0)
OURS = 2


def polling_requests(interval_s: float, steps: int = 100_000) -> float:
    low, high = DURATION_S
    durations = (low + (high - low) * (i + 0.5) / steps for i in range(steps))
    return 1 + sum(math.ceil(d / interval_s) for d in durations) / steps


def run() -> list[Row]:
    two, five = polling_requests(2.0), polling_requests(5.0)
    return [
        Row("server requests per completed download (jobs of 10-120 s)",
            f"{OURS} (InitiateDownload + 1 stream)", f"polling every 2 s: {two:.1f}; every 5 s: {five:.1f}",
            f"{two / OURS:.0f} x / {five / OURS:.0f} x fewer", "report both", None),
    ]
