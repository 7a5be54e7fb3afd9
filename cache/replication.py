"""Replicas of one shared cache: a change feed of the store, and the task that makes a local index follow it.

Every replica keeps its own FAISS index of the shared entries. A shared store
(Redis) appends each insert and deletion to a change feed, numbered without gaps
(``seq``), in the same atomic step as the change itself. An :class:`IndexFollower`
per cache reads the feed and applies the changes to the local index only; the
store is never written again. A replica also re-reads its own changes, which it
already applied: applying a change twice is harmless (an add of a present label
is skipped, a remove of an absent one ignored), and it is what makes the
follower correct when a local write failed halfway or an index was swapped.

The follower keeps the position of the last change it applied. After an outage
it resumes from there; when the feed no longer holds the next change (trimmed,
or the store was replaced by an empty one) it rebuilds the index from a scan of
the entries, starting from a position taken *before* the scan, so that nothing
written during the scan is missed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tierwise.cache.backoff import Backoff, Jitter
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.store import EntryRef, VectorRow

logger = logging.getLogger(__name__)


async def stop_worker(task: asyncio.Task[None]) -> None:
    """Cancel a Redis worker loop and wait until it has ended.

    redis-py can swallow a cancellation that lands in a blocking read (the read then returns nothing
    or raises a timeout the loop retries): the caller's stop flag ends the loop at its next turn, and
    the cancellation is repeated meanwhile.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)


class ChangeOp(enum.Enum):
    ADD = "add"
    REMOVE = "del"


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """A point in one store's feed: ``seq`` changes were appended before it, the last as ``change_id``."""

    instance_id: str
    change_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class Change:
    op: ChangeOp
    ref: EntryRef
    position: FeedPosition
    at: float
    """When the store appended it (seconds since the epoch, the store's clock)."""
    local: bool
    """Written through this very store object (already counted by its cache)."""


@dataclass(frozen=True, slots=True)
class IndexChanges:
    """What a run of the feed asks of a replica's index, read from the store in one go."""

    added: Sequence[VectorRow]
    removed: Sequence[EntryRef]
    entries_delta: int
    """Other writers' net inserts (this store's own were counted when written)."""
    position: FeedPosition
    """The position after the last change of the run."""


@runtime_checkable
class ChangeFeed(Protocol):
    async def position(self) -> FeedPosition:
        """The position after the latest change, read atomically with the store's identity."""
        ...

    async def read_changes(self, after: FeedPosition, count: int) -> list[Change]:
        """Up to ``count`` changes after ``after``, waiting a short while when there are none yet."""
        ...

    async def vectors(self, entry_ids: Sequence[str], embedder_key: str) -> list[VectorRow]:
        """The vectors of those entries that still exist and were embedded by ``embedder_key``."""
        ...


class ReplicaIndex(Protocol):
    """What the follower changes: the cache's local index (implemented by ``SemanticCache``)."""

    @property
    def embedder_key(self) -> str: ...

    async def apply_changes(self, changes: IndexChanges) -> None:
        """Add and remove vectors in the index only; the store is not written."""
        ...

    async def reload_index(self, position: FeedPosition) -> None:
        """Replace the index with one built from a scan of the store, which began after ``position``."""
        ...


class ReconnectBackoff(Backoff):
    """Reconnects to a shared store: equal jitter, the n-th wait uniform in [d/2, d], d = min(max, min·2ⁿ)."""

    def __init__(self, min_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s}, {max_s}")
        super().__init__(min_s, max_s, jitter=Jitter.EQUAL, rng=rng)


@dataclass(slots=True)
class FollowerStats:
    following: bool = False
    """The last read of the feed succeeded."""
    applied: int = 0
    reloads: int = 0
    errors: int = 0
    lag_s: float | None = None
    """Age of the newest change at the moment it was applied (the store's clock against ours)."""
    position: FeedPosition | None = None


def net_changes(changes: Sequence[Change]) -> tuple[list[Change], list[Change]]:
    """The adds and removes that remain after the batch; entry ids are never reused, so a remove wins."""
    final: dict[str, Change] = {}
    for change in changes:
        final[change.ref.entry_id] = change
    adds = [change for change in final.values() if change.op is ChangeOp.ADD]
    removes = [change for change in final.values() if change.op is ChangeOp.REMOVE]
    return adds, removes


class IndexFollower:
    """Applies a feed's changes to one cache's index, from ``position`` on (None: rebuild first)."""

    def __init__(
        self,
        feed: ChangeFeed,
        replica: ReplicaIndex,
        position: FeedPosition | None,
        *,
        batch: int,
        backoff: ReconnectBackoff,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._feed = feed
        self._replica = replica
        self._batch = batch
        self._backoff = backoff
        self._clock = clock
        self._verify = True  # the position may come from a snapshot of another store's feed
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.stats = FollowerStats(position=position)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tierwise-cache-follower")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        await stop_worker(task)

    async def _run(self) -> None:
        failing = False
        while not self._stopping:
            try:
                await self._step()
            except CacheStoreError as exc:
                self.stats.errors += 1
                self.stats.following = False
                self._verify = True  # the store may have been replaced while we could not see it
                delay = self._backoff.next_delay()
                if not failing:
                    logger.warning("cache replication paused: %s; retrying with backoff", exc)
                    failing = True
                await asyncio.sleep(delay)  # reconnect backoff, not a wait for a condition
            except Exception:
                # A bug must not end replication for the life of the process; log it and go on.
                self.stats.errors += 1
                logger.exception("cache replication step failed")
                await asyncio.sleep(self._backoff.next_delay())
            else:
                self.stats.following = True
                self._backoff.reset()
                if failing:
                    logger.info("cache replication resumed at change %s", self._seq_text())
                    failing = False

    def _seq_text(self) -> str:
        position = self.stats.position
        return "-" if position is None else str(position.seq)

    async def _step(self) -> None:
        position = self.stats.position
        if position is None:
            await self._reload(await self._feed.position())
            return
        if self._verify:
            current = await self._feed.position()
            self._verify = False
            if current.instance_id != position.instance_id or current.seq < position.seq:
                logger.warning("the shared cache store was replaced; rebuilding the local index")
                await self._reload(current)
                return
        changes = await self._feed.read_changes(position, self._batch)
        if not changes:
            self._verify = True  # idle: a cheap check that the store is still the same one
            return
        expected = position.seq + 1
        if any(change.position.seq != expected + i for i, change in enumerate(changes)):
            logger.warning(
                "the cache change feed no longer holds change %d (trimmed or replaced); rebuilding the index",
                expected,
            )
            await self._reload(await self._feed.position())
            return
        await self._apply(changes)

    async def _apply(self, changes: list[Change]) -> None:
        adds, removes = net_changes(changes)
        key = self._replica.embedder_key
        wanted = [change.ref.entry_id for change in adds if change.ref.embedder_key == key]
        vectors = await self._feed.vectors(wanted, key) if wanted else []
        delta = sum(1 for change in changes if not change.local and change.op is ChangeOp.ADD) - sum(
            1 for change in changes if not change.local and change.op is ChangeOp.REMOVE
        )
        last = changes[-1]
        await self._replica.apply_changes(
            IndexChanges(vectors, [change.ref for change in removes], delta, last.position)
        )
        self.stats.applied += len(changes)
        self.stats.lag_s = max(0.0, self._clock() - last.at)
        self.stats.position = last.position

    async def _reload(self, position: FeedPosition) -> None:
        await self._replica.reload_index(position)
        self.stats.reloads += 1
        self.stats.position = position
