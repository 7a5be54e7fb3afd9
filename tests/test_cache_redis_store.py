"""The Redis entry store against a real, private redis-server: the SQLite store's behaviours, Redis's own
expiry at the entry's absolute time, the change feed, eviction by several replicas, outages, auth and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from tests.redis_server import RedisServer, redis_server_factory, require_redis_server
from tests.test_cache_store import check_vectors_of, insert_and_check_tenant_filter, make_entry
from tierwise.cache.entry_state import EntryUsage, EvictionOrder, EvictionPlan
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.redis_store import RedisEntryStore
from tierwise.cache.replication import ChangeOp
from tierwise.cache.store import CacheEntry, EntryFilter

__all__ = ["redis_server_factory"]

POLL_TIMEOUT_S = 10.0


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = POLL_TIMEOUT_S) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)  # polling a condition, bounded by the deadline


def open_store(url: str, **options: Any) -> RedisEntryStore:
    # A generous timeout: a loaded test machine must not look like an outage.
    options = {"timeout_s": 2.0, "block_s": 0.2, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2} | options
    return RedisEntryStore.from_url(url, **options)


def live_entry(name: str, age_s: float = 0.0, ttl: float = 3600.0, **fields: Any) -> CacheEntry:
    """An entry created ``age_s`` ago on the real clock: Redis expires it at its absolute ``expires_at``."""
    return make_entry(name, created_at=time.time() - age_s, ttl=ttl, **fields)


@pytest.fixture
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest_asyncio.fixture
async def store(redis: RedisServer) -> AsyncIterator[RedisEntryStore]:
    opened = open_store(redis.url)
    yield opened
    await opened.aclose()


async def raw_keys(redis: RedisServer) -> list[str]:
    client = Redis.from_url(redis.url)
    try:
        return sorted(key.decode() for key in await client.keys("*"))
    finally:
        await client.aclose()


# -- the EntryStore behaviours of the SQLite store -------------------------------------------------------


@pytest.mark.asyncio
async def test_round_trip_seen_by_another_store_object(redis: RedisServer, store: RedisEntryStore) -> None:
    entry = live_entry("a")
    assert await store.insert(entry) == []
    other = open_store(redis.url)  # another replica's connection
    try:
        loaded = (await other.get([entry.entry_id, "0000000000000000"]))[entry.entry_id]
        assert loaded.response == entry.response
        assert (loaded.query_text, loaded.exact_key, loaded.embedder_key) == (
            entry.query_text,
            entry.exact_key,
            entry.embedder_key,
        )
        assert (loaded.created_at, loaded.expires_at, loaded.last_hit_at) == (
            entry.created_at,
            entry.expires_at,
            None,
        )
        np.testing.assert_array_equal(loaded.embedding, entry.embedding)
        assert loaded.embedding.dtype == np.float32
        by_key = await other.get_by_exact_key("exact-a")
        assert by_key is not None and by_key.entry_id == entry.entry_id
        assert await other.get_by_exact_key("exact-missing") is None
        assert await other.count() == 1
    finally:
        await other.aclose()


@pytest.mark.asyncio
async def test_same_exact_key_replaces_and_generation_moves(store: RedisEntryStore) -> None:
    first = live_entry("a", age_s=10)
    start = await store.identity()
    await store.insert(first)
    second = live_entry("a")
    replaced = await store.insert(second)
    assert [ref.entry_id for ref in replaced] == [first.entry_id]
    assert await store.count() == 1 and await store.get([first.entry_id]) == {}
    after = await store.identity()
    assert after.instance_id == start.instance_id and after.generation > start.generation
    await store.touch([EntryUsage(second.entry_id, hits=1, last_hit_at=time.time())])
    assert (await store.identity()).generation == after.generation  # counters do not change the vector set


@pytest.mark.asyncio
async def test_filters_touch_and_feedback(store: RedisEntryStore) -> None:
    now = time.time()
    old = live_entry("old", age_s=1000, ttl=1100)  # expires in 100 s
    acme = live_entry("acme", partition="p1")
    globex = live_entry("globex", partition="p2", tenant="globex")
    await insert_and_check_tenant_filter(store, old, acme, globex)
    assert [ref.entry_id for ref in await store.scan(EntryFilter(partition_key="p2"))] == [globex.entry_id]
    assert [ref.entry_id for ref in await store.scan(EntryFilter(expires_before=now + 500))] == [old.entry_id]
    assert [ref.entry_id for ref in await store.scan(EntryFilter(entry_id=acme.entry_id))] == [acme.entry_id]
    assert await store.delete(EntryFilter(tenant="acme", created_before=now - 2000)) == []
    deleted = await store.delete(EntryFilter(tenant="acme", created_before=now - 500))
    assert [ref.entry_id for ref in deleted] == [old.entry_id]
    assert await store.get_by_exact_key("exact-old") is None

    await store.touch(
        [
            EntryUsage(acme.entry_id, hits=2, last_hit_at=now + 5, saved=0.25),
            EntryUsage(acme.entry_id, saved=0.5),
            EntryUsage(acme.entry_id, hits=1, last_hit_at=now + 1),  # older than the last hit: kept
            EntryUsage("0000000000000000", hits=1, last_hit_at=now),  # gone: skipped
        ]
    )
    touched = (await store.get([acme.entry_id]))[acme.entry_id]
    assert (touched.hits, touched.last_hit_at, touched.saved) == (3, now + 5, 0.75)
    assert await store.get(["0000000000000000"]) == {}
    state = await store.add_feedback(acme.entry_id, 0.04, 1)
    assert state is not None and (state.threshold_adjust, state.negative_feedback) == (0.04, 1)
    state = await store.add_feedback(acme.entry_id, 0.04, 1)
    assert state is not None and state.negative_feedback == 2
    assert state.threshold_adjust == pytest.approx(0.08)
    assert await store.add_feedback("0000000000000000", 0.04, 1) is None

    await check_vectors_of(store, [acme, globex])
    assert await store.vectors([acme.entry_id], "other@8") == []


@pytest.mark.asyncio
async def test_eviction_orders(store: RedisEntryStore) -> None:
    now = time.time()
    a, b, c, d = (live_entry(name, age_s=3000 - i) for i, name in enumerate("abcd"))
    for entry in (a, b, c, d):
        await store.insert(entry)
    await store.touch([EntryUsage(a.entry_id, hits=1, last_hit_at=now - 1000, saved=9.0)])
    await store.touch([EntryUsage(c.entry_id, saved=1.0)])
    lru = await store.evict(EvictionPlan(EvictionOrder.LRU, 1, now=now))
    assert [ref.entry_id for ref in lru] == [b.entry_id]  # a was hit, so b is the least recently used
    # Lowest saved per age first: d (0 saved) and c (1) go before a (9).
    by_value = await store.evict(EvictionPlan(EvictionOrder.SAVED_PER_AGE, 2, now=now))
    assert [ref.entry_id for ref in by_value] == [d.entry_id, c.entry_id]
    assert await store.count() == 1
    assert await store.evict(EvictionPlan(EvictionOrder.LRU, 0, now=now)) == []


@pytest.mark.asyncio
async def test_saved_per_age_spares_young_entries(store: RedisEntryStore) -> None:
    old = live_entry("old", age_s=2000)
    young = live_entry("young", age_s=10)
    for entry in (old, young):
        await store.insert(entry)
    await store.touch([EntryUsage(old.entry_id, saved=0.5)])
    plan = EvictionPlan(EvictionOrder.SAVED_PER_AGE, 1, now=time.time(), grace_s=60.0, age_floor_s=60.0)
    assert [ref.entry_id for ref in await store.evict(plan)] == [old.entry_id]


@pytest.mark.asyncio
@pytest.mark.parametrize("order", list(EvictionOrder))
async def test_replicas_evicting_at_once_stop_at_the_target(redis: RedisServer, order: EvictionOrder) -> None:
    stores = [open_store(redis.url) for _ in range(3)]
    try:
        for i in range(20):
            await stores[i % 3].insert(live_entry(f"e{i}", age_s=1000 - i))
        # Each replica saw 20 entries against a target of 12 and plans to evict 8.
        plan = EvictionPlan(order, 8, now=time.time(), keep=12)
        evicted = await asyncio.gather(*(store.evict(plan) for store in stores))
        assert sum(len(refs) for refs in evicted) == 8
        assert await stores[0].count() == 12
        gone = {ref.entry_id for refs in evicted for ref in refs}
        assert len(gone) == 8 and await stores[1].get(sorted(gone)) == {}
    finally:
        for store in stores:
            await store.aclose()


# -- Redis's own expiry ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_redis_expires_entries_at_their_absolute_time(
    redis: RedisServer, store: RedisEntryStore
) -> None:
    short = live_entry("short", ttl=1.0)
    kept = live_entry("kept")
    await store.insert(short)
    await store.insert(kept)
    client = Redis.from_url(redis.url)
    try:
        entry_key = f"{{tierwise:cache}}:e:{short.entry_id}"
        expires_ms = await client.pexpiretime(entry_key)
        assert abs(expires_ms - short.expires_at * 1000) <= 1
        assert await client.pexpiretime("{tierwise:cache}:x:exact-short") == expires_ms
        # A hit (and a feedback) neither extends nor drops the absolute expiry.
        await store.touch([EntryUsage(short.entry_id, hits=1, last_hit_at=time.time(), saved=0.1)])
        await store.add_feedback(short.entry_id, 0.04, 1)
        assert await client.pexpiretime(entry_key) == expires_ms
    finally:
        await client.aclose()

    async def expired() -> bool:
        return await store.get([short.entry_id]) == {} and await store.get_by_exact_key("exact-short") is None

    await until(expired)
    assert await store.vectors([short.entry_id], "model@8") == []
    assert [row.entry_id for batch in [b async for b in store.iter_vectors("model@8")] for row in batch] == [
        kept.entry_id
    ]
    # Its ids linger in the sets until the purge deletes them, and the deletion is announced to replicas.
    assert [
        ref.entry_id for ref in await store.scan(EntryFilter(tenant="acme", expires_before=time.time()))
    ] == [short.entry_id]
    before = await store.position()
    purged = await store.delete(EntryFilter(expires_before=time.time()))
    assert [ref.entry_id for ref in purged] == [short.entry_id]
    changes = await store.read_changes(before, 10)
    assert [(change.op, change.ref.entry_id) for change in changes] == [(ChangeOp.REMOVE, short.entry_id)]
    assert await store.count() == 1
    assert await store.scan(EntryFilter(expires_before=time.time())) == []


@pytest.mark.asyncio
async def test_membership_sets_expire_with_their_longest_lived_entry(
    redis: RedisServer, store: RedisEntryStore
) -> None:
    first = live_entry("first", ttl=100)
    second = live_entry("second", ttl=200)
    await store.insert(second)
    await store.insert(first)  # a shorter life must not shorten the set's
    client = Redis.from_url(redis.url)
    try:
        for key in ("{tierwise:cache}:t:acme", "{tierwise:cache}:p:p1"):
            assert abs(await client.pexpiretime(key) - second.expires_at * 1000) <= 1
    finally:
        await client.aclose()


# -- identity, the change feed, isolation ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_change_feed_is_numbered_without_gaps(redis: RedisServer, store: RedisEntryStore) -> None:
    start = await store.position()
    other = open_store(redis.url)
    try:
        mine = live_entry("mine")
        theirs = live_entry("theirs", partition="p2")
        await store.insert(mine)
        await other.insert(theirs)
        await other.delete(EntryFilter(partition_key="p1"))
        changes = await store.read_changes(start, 10)
        assert [(c.op, c.ref.entry_id, c.ref.partition_key, c.local) for c in changes] == [
            (ChangeOp.ADD, mine.entry_id, "p1", True),
            (ChangeOp.ADD, theirs.entry_id, "p2", False),
            (ChangeOp.REMOVE, mine.entry_id, "p1", False),
        ]
        assert [c.position.seq for c in changes] == [start.seq + 1, start.seq + 2, start.seq + 3]
        assert all(c.position.instance_id == start.instance_id for c in changes)
        assert all(abs(c.at - time.time()) < 60 for c in changes)
        assert await store.position() == changes[-1].position
        assert await store.read_changes(changes[-1].position, 10) == []  # waits block_s, then nothing
        assert [c.ref.entry_id for c in await store.read_changes(changes[0].position, 1)] == [theirs.entry_id]
    finally:
        await other.aclose()


@pytest.mark.asyncio
async def test_prefixes_keep_caches_apart(redis: RedisServer) -> None:
    blue, green = open_store(redis.url, prefix="blue"), open_store(redis.url, prefix="green")
    try:
        await blue.insert(live_entry("a"))
        assert (await blue.count(), await green.count()) == (1, 0)
        assert await green.get_by_exact_key("exact-a") is None
        assert (await blue.identity()).instance_id != (await green.identity()).instance_id
        keys = await raw_keys(redis)
        assert all(key.startswith(("{blue}:", "{green}:")) for key in keys)
        assert [key for key in keys if key.startswith("{green}:")] == ["{green}:meta"]
    finally:
        await blue.aclose()
        await green.aclose()
    with pytest.raises(ValueError, match="braces"):
        RedisEntryStore.from_url(redis.url, prefix="a{b}")


# -- failures --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_killed_redis_fails_fast_then_reconnects(redis: RedisServer) -> None:
    store = open_store(redis.url, timeout_s=0.5, reconnect_min_s=0.2, reconnect_max_s=0.5)
    try:
        await store.insert(live_entry("a"))
        redis.kill()
        with pytest.raises(CacheStoreError, match=f"127.0.0.1:{redis.port}"):
            await store.count()
        assert not store.reachable
        # Within the backoff, calls fail at once without touching the network.
        with pytest.raises(CacheStoreError, match="next attempt in"):
            await store.get_by_exact_key("exact-a")
        redis.restart()  # same port, empty

        async def back() -> bool:
            with contextlib.suppress(CacheStoreError):
                return await store.count() == 0
            return False

        await until(back)
        assert store.reachable
        await store.insert(live_entry("b"))
        assert await store.get_by_exact_key("exact-b") is not None
    finally:
        await store.aclose()
    with pytest.raises(CacheStoreError, match="closed"):
        await store.count()


@pytest.mark.asyncio
async def test_hung_redis_times_out_into_a_store_error(redis: RedisServer) -> None:
    store = open_store(redis.url, timeout_s=0.3)
    try:
        await store.count()
        redis.pause()
        try:
            with pytest.raises(CacheStoreError, match="Timeout"):
                await store.insert(live_entry("a"))
        finally:
            redis.resume()
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_password_in_the_url(redis: RedisServer) -> None:
    admin = Redis.from_url(redis.url)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    denied = open_store(redis.url)
    allowed = open_store(f"redis://:s3cret@127.0.0.1:{redis.port}/2")
    try:
        with pytest.raises(CacheStoreError, match=r"Authentication|NOAUTH|auth"):
            await denied.count()
        await allowed.insert(live_entry("a"))
        assert await allowed.count() == 1
    finally:
        await denied.aclose()
        await allowed.aclose()


@contextlib.contextmanager
def tls_redis(directory: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that only speaks TLS, with a throwaway self-signed certificate for 127.0.0.1."""
    binary = require_redis_server()
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed; it makes the TLS test's certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = RedisServer(directory, binary)  # only for its free port
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--tls-cert-file", str(cert), "--tls-key-file",
         str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 10
        while True:
            try:
                with (
                    socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as raw,
                    context.wrap_socket(raw, server_hostname="127.0.0.1"),
                ):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the TLS redis-server did not start") from None
                time.sleep(0.02)  # polling the server's readiness, bounded by the deadline
        yield server.port, cert
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.asyncio
async def test_tls_url(tmp_path: Path) -> None:
    with tls_redis(tmp_path) as (port, cert):
        store = open_store(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
        plain = open_store(f"redis://127.0.0.1:{port}/0")
        try:
            await store.insert(live_entry("a"))
            assert await store.get_by_exact_key("exact-a") is not None
            with pytest.raises(CacheStoreError):
                await plain.count()  # the server speaks TLS only
        finally:
            await store.aclose()
            await plain.aclose()
