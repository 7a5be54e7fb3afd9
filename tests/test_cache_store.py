"""The SQLite entry store: durability, filters, counters, eviction order, failures."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tierwise.cache.entry_state import EntryUsage, EvictionOrder, EvictionPlan
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.sqlite_store import SqliteEntryStore
from tierwise.cache.store import (
    CachedResponse,
    CacheEntry,
    EntryFilter,
    EntryStore,
    entry_label,
    label_entry_id,
    new_entry_id,
)

DIM = 8
REPO = Path(__file__).resolve().parents[1]


def make_entry(
    name: str,
    created_at: float = 1000.0,
    partition: str = "p1",
    tenant: str = "acme",
    embedder_key: str = "model@8",
    ttl: float = 3600.0,
) -> CacheEntry:
    vector = np.random.default_rng(abs(hash(name)) % 2**32).standard_normal(DIM).astype(np.float32)
    return CacheEntry(
        entry_id=new_entry_id(),
        partition_key=partition,
        tenant=tenant,
        namespace="support",
        exact_key=f"exact-{name}",
        query_text=f"question {name}",
        embedder_key=embedder_key,
        embedding=vector / np.linalg.norm(vector),
        response=CachedResponse(f"answer {name}", "stop", "small-model", 12, 34),
        created_at=created_at,
        expires_at=created_at + ttl,
    )


async def insert_and_check_tenant_filter(
    store: EntryStore, old: CacheEntry, acme: CacheEntry, globex: CacheEntry
) -> None:
    """Insert the three entries: an empty filter matches (and deletes) nothing, and acme's tenant filter
    finds ``old`` and ``acme``."""
    for entry in (old, acme, globex):
        await store.insert(entry)
    assert await store.scan(EntryFilter()) == [] and await store.delete(EntryFilter()) == []
    assert {ref.entry_id for ref in await store.scan(EntryFilter(tenant="acme"))} == {
        old.entry_id,
        acme.entry_id,
    }


async def check_vectors_of(store: EntryStore, live: list[CacheEntry]) -> None:
    """``iter_vectors`` yields exactly the ``live`` entries for their embedder, in batches, and nothing for
    another embedder."""
    batches = [batch async for batch in store.iter_vectors("model@8", batch_size=1)]
    assert sorted(row.entry_id for batch in batches for row in batch) == sorted(
        entry.entry_id for entry in live
    )
    assert [batch async for batch in store.iter_vectors("other@8")] == []


def test_entry_ids_are_their_faiss_labels() -> None:
    entry_id = new_entry_id()
    assert len(entry_id) == 16 and label_entry_id(entry_label(entry_id)) == entry_id
    assert 0 <= entry_label(entry_id) < 2**63
    for bad in ("xyz", "zzzzzzzzzzzzzzzz"):
        with pytest.raises(ValueError):
            entry_label(bad)


@pytest.mark.asyncio
async def test_round_trip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    store = await SqliteEntryStore.open(path)
    entry = make_entry("a")
    assert await store.insert(entry) == []
    await store.aclose()

    store = await SqliteEntryStore.open(path)
    loaded = (await store.get([entry.entry_id, "0000000000000000"]))[entry.entry_id]
    assert loaded.response == entry.response
    assert loaded.query_text == entry.query_text and loaded.exact_key == entry.exact_key
    np.testing.assert_array_equal(loaded.embedding, entry.embedding)
    assert loaded.embedding.dtype == np.float32
    by_key = await store.get_by_exact_key("exact-a")
    assert by_key is not None and by_key.entry_id == entry.entry_id
    assert await store.get_by_exact_key("exact-missing") is None
    await store.aclose()


@pytest.mark.asyncio
async def test_same_exact_key_replaces_and_generation_moves(tmp_path: Path) -> None:
    store = await SqliteEntryStore.open(tmp_path / "cache.db")
    first = make_entry("a")
    start = await store.identity()
    await store.insert(first)
    second = make_entry("a", created_at=2000.0)
    replaced = await store.insert(second)
    assert [ref.entry_id for ref in replaced] == [first.entry_id]
    assert await store.count() == 1
    after = await store.identity()
    assert after.instance_id == start.instance_id and after.generation == start.generation + 2
    await store.touch([EntryUsage(second.entry_id, hits=1, last_hit_at=2500.0)])
    assert (await store.identity()).generation == after.generation  # counters do not change the vector set
    await store.aclose()


@pytest.mark.asyncio
async def test_filters_touch_and_feedback(tmp_path: Path) -> None:
    store = await SqliteEntryStore.open(tmp_path / "cache.db")
    old = make_entry("old", created_at=100.0, ttl=50.0)
    acme = make_entry("acme", created_at=1000.0, partition="p1")
    globex = make_entry("globex", created_at=1000.0, partition="p2", tenant="globex")
    await insert_and_check_tenant_filter(store, old, acme, globex)
    assert [ref.entry_id for ref in await store.scan(EntryFilter(expires_before=500.0))] == [old.entry_id]
    deleted = await store.delete(EntryFilter(tenant="acme", created_before=500.0))
    assert [ref.entry_id for ref in deleted] == [old.entry_id]

    await store.touch(
        [
            EntryUsage(acme.entry_id, hits=2, last_hit_at=1500.0, saved=0.25),
            EntryUsage(acme.entry_id, saved=0.5),
            EntryUsage("0000000000000000", hits=1, last_hit_at=1.0),  # gone: skipped
        ]
    )
    touched = (await store.get([acme.entry_id]))[acme.entry_id]
    assert (touched.hits, touched.last_hit_at, touched.saved) == (2, 1500.0, 0.75)
    state = await store.add_feedback(acme.entry_id, 0.04, 1)
    assert state is not None and (state.threshold_adjust, state.negative_feedback) == (0.04, 1)
    assert await store.add_feedback("0000000000000000", 0.04, 1) is None

    await check_vectors_of(store, [acme, globex])
    await store.aclose()


@pytest.mark.asyncio
async def test_eviction_orders(tmp_path: Path) -> None:
    store = await SqliteEntryStore.open(tmp_path / "cache.db")
    a, b, c, d = (make_entry(name, created_at=1000.0 + i) for i, name in enumerate("abcd"))
    for entry in (a, b, c, d):
        await store.insert(entry)
    await store.touch([EntryUsage(a.entry_id, hits=1, last_hit_at=2000.0, saved=9.0)])
    await store.touch([EntryUsage(c.entry_id, saved=1.0)])
    lru = await store.evict(EvictionPlan(EvictionOrder.LRU, 1, now=3000.0))
    assert [ref.entry_id for ref in lru] == [b.entry_id]  # a was hit, so b is the least recently used
    # Lowest saved per age first: d (0 saved) and c (1) go before a (9).
    by_value = await store.evict(EvictionPlan(EvictionOrder.SAVED_PER_AGE, 2, now=3000.0))
    assert {ref.entry_id for ref in by_value} == {d.entry_id, c.entry_id}
    assert await store.count() == 1
    await store.aclose()


@pytest.mark.asyncio
async def test_saved_per_age_spares_young_entries(tmp_path: Path) -> None:
    store = await SqliteEntryStore.open(tmp_path / "cache.db")
    old = make_entry("old", created_at=1000.0)
    young = make_entry("young", created_at=2990.0)
    for entry in (old, young):
        await store.insert(entry)
    await store.touch([EntryUsage(old.entry_id, saved=0.5)])
    plan = EvictionPlan(EvictionOrder.SAVED_PER_AGE, 1, now=3000.0, grace_s=60.0, age_floor_s=60.0)
    assert [ref.entry_id for ref in await store.evict(plan)] == [old.entry_id]
    await store.aclose()


@pytest.mark.asyncio
async def test_closed_and_broken_stores_raise_store_errors(tmp_path: Path) -> None:
    store = await SqliteEntryStore.open(tmp_path / "cache.db")
    await store.aclose()
    with pytest.raises(CacheStoreError, match="closed"):
        await store.count()
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(CacheStoreError):
        await SqliteEntryStore.open(not_a_db)


@pytest.mark.asyncio
async def test_acknowledged_insert_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from tests.test_cache_store import make_entry
        from tierwise.cache.sqlite_store import SqliteEntryStore

        async def main():
            store = await SqliteEntryStore.open({str(path)!r})
            entry = make_entry("durable")
            await store.insert(entry)
            print(entry.entry_id, flush=True)
            time.sleep(600)  # parked until the test kills this process

        asyncio.run(main())
        """
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    try:
        assert process.stdout is not None
        acknowledged = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode().strip()
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    store = await SqliteEntryStore.open(path)
    assert acknowledged in await store.get([acknowledged])
    await store.aclose()
