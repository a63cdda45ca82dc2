"""`python -m bench` (make bench): every benchmark against a throwaway stack, one table at the end.

    --smoke   tiny sizes and short runs (seconds): checks the harness works, figures mean little
    --only    run only the named benchmarks (e.g. --only unary notify)
    --json    also write the rows to this file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import durability, envoy_streams, finished, idle, memory, notify, observability, polling, queue, tail, transfer, unary
from bench.env import BenchEnv, bench_env
from bench.report import Row, table


@dataclass(frozen=True)
class Sizes:
    duration_s: float
    watched_jobs: int
    idle_streams: int
    envoy_streams: int
    start_samples: int
    queue_jobs: int
    memory_jobs: int
    memory_finished_jobs: int
    small_mb: int
    large_mb: int
    # Rates that are compared with a baseline are measured this many times, taking turns with it.
    rounds: int


FULL = Sizes(
    5.0, watched_jobs=1_000, idle_streams=50_000, envoy_streams=2_000, start_samples=100, queue_jobs=3_000, memory_jobs=100_000,
    memory_finished_jobs=5_000, small_mb=10, large_mb=1_000, rounds=3,
)
SMOKE = Sizes(
    0.5, watched_jobs=20, idle_streams=40, envoy_streams=20, start_samples=5, queue_jobs=50, memory_jobs=200,
    memory_finished_jobs=50, small_mb=1, large_mb=20, rounds=1,
)

BENCHMARKS: dict[str, Callable[[BenchEnv, Sizes], list[Row]]] = {
    "unary": lambda env, sizes: unary.run(env, sizes.duration_s, sizes.rounds),
    "finished": lambda env, sizes: finished.run(env, sizes.duration_s, sizes.rounds),
    "tail": lambda env, sizes: tail.run(env, sizes.duration_s),
    "notify": lambda env, sizes: notify.run(env, sizes.watched_jobs, sizes.duration_s),
    "idle": lambda env, sizes: idle.run(env, sizes.idle_streams, sizes.duration_s),
    "envoy_streams": lambda env, sizes: envoy_streams.run(env, sizes.envoy_streams, sizes.duration_s * 0.6),
    "queue": lambda env, sizes: queue.run(env, sizes.start_samples, sizes.queue_jobs, sizes.rounds),
    "transfer": lambda env, sizes: transfer.run(env, sizes.small_mb, sizes.large_mb, sizes.rounds),
    "polling": lambda env, sizes: polling.run(),
    "memory": lambda env, sizes: memory.run(env, sizes.memory_jobs, sizes.memory_finished_jobs),
    "observability": lambda env, sizes: observability.run(env, sizes.duration_s, sizes.rounds),
    "durability": lambda env, sizes: durability.run(env, sizes.duration_s, sizes.rounds),
}


def machine() -> str:
    return f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    rows: list[Row] = []
    for name in args.only or BENCHMARKS:
        started = time.monotonic()
        with bench_env() as env:
            rows += BENCHMARKS[name](env, sizes)
        print(f"[{name}: {time.monotonic() - started:.0f} s]", file=sys.stderr, flush=True)
    print(f"Longhaul benchmarks{' (smoke run)' if args.smoke else ''} on {machine()}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": machine(), "smoke": args.smoke, "rows": [r.as_dict() for r in rows]}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
