"""REDIS_WAIT_REPLICAS against a real primary and replica: a create is answered once the replica has
it; when the replica does not confirm in time, NotReplicated (UNAVAILABLE), and repeating the create
with the same request_id confirms the same job once the replica answers again; with no replica
connected, or right after a WAIT fell short, ReplicasUnavailable (UNAVAILABLE) before anything is
written."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import redis

from devstack.processes import free_port
from devstack.sentinel import replicas_of, wait_for_replicas
from devstack.services import start_redis
from jobs.connections import multiplexed_redis, redis_client
from jobs.errors import NotReplicated, ReplicasUnavailable
from jobs.model import F
from jobs.store import JobStore
from server.errors import status_for
from tests.credentials import TENANT


@pytest.fixture
def primary_and_replica(work_dir: Path, request):
    logs = work_dir / "logs"
    primary_port, replica_port = free_port(), free_port()
    name = request.node.name
    # Redis otherwise waits 5 s before it sends a new replica its copy.
    primary = start_redis(primary_port, work_dir / f"{name}-primary", logs, extra_args=["--repl-diskless-sync-delay", "0"])
    started = [primary]

    def start_replica() -> None:
        started.append(
            start_redis(
                replica_port, work_dir / f"{name}-replica", logs, extra_args=["--replicaof", "127.0.0.1", str(primary_port)]
            )
        )
        wait_for_replicas(primary_port, 1)

    def signal_replica(signum: int) -> None:
        assert started[-1].proc is not None
        os.kill(started[-1].proc.pid, signum)

    start_replica()
    yield primary_port, replica_port, signal_replica
    signal_replica(signal.SIGCONT)
    for proc in started:
        proc.stop()


async def test_a_create_waits_for_the_replica_and_says_when_none_confirms(settings, primary_and_replica) -> None:
    primary_port, replica_port, signal_replica = primary_and_replica
    s = settings.replace(redis_url=f"redis://127.0.0.1:{primary_port}/0", redis_wait_replicas=1, redis_wait_timeout_ms=300)
    pooled, commands = redis_client(s), multiplexed_redis(s)
    store = JobStore(pooled, s, commands)
    try:
        job, _ = await store.create(TENANT, [70000], request_id="order-1")
        with redis.Redis(port=replica_port, decode_responses=True) as replica:
            assert replica.hget(store.keys.job(job[F.ID]), F.STATE) == "QUEUED", "answered before the replica had it"

        signal_replica(signal.SIGSTOP)  # connected, but confirming nothing
        with pytest.raises(NotReplicated) as refused:
            await store.create(TENANT, [70007], request_id="order-2")
        assert status_for(refused.value)[0].name == "UNAVAILABLE"
        assert "0 of 1 Redis replicas confirmed" in str(refused.value) and "same request_id" in str(refused.value)
        # The next create does not wait behind another WAIT that would fall short: refused at once.
        with pytest.raises(ReplicasUnavailable) as at_once:
            await store.create(TENANT, [70008], request_id="order-3")
        assert status_for(at_once.value)[0].name == "UNAVAILABLE" and "nothing was written" in str(at_once.value)

        signal_replica(signal.SIGCONT)
        fresh = JobStore(pooled, s, commands)  # past the moment of refusals
        again, created = await fresh.create(TENANT, [70007], request_id="order-2")
        assert not created and again[F.ID], "the repeat finds the job the refused call wrote"
        _, created = await fresh.create(TENANT, [70008], request_id="order-3")
        assert created, "the call refused at once had written nothing"

        signal_replica(signal.SIGKILL)
        while replicas_of(primary_port) != 0:
            await asyncio.sleep(0.05)
        with pytest.raises(ReplicasUnavailable) as none_connected:
            await JobStore(pooled, s, commands).create(TENANT, [70009], request_id="order-4")
        assert "(0 connected" in str(none_connected.value)
    finally:
        await commands.aclose()
        await pooled.aclose()
