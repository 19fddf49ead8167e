"""asyncpg on tonio_loop (and, for parity, asyncio's loop) against a real
PostgreSQL server that the `postgres` fixture starts on 127.0.0.1: queries
and types, transactions, COPY, LISTEN/NOTIFY, a pool under concurrent load,
and queries cancelled half-way (by a timeout and by cancelling the task).
"""

import asyncio
import datetime
import decimal
import uuid

import pytest

asyncpg = pytest.importorskip("asyncpg")


@pytest.fixture
async def connect(postgres):
    """connect(**kwargs): a new connection, closed after the test."""
    connections = []

    async def connect(**kwargs):
        conn = await asyncpg.connect(**postgres, timeout=15, **kwargs)
        connections.append(conn)
        return conn

    yield connect
    for conn in connections:
        await conn.close(timeout=5)


@pytest.fixture
async def pool(postgres):
    async with asyncpg.create_pool(**postgres, min_size=2, max_size=5, timeout=15) as pool:
        yield pool


async def test_queries_and_types(connect):
    conn = await connect()
    u = uuid.uuid4()
    row = await conn.fetchrow(
        "SELECT $1::int AS i, $2::text AS t, $3::numeric AS n, $4::uuid AS u, "
        "$5::timestamptz AS ts, $6::bytea AS b, $7::int[] AS a, NULL AS nothing",
        42, "żółw", decimal.Decimal("1.25"), u,
        datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        b"\x00\xff" * 1000, [1, 2, 3])
    assert dict(row) == {
        "i": 42, "t": "żółw", "n": decimal.Decimal("1.25"), "u": u,
        "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "b": b"\x00\xff" * 1000, "a": [1, 2, 3], "nothing": None}
    # a large result arrives in many reads
    rows = await conn.fetch("SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    assert [r[0] for r in rows] == list(range(1, 20001))


async def test_errors_are_postgres_exceptions(connect):
    conn = await connect()
    with pytest.raises(asyncpg.UndefinedTableError, match='relation "no_such_table"'):
        await conn.execute("SELECT * FROM no_such_table")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await conn.fetchval("SELECT 1 / $1::int", 0)
    assert await conn.fetchval("SELECT 1") == 1      # the connection is fine


async def test_transaction_rollback_and_prepared_statements(connect):
    conn = await connect()
    await conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)")
    insert = await conn.prepare("INSERT INTO t VALUES ($1, $2)")
    await insert.executemany([(i, f"v{i}") for i in range(100)])
    with pytest.raises(asyncpg.UniqueViolationError):
        async with conn.transaction():
            await conn.execute("DELETE FROM t WHERE id < 50")
            await insert.fetch(99, "duplicate")
    assert await conn.fetchval("SELECT count(*) FROM t") == 100
    async with conn.transaction():
        cursor_rows = [r["id"] async for r in conn.cursor("SELECT id FROM t ORDER BY id",
                                                          prefetch=7)]
    assert cursor_rows == list(range(100))


async def test_copy_in_and_out(connect):
    conn = await connect()
    await conn.execute("CREATE TEMP TABLE c (id int, payload text)")
    records = [(i, "p" * (1 + i % 300)) for i in range(5000)]
    await conn.copy_records_to_table("c", records=records)
    chunks = []

    async def sink(chunk):
        chunks.append(chunk)

    await conn.copy_from_query("SELECT * FROM c ORDER BY id", output=sink, format="csv")
    lines = b"".join(chunks).decode().splitlines()
    assert lines == [f"{i},{p}" for i, p in records]


async def test_listen_notify(connect):
    listener, notifier = await connect(), await connect()
    got = asyncio.Queue()
    await listener.add_listener("news", lambda conn, pid, channel, payload: got.put_nowait(
        (pid, channel, payload)))
    for i in range(3):
        await notifier.execute(f"NOTIFY news, 'item {i}'")
    received = [await asyncio.wait_for(got.get(), 10) for _ in range(3)]
    pid = notifier.get_server_pid()
    assert received == [(pid, "news", f"item {i}") for i in range(3)]


async def test_pool_under_concurrent_load(pool):
    async def work(i):
        async with pool.acquire() as conn:
            return await conn.fetchval("SELECT $1::int * 2 FROM pg_sleep(0.01)", i)

    results = await asyncio.gather(*[work(i) for i in range(100)])
    assert results == [i * 2 for i in range(100)]
    assert pool.get_size() <= 5
    # pool.fetchval and friends acquire and release by themselves
    assert await asyncio.gather(*[pool.fetchval("SELECT $1::int", i) for i in range(20)]) \
        == list(range(20))


async def _backend_state(conn, pid):
    return await conn.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)


async def _in_pg_sleep(conn, pid):
    """pid runs pg_sleep() now. Its state alone does not tell: it is
    'active' from the Parse of an extended query on, and a cancel that lands
    while asyncpg prepares leaves the statement unexecuted (and the backend
    'active', waiting for the Sync that never comes)."""
    return await conn.fetchval(
        "SELECT wait_event = 'PgSleep' FROM pg_stat_activity WHERE pid = $1", pid)


async def _wait_idle(observer, pid):
    """The server finished with whatever pid ran (state 'idle')."""
    async with asyncio.timeout(10):
        while await _backend_state(observer, pid) != "idle":
            await asyncio.sleep(0.02)


async def test_query_timeout_cancels_it_on_the_server(connect):
    conn, observer = await connect(), await connect()
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.TimeoutError):
        await conn.fetchval("SELECT pg_sleep(30)", timeout=0.2)
    # asyncpg sent a cancel request: the server stops the query
    await _wait_idle(observer, conn.get_server_pid())
    assert asyncio.get_running_loop().time() - started < 10
    assert await conn.fetchval("SELECT 'still usable'") == "still usable"


async def test_cancelled_task_mid_query(connect):
    conn, observer = await connect(), await connect()
    task = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
    async with asyncio.timeout(10):
        while not await _in_pg_sleep(observer, conn.get_server_pid()):
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_idle(observer, conn.get_server_pid())
    assert await conn.fetchval("SELECT 7") == 7


async def test_pool_survives_cancellations_mid_query(pool):
    async def sleepy():
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep(30)")

    tasks = [asyncio.create_task(sleepy()) for _ in range(5)]
    await asyncio.sleep(0.3)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    # every connection came back to the pool and works
    async with asyncio.timeout(10):
        got = await asyncio.gather(*[pool.fetchval("SELECT $1::int", i) for i in range(10)])
    assert got == list(range(10))
