"""Shared-mode feedback against a real redis-server and the real PostgreSQL: judgments recorded by two
replicas land exactly once, a dead consumer's entries are taken over, Redis down falls back to the
store, retention purges, and the Feedback RPC of a real gRPC server in shared mode lands in PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.redis_server import RedisServer, redis_server_factory
from tests.test_cache_redis_store import until
from tests.test_ledger_postgres import Database, database
from tests.upstream import ScriptedUpstream
from tierwise.router.config import FeedbackConfig
from tierwise.router.feedback.factory import open_feedback_store
from tierwise.router.feedback.postgres_store import PostgresFeedbackStore
from tierwise.router.feedback.redis_store import RedisFeedbackStore
from tierwise.router.feedback.store import FeedbackRecord, FeedbackTable, SqliteFeedbackStore
from tierwise.v1 import tierwise_pb2 as pb

__all__ = ["database", "redis_server_factory"]

Replicas = Callable[..., RedisFeedbackStore]


def judgment(n: int, tenant: str = "acme", created_at: float | None = None) -> FeedbackRecord:
    return FeedbackRecord(
        request_id=f"req-{n:05d}",
        tenant=tenant,
        score=(n % 11) / 10,
        source="judge",
        comment=f"c{n}",
        metadata={"n": str(n)},
        created_at=time.time() if created_at is None else created_at,
    )


def rows(dsn: str) -> list[tuple[str, int]]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('feedback')").fetchone() == (None,):
            return []  # the store creates its table on its first write
        return conn.execute("SELECT feedback_id, COUNT(*) FROM feedback GROUP BY feedback_id").fetchall()


@pytest_asyncio.fixture
async def replicas(
    database: Database, redis_server_factory: Callable[[], RedisServer]
) -> AsyncIterator[Replicas]:
    database.create()
    redis = redis_server_factory()
    opened: list[RedisFeedbackStore] = []

    def replica(url: str = redis.url, **settings: float) -> RedisFeedbackStore:
        config = FeedbackConfig.model_validate({"claim_idle_s": 60.0, "batch_size": 7} | settings)
        store = RedisFeedbackStore.from_url(url, PostgresFeedbackStore(database.dsn), config)
        opened.append(store)
        return store

    yield replica
    for store in opened:
        await store.aclose()


@pytest.fixture
def own_redis(replicas: Replicas, redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    """A redis-server of the test's own, started after the replicas' default one: the test may kill or
    restart it."""
    return redis_server_factory()


async def drain(*stores: RedisFeedbackStore) -> None:
    while sum([await s.consume_once() for s in stores]):
        pass


@pytest.mark.asyncio
async def test_judgments_from_two_replicas_land_exactly_once(replicas: Replicas, database: Database) -> None:
    a, b = replicas(), replicas()
    sent = [judgment(n) for n in range(40)]
    await asyncio.gather(*(
        (a if i % 2 else b).record(f) for i, f in enumerate(sent)
    ))  # fmt: skip
    assert await a.stream_length() == 40  # accepted by Redis; nothing lands before a worker consumes
    await drain(a, b)
    assert sorted(rows(database.dsn)) == sorted((f.feedback_id, 1) for f in sent)
    assert a.landed + b.landed == 40 and a.landed > 0 and b.landed > 0
    assert (a.fallbacks, b.fallbacks) == (0, 0)
    stored = await b.for_request("acme", "req-00007")
    assert [(f.score, f.comment, dict(f.metadata)) for f in stored] == [(0.7, "c7", {"n": "7"})]
    assert await a.mean_scores([("acme", "req-00003"), ("globex", "req-00003")]) == {
        ("acme", "req-00003"): 0.3
    }


@pytest.mark.asyncio
async def test_a_consumer_killed_before_acknowledging_is_taken_over(
    replicas: Replicas, database: Database
) -> None:
    dead, survivor = replicas(claim_idle_s=0.001), replicas(claim_idle_s=0.001)
    sent = [judgment(n) for n in range(5)]
    for f in sent:
        await dead.record(f)
    taken = await dead.read_new()
    assert len(taken) == 5
    # It wrote part of the batch, then died before XACK: the survivor redelivers all of it.
    dead_table = PostgresFeedbackStore(database.dsn)
    dead_table.write_many([f for _, f in taken[:2] if f is not None])
    dead_table.close()
    assert await survivor.read_new() == []  # delivered to the dead consumer, not to new readers
    await asyncio.sleep(0.01)  # let the entries idle past claim_idle_s (1 ms)
    assert await survivor.consume_once() == 3  # two were already there: written once
    assert sorted(rows(database.dsn)) == sorted((f.feedback_id, 1) for f in sent)
    assert await survivor.consume_once() == 0


@pytest.mark.asyncio
async def test_redis_down_falls_back_to_the_store(
    replicas: Replicas, database: Database, own_redis: RedisServer
) -> None:
    store = replicas(url=own_redis.url)
    own_redis.kill()
    f = judgment(1)
    assert await store.record(f) == f.feedback_id
    assert store.fallbacks == 1
    assert rows(database.dsn) == [(f.feedback_id, 1)]
    assert [r.comment for r in await store.between(0, time.time() + 1)] == ["c1"]


@pytest.mark.asyncio
async def test_the_worker_lands_judgments_and_trims_consumed_stream_entries(
    replicas: Replicas, database: Database, redis_server_factory: Callable[[], RedisServer]
) -> None:
    store = replicas()
    store.start()
    sent = [judgment(n) for n in range(20)]
    for f in sent:
        await store.record(f)

    async def landed() -> bool:
        return len(rows(database.dsn)) == 20

    await until(landed)
    await until(lambda: _stream_trimmed(store))
    assert sorted(rows(database.dsn)) == sorted((f.feedback_id, 1) for f in sent)


async def _stream_trimmed(store: RedisFeedbackStore) -> bool:
    return await store.stream_length() <= 1  # MINID keeps the last delivered entry


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_retention_purges_old_judgments_and_writes_are_idempotent(
    kind: str, tmp_path: Path, database: Database
) -> None:
    table: FeedbackTable
    if kind == "postgres":
        database.create()
        table = PostgresFeedbackStore(database.dsn, retention_s=86400.0)
    else:
        table = SqliteFeedbackStore(tmp_path / "feedback.sqlite3", retention_s=86400.0)
    now = time.time()
    old, fresh = judgment(1, created_at=now - 2 * 86400), judgment(2, created_at=now - 60)
    try:
        assert table.write_many([old, fresh, fresh]) == 2  # a repeated feedback id is stored once
        assert table.write_many([fresh]) == 0
        # The first write also ran the retention purge: the 2-day-old judgment is gone.
        assert [f.feedback_id for f in table.select_between(0, now + 1)] == [fresh.feedback_id]
        assert table.purge_older_than(30, now=now) == 1
    finally:
        table.close()


@pytest.mark.asyncio
async def test_feedback_rpc_in_shared_mode_lands_in_postgres(
    upstream: ScriptedUpstream,
    tmp_path: Path,
    database: Database,
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    database.create()
    redis = redis_server_factory()
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["store"] = {"kind": "redis", "url": redis.url, "path": str(tmp_path / "var")}
    data["ledger"] = {"postgres_dsn": database.dsn}
    async with running_server(build_config(data)) as svc:
        response = await svc.stub.Complete(
            pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="hi")]), metadata=AUTH
        )
        ack = await svc.stub.Feedback(
            pb.FeedbackRequest(request_id=response.request_id, score=0.5, source=pb.FEEDBACK_SOURCE_APP),
            metadata=AUTH,
        )

        metrics = svc.server.service.accounting.metrics

        async def counted() -> bool:  # the consumer counts a judgment once it is written
            return "tierwise_feedback_landed_total 1.0" in metrics.exposition().decode()

        await until(counted)
        assert rows(database.dsn) == [(ack.feedback_id, 1)]
        assert "tierwise_feedback_fallback_total 0.0" in metrics.exposition().decode()
    assert not (tmp_path / "var" / "feedback.sqlite3").exists()


@pytest.mark.asyncio
async def test_without_postgres_judgments_land_in_the_consuming_replicas_sqlite(
    tmp_path: Path, redis_server_factory: Callable[[], RedisServer]
) -> None:
    redis = redis_server_factory()
    data = config_dict(tmp_path / "var", "http://127.0.0.1:9", "http://127.0.0.1:9")
    data["store"] = {"kind": "redis", "url": redis.url, "path": str(tmp_path / "var")}
    data["feedback"] = {"retention_days": 30}
    store = open_feedback_store(build_config(data))
    assert isinstance(store, RedisFeedbackStore)
    try:
        f = judgment(3)
        await store.record(f)

        async def landed() -> bool:
            return [r.feedback_id for r in await store.for_request("acme", f.request_id)] == [f.feedback_id]

        await until(landed)  # the worker open_feedback_store started
    finally:
        await store.aclose()
    reopened = SqliteFeedbackStore(tmp_path / "var" / "feedback.sqlite3")
    assert [r.comment for r in reopened.select_between(0, time.time() + 1)] == ["c3"]
    reopened.close()
    embedded = open_feedback_store(build_config(config_dict(tmp_path / "e", "http://x", "http://y")))
    assert isinstance(embedded, SqliteFeedbackStore)
    await embedded.aclose()


@pytest.mark.asyncio
async def test_the_worker_recovers_after_redis_restarts_empty(
    replicas: Replicas, database: Database, own_redis: RedisServer
) -> None:
    store = replicas(url=own_redis.url)
    store.start()
    first, second, third = judgment(1), judgment(2), judgment(3)
    await store.record(first)

    async def landed(count: int) -> bool:
        return len(rows(database.dsn)) == count

    await until(lambda: landed(1))
    own_redis.restart()  # same port, no data: the stream and the consumer group are gone
    await store.record(second)  # if the pooled connection is found dead: written to the store directly
    await store.record(third)  # a fresh connection: onto the new stream, which has no group yet
    assert store.fallbacks <= 1
    await until(lambda: landed(3))
    assert await store.stream_length() >= 1  # so the worker did read the new stream (recreating its group)
    assert sorted(rows(database.dsn)) == sorted((f.feedback_id, 1) for f in (first, second, third))
