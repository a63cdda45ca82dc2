"""`python -m worker`: one worker process, configured from the environment."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

import uvloop

from jobs.logs import setup_logging
from jobs.metrics import serve_metrics
from jobs.settings import ConfigError, Settings
from jobs.tracing import setup_tracing
from worker.liveness import keep_touching
from worker.runner import WorkerRunner


async def work(settings: Settings) -> None:
    runner = WorkerRunner(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = await serve_metrics(settings.metrics_listen) if settings.metrics_listen else None
    await runner.start()
    # As in the server: what the start built (botocore's service models above all) lives as long as
    # the process, and frozen, a full collection no longer walks it while jobs wait.
    gc.freeze()
    alive = asyncio.create_task(keep_touching(Path(settings.liveness_file))) if settings.liveness_file else None
    await stop.wait()
    logging.getLogger("worker").info("stopping")
    await runner.stop()
    if alive is not None:
        alive.cancel()
    if metrics is not None:
        await metrics.cleanup()


def main() -> None:
    setup_logging("worker")
    stop_tracing = setup_tracing("worker")
    try:
        # uvloop, as in the server: the claims, progress writes and results of short jobs are loop-bound.
        uvloop.run(work(Settings.from_env()))
    except ConfigError as error:
        sys.exit(f"worker: {error}")
    finally:
        stop_tracing()  # sends the spans still batched


if __name__ == "__main__":
    main()
