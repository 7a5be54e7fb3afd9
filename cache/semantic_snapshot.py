"""How the semantic cache's index is loaded: snapshot manifests, reading a snapshot, rebuilding from the store.

A standalone cache's snapshot records the store's instance and generation; a replica's records
the change-feed position it matches, so the follower replays only what came after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from tierwise.cache.embedder import EmbedderInfo, Vector
from tierwise.cache.index import PartitionedIndex
from tierwise.cache.replication import FeedPosition
from tierwise.cache.settings import CacheSettings
from tierwise.cache.store import EntryStore, VectorRow, entry_label

logger = logging.getLogger(__name__)


def store_manifest(instance_id: str, generation: int, embedder: EmbedderInfo) -> dict[str, object]:
    return {"store": instance_id, "generation": generation, "embedder": embedder.key}


def replica_manifest(position: FeedPosition, embedder: EmbedderInfo) -> dict[str, object]:
    feed = {"instance_id": position.instance_id, "change_id": position.change_id, "seq": position.seq}
    return {"store": position.instance_id, "feed": feed, "embedder": embedder.key}


async def _read_snapshot(
    embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, dict[str, Any]] | None:
    path = settings.snapshot_path
    if path is None or not path.exists():
        return None
    try:
        return await asyncio.to_thread(PartitionedIndex.load, path, embedder.dim, settings.index_params())
    except Exception:
        # A snapshot only saves time; an unreadable one is rebuilt, never trusted.
        logger.warning("cache snapshot %s is unreadable; rebuilding from the store", path, exc_info=True)
        return None


async def load_or_rebuild_index(
    store: EntryStore, embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, bool]:
    """The index, and whether it came from the snapshot."""
    identity = await store.identity()
    snapshot = await _read_snapshot(embedder, settings)
    if snapshot is not None:
        index, manifest = snapshot
        if manifest == store_manifest(identity.instance_id, identity.generation, embedder):
            return index, True
        logger.info("cache snapshot %s is stale; rebuilding from the store", settings.snapshot_path)
    return await rebuild_index(store, embedder, settings), False


async def read_replica_snapshot(
    embedder: EmbedderInfo, settings: CacheSettings
) -> tuple[PartitionedIndex, FeedPosition] | None:
    """A replica's snapshot and the feed position it matches; the follower replays what came after."""
    snapshot = await _read_snapshot(embedder, settings)
    if snapshot is None:
        return None
    index, manifest = snapshot
    feed = manifest.get("feed")
    if manifest.get("embedder") == embedder.key and isinstance(feed, dict):
        try:
            return index, FeedPosition(str(feed["instance_id"]), str(feed["change_id"]), int(feed["seq"]))
        except (KeyError, TypeError, ValueError):
            pass
    logger.info("cache snapshot %s is not a replica's of this embedder; rebuilding", settings.snapshot_path)
    return None


def group_by_partition(rows: Iterable[VectorRow], dim: int) -> dict[str, list[tuple[int, Vector]]]:
    groups: dict[str, list[tuple[int, Vector]]] = {}
    for row in rows:
        if row.embedding.shape == (dim,):
            groups.setdefault(row.partition_key, []).append((entry_label(row.entry_id), row.embedding))
    return groups


async def rebuild_index(
    store: EntryStore, embedder: EmbedderInfo, settings: CacheSettings
) -> PartitionedIndex:
    index = PartitionedIndex(embedder.dim, settings.index_params())

    def add_batch(groups: dict[str, list[tuple[int, Vector]]]) -> None:
        for partition_key, rows in groups.items():
            labels = np.asarray([label for label, _ in rows], dtype=np.int64)
            index.add(partition_key, labels, np.stack([vector for _, vector in rows]))

    # Only vectors of this embedder's space are read: another model's vectors are never compared.
    async for batch in store.iter_vectors(embedder.key):
        await asyncio.to_thread(add_batch, group_by_partition(batch, embedder.dim))
    for partition_key in index.partition_keys():
        await asyncio.to_thread(_rebuild_until_settled, index, partition_key)
    return index


def _rebuild_until_settled(index: PartitionedIndex, partition_key: str) -> None:
    while index.rebuild(partition_key):
        pass
