"""REDIS_WAIT_REPLICAS against a real primary and replica: a create is answered once the replica has
it; with no replica to confirm, it answers NotReplicated (UNAVAILABLE), and repeating it with the same
request_id confirms the same job once a replica is back."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from devstack.processes import free_port
from devstack.sentinel import wait_for_replicas
from devstack.services import start_redis
from jobs.connections import multiplexed_redis, redis_client
from jobs.errors import NotReplicated
from jobs.model import F
from jobs.store import JobStore
from server.errors import status_for
from tests.credentials import TENANT


@pytest.fixture
def primary_and_replica(work_dir: Path, request):
    logs = work_dir / "logs"
    primary_port, replica_port = free_port(), free_port()
    name = request.node.name
    primary = start_redis(primary_port, work_dir / f"{name}-primary", logs)
    started = [primary]

    def start_replica() -> None:
        started.append(
            start_redis(
                replica_port, work_dir / f"{name}-replica", logs, extra_args=["--replicaof", "127.0.0.1", str(primary_port)]
            )
        )
        wait_for_replicas(primary_port, 1)

    start_replica()
    yield primary_port, replica_port, start_replica, lambda: started[-1].kill()
    for proc in started:
        proc.stop()


async def test_a_create_waits_for_the_replica_and_says_when_none_confirms(settings, primary_and_replica) -> None:
    primary_port, replica_port, start_replica, kill_replica = primary_and_replica
    s = settings.replace(redis_url=f"redis://127.0.0.1:{primary_port}/0", redis_wait_replicas=1, redis_wait_timeout_ms=300)
    pooled, commands = redis_client(s), multiplexed_redis(s)
    store = JobStore(pooled, s, commands)
    try:
        job, _ = await store.create(TENANT, [70000], request_id="order-1")
        with redis.Redis(port=replica_port, decode_responses=True) as replica:
            assert replica.hget(store.keys.job(job[F.ID]), F.STATE) == "QUEUED", "answered before the replica had it"

        kill_replica()
        with pytest.raises(NotReplicated) as refused:
            await store.create(TENANT, [70007], request_id="order-2")
        assert status_for(refused.value)[0].name == "UNAVAILABLE"
        assert "0 of 1 Redis replicas confirmed" in str(refused.value) and "same request_id" in str(refused.value)

        start_replica()
        again, created = await store.create(TENANT, [70007], request_id="order-2")
        assert not created, "the repeat finds the job the refused call wrote"
    finally:
        await commands.aclose()
        await pooled.aclose()
