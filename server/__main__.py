"""`python -m server`: the gRPC API process, configured from the environment."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

import uvloop

from jobs.logs import setup_logging
from jobs.settings import ConfigError, Settings
from jobs.tracing import setup_tracing
from server.app import LonghaulServer


async def serve(settings: Settings) -> None:
    server = LonghaulServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    # What the start built (modules, botocore's service models, the contract's descriptors) lives as
    # long as the process. Frozen, the collector no longer walks it: a full collection then stops
    # the loop for about a millisecond instead of 50-80 ms, every call under way waiting it out
    # (BENCHMARKS.md, "Tail latency").
    gc.freeze()
    await stop.wait()
    logging.getLogger("server").info("stopping")
    await server.stop()


def main() -> None:
    setup_logging("server")
    stop_tracing = setup_tracing("server")
    try:
        # uvloop: the same asyncio API with a faster loop; grpc.aio runs on it unchanged.
        uvloop.run(serve(Settings.from_env()))
    except ConfigError as error:
        sys.exit(f"server: {error}")
    finally:
        stop_tracing()  # sends the spans still batched


if __name__ == "__main__":
    main()
