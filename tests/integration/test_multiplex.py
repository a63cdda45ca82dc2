"""The multiplexed Redis connection (jobs/multiplex.py) against a real Redis: every concurrent
command gets its own reply, errors and lost connections behave as they do with redis-py."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from devstack.processes import free_port
from jobs.connections import redis_client
from jobs.multiplex import MultiplexedRedis


@pytest.fixture
async def mux(settings):
    client = MultiplexedRedis(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis(settings):
    client = redis_client(settings)
    yield client
    await client.aclose()


async def test_concurrent_commands_each_get_their_own_reply(mux) -> None:
    prefix = uuid.uuid4().hex
    await asyncio.gather(*(mux.execute_command("SET", f"{prefix}:{i}", f"value-{i}") for i in range(2000)))
    values = await asyncio.gather(*(mux.get(f"{prefix}:{i}") for i in range(2000)))
    assert values == [f"value-{i}" for i in range(2000)]


async def test_an_error_reply_raises_and_leaves_the_connection_in_step(mux) -> None:
    key = uuid.uuid4().hex
    await mux.execute_command("SET", key, "a string")
    results = await asyncio.gather(mux.hgetall(key), mux.get(key), return_exceptions=True)
    assert isinstance(results[0], ResponseError) and "WRONGTYPE" in str(results[0])
    assert results[1] == "a string"


async def test_hashes_read_as_dicts_and_missing_keys_as_none(mux, redis) -> None:
    key = uuid.uuid4().hex
    await redis.hset(key, mapping={"state": "QUEUED", "seq": "1", "message": "é and \n"})
    assert await mux.hgetall(key) == {"state": "QUEUED", "seq": "1", "message": "é and \n"}
    assert await mux.hget(key, "seq") == "1"
    assert await mux.hgetall(f"{key}:missing") == {}
    assert await mux.get(f"{key}:missing") is None


async def test_a_script_is_sent_again_when_redis_has_forgotten_it(mux, redis) -> None:
    script = mux.register_script(f"return {{KEYS[1], ARGV[1], '{uuid.uuid4().hex}'}}")
    first = await script(keys=["k"], args=[7])
    await redis.script_flush()
    assert await script(keys=["k"], args=[7]) == first
    assert first[:2] == ["k", "7"]


async def test_the_database_in_the_url_is_used(settings, redis) -> None:
    other_db = settings.redis_url.rsplit("/", 1)[0] + "/3"
    client = MultiplexedRedis(other_db)
    key = uuid.uuid4().hex
    try:
        await client.execute_command("SET", key, "in db 3")
        assert await redis.get(key) is None
        assert await client.get(key) == "in db 3"
    finally:
        await client.execute_command("DEL", key)
        await client.aclose()


async def test_a_killed_connection_is_replaced_and_the_command_retried(mux, redis) -> None:
    key = uuid.uuid4().hex
    await mux.execute_command("SET", key, "kept")
    await mux.execute_command("CLIENT", "SETNAME", "mux-under-test")
    killed = await redis.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal", "ID",
                                         await mux.execute_command("CLIENT", "ID"))
    assert killed == 1
    assert await mux.get(key) == "kept"


async def test_an_unreachable_redis_fails_with_a_connection_error() -> None:
    client = MultiplexedRedis(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConnectionError, match="cannot connect to Redis"):
        await client.get("anything")
    await client.aclose()


async def test_a_command_redis_never_answers_times_out_and_the_next_one_works(settings) -> None:
    client = MultiplexedRedis(settings.redis_url, timeout_s=0.2)
    key = uuid.uuid4().hex
    try:
        # BLPOP blocks the connection for 5 s; every attempt times out, then the client gives up.
        with pytest.raises(TimeoutError, match="did not answer"):
            await client.execute_command("BLPOP", key, 5)
        assert await client.get(key) is None
    finally:
        await client.aclose()


async def test_a_redis_still_loading_its_data_is_waited_for() -> None:
    # A restarted Redis answers LOADING (the command did not run) until its data is read back.
    # A stand-in server, since a real Redis loads a test-sized AOF in a millisecond.
    loading_replies = 2

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal loading_replies
        with contextlib.suppress(asyncio.IncompleteReadError):  # the client closed
            while await reader.readuntil(b"$1\r\nk\r\n"):  # the end of GET k
                if loading_replies:
                    loading_replies -= 1
                    writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                else:
                    writer.write(b"$4\r\nkept\r\n")
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = MultiplexedRedis(f"redis://127.0.0.1:{port}/0")
    try:
        assert await client.get("k") == "kept"
        assert loading_replies == 0
    finally:
        await client.aclose()
        server.close()
