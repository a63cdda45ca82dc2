"""`python -m bench.bare_watch_server PORT`: the floor for an idle stream. A grpc.aio server (on uvloop,
with our server's options) whose WatchProgress sends one snapshot and then waits forever: no Redis,
no interceptors, no inbox. What one of our idle streams costs beyond this is ours; the rest is gRPC's."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
import uvloop

from longhaul.download.v1 import download_pb2 as pb
from longhaul.download.v1 import download_pb2_grpc as pb_grpc
from server.app import SERVER_OPTIONS


class _Bare(pb_grpc.DownloadServiceServicer):
    async def WatchProgress(self, request: pb.WatchProgressRequest, context: Any) -> Any:
        yield pb.WatchProgressResponse(type=pb.EVENT_TYPE_SNAPSHOT, seq=1)
        await asyncio.get_running_loop().create_future()


async def _serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_DownloadServiceServicer_to_server(_Bare(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(_serve(int(sys.argv[1])))
