"""redis-py's asyncio client on tonio_loop (and, for parity, asyncio's loop)
against a real redis-server that the `redis_server` fixture starts on
127.0.0.1: commands and large values, pipelines, pub/sub, a connection pool
under concurrent load, and blocking commands cancelled half-way.
"""

import asyncio
import os

import pytest

aioredis = pytest.importorskip("redis.asyncio")
from redis.asyncio.retry import Retry  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402


@pytest.fixture
async def client(redis_server, request):
    """A client on its own logical database, flushed before and after."""
    pool = aioredis.BlockingConnectionPool(host=redis_server["host"], port=redis_server["port"],
                                           max_connections=10, timeout=10,
                                           socket_connect_timeout=10)
    r = aioredis.Redis(connection_pool=pool)
    await r.flushdb()
    try:
        yield r
    finally:
        await r.flushdb()
        await r.aclose()
        await pool.disconnect()


async def test_commands_and_large_values(client):
    assert await client.ping() is True
    big = os.urandom(4 << 20)
    assert await client.set("big", big) is True
    assert await client.get("big") == big
    assert await client.incrby("n", 5) == 5
    assert await client.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert await client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    with pytest.raises(aioredis.ResponseError, match="WRONGTYPE"):
        await client.incr("h")


async def test_pipeline_and_transaction(client):
    async with client.pipeline(transaction=True) as pipe:
        for i in range(1000):
            pipe.rpush("list", i)
        pipe.lrange("list", 0, 2)
        pipe.llen("list")
        results = await pipe.execute()
    assert results[-2:] == [[b"0", b"1", b"2"], 1000]


async def test_concurrent_clients_share_the_pool(client):
    async def work(i):
        await client.set(f"k{i}", i)
        return int(await client.get(f"k{i}"))

    assert await asyncio.gather(*[work(i) for i in range(200)]) == list(range(200))
    assert len(client.connection_pool._in_use_connections) == 0
    assert 1 <= len(client.connection_pool._available_connections) <= 10


async def test_pubsub(client):
    async with client.pubsub() as pubsub:
        await pubsub.subscribe("chan")
        message = await pubsub.get_message(timeout=5)
        assert message["type"] == "subscribe"
        for i in range(5):
            assert await client.publish("chan", f"m{i}") == 1
        got = []
        async with asyncio.timeout(10):
            while len(got) < 5:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    got.append(message["data"])
    assert got == [f"m{i}".encode() for i in range(5)]


async def test_blocking_pop_woken_by_another_client(client):
    waiter = asyncio.create_task(client.blpop(["queue"], timeout=10))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await client.rpush("queue", "job")
    assert await asyncio.wait_for(waiter, 10) == (b"queue", b"job")


async def test_cancelled_mid_command(client):
    tasks = [asyncio.create_task(client.blpop([f"never{i}"], timeout=30)) for i in range(3)]
    await asyncio.sleep(0.1)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    # the pool dropped the connections that were mid-command and still works;
    # none of the cancelled BLPOPs steals this value
    await client.rpush("never0", "x")
    async with asyncio.timeout(10):
        assert await client.lpop("never0") == b"x"
        assert await asyncio.gather(*[client.ping() for _ in range(10)]) == [True] * 10


async def test_timeout_while_waiting_for_reply(client, redis_server):
    # no retries: redis-py would otherwise retry the timed-out command
    slow = aioredis.Redis(host=redis_server["host"], port=redis_server["port"],
                          socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(aioredis.TimeoutError):
            await slow.blpop(["nothing"], timeout=5)
        assert asyncio.get_running_loop().time() - started < 2
        assert await slow.ping() is True
    finally:
        await slow.aclose()
