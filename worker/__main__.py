"""`python -m worker`: one worker process, configured from the environment."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from jobs.logs import setup_logging
from jobs.settings import ConfigError, Settings
from worker.runner import WorkerRunner


async def work(settings: Settings) -> None:
    runner = WorkerRunner(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runner.start()
    await stop.wait()
    logging.getLogger("worker").info("stopping")
    await runner.stop()


def main() -> None:
    setup_logging("worker")
    try:
        asyncio.run(work(Settings.from_env()))
    except ConfigError as error:
        sys.exit(f"worker: {error}")


if __name__ == "__main__":
    main()
