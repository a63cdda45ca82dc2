"""The benchmark harness, run at smoke sizes so it never rots. Its figures are not judged here:
targets belong to `make bench` on a quiet machine, not to a test on a shared one."""

from __future__ import annotations

import json
import subprocess
import sys

from devstack.services import ROOT


def test_every_benchmark_runs_and_reports(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    whats = " / ".join(row["what"] for row in rows)
    for expected in ("InitiateDownload/s", "GetStatus/s", "through Envoy", "p99 against p50", "watcher has it",
                     "idle WatchProgress", "Redis connections", "idle worker", "trivial jobs/s", "archive + upload",
                     "peak RSS", "requests per completed download"):
        assert expected in whats, f"no {expected!r} row in: {whats}"
    assert all(row["ours"] for row in rows)
    assert "Longhaul benchmarks (smoke run)" in result.stdout
