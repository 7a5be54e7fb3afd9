"""Shared-mode feedback: every replica appends judgments to one Redis stream; a consumer-group worker
in each replica lands them in the store (PostgreSQL, or that replica's SQLite file).

``record`` acknowledges only after Redis accepted the XADD. When Redis cannot
be reached it writes the judgment to the store directly instead, so none is
lost (``fallbacks`` counts these). The worker reads with XREADGROUP, writes a
batch idempotently by feedback id, then XACKs; entries another replica took
but never acknowledged (it died) are taken over with XAUTOCLAIM after
``claim_idle_s`` and land once. Consumed entries are trimmed from the stream
with XTRIM MINID (never MAXLEN, which could drop judgments no one consumed).
Reads go to the store, so a judgment shows there once a worker landed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from tierwise.cache.backoff import Backoff
from tierwise.cache.replication import stop_worker
from tierwise.router.config import FeedbackConfig
from tierwise.router.feedback.store import FeedbackRecord, FeedbackTable

log = logging.getLogger("tierwise.feedback")

_FIELD = "judgment"
Entry = tuple[str, FeedbackRecord | None]  # stream id, judgment (None: unreadable, acknowledged and dropped)


def _encode(f: FeedbackRecord) -> str:
    return json.dumps({**asdict(f), "metadata": dict(f.metadata)}, sort_keys=True)


def _decode(fields: dict[str, str] | None) -> FeedbackRecord | None:
    try:
        return FeedbackRecord(**json.loads((fields or {})[_FIELD]))
    except (KeyError, TypeError, ValueError):
        return None


def _entries(raw: Iterable[Any]) -> list[Entry]:
    return [(entry_id, _decode(fields)) for entry_id, fields in raw if entry_id]


def _client(url: str, timeout_s: float | None) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


class RedisFeedbackStore:
    def __init__(
        self,
        writer: Redis,
        reader: Redis,
        table: FeedbackTable,
        settings: FeedbackConfig,
        *,
        consumer: str | None = None,
        block_ms: int = 1000,
    ) -> None:
        self._writer = writer  # short timeouts: a dead Redis costs a Feedback call one timeout
        self._reader = reader  # waits out blocking reads
        self._table = table
        self._stream, self._group = settings.stream, settings.group
        self._claim_idle_ms = int(settings.claim_idle_s * 1000)
        self._batch = settings.batch_size
        self._block_ms = block_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._claim_cursor = "0-0"
        self._group_ready = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.fallbacks = 0
        self.landed = 0

    @classmethod
    def from_url(cls, url: str, table: FeedbackTable, settings: FeedbackConfig) -> RedisFeedbackStore:
        block_ms = 1000
        return cls(_client(url, 1.0), _client(url, block_ms / 1000 + 5.0), table, settings, block_ms=block_ms)

    async def record(self, feedback: FeedbackRecord) -> str:
        try:
            await self._writer.xadd(self._stream, {_FIELD: _encode(feedback)})
        except (RedisError, OSError) as exc:
            self.fallbacks += 1
            log.warning("feedback stream unreachable (%s); writing the judgment to the store directly", exc)
            await asyncio.to_thread(self._table.write_many, [feedback])
        return feedback.feedback_id

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._reader.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, start: str, block_ms: int | None) -> list[Entry]:
        await self._ensure_group()
        streams: dict[Any, Any] = {self._stream: start}
        raw: Any = await self._reader.xreadgroup(self._group, self.consumer, streams, self._batch, block_ms)
        return _entries(raw[0][1]) if raw else []  # RESP2 (our clients'): [[stream, entries]]

    async def read_new(self, block_ms: int | None = None) -> list[Entry]:
        """Entries no replica was given yet; they stay pending on this consumer until landed."""
        return await self._read(">", block_ms)

    async def claim_stale(self) -> list[Entry]:
        """Entries pending on any consumer longer than claim_idle_s (a replica died holding them)."""
        await self._ensure_group()
        cursor, raw, *_ = await self._reader.xautoclaim(
            self._stream, self._group, self.consumer, self._claim_idle_ms, self._claim_cursor, self._batch
        )
        self._claim_cursor = cursor
        return _entries(raw)

    async def land(self, entries: Sequence[Entry]) -> int:
        """Write the judgments (idempotently), then acknowledge and trim what is consumed."""
        if not entries:
            return 0
        judgments = [f for _, f in entries if f is not None]
        if len(judgments) < len(entries):
            log.error("dropping %d unreadable feedback stream entries", len(entries) - len(judgments))
        added = await asyncio.to_thread(self._table.write_many, judgments) if judgments else 0
        self.landed += added
        await self._reader.xack(self._stream, self._group, *(entry_id for entry_id, _ in entries))
        await self._trim()
        return added

    async def _trim(self) -> None:
        # Read the group's last delivered id before the oldest pending one: an entry older than both
        # was delivered and is no longer pending, so it was acknowledged.
        groups = await self._reader.xinfo_groups(self._stream)
        delivered = next((g["last-delivered-id"] for g in groups if g["name"] == self._group), None)
        pending = await self._reader.xpending(self._stream, self._group)
        if delivered is None:
            return
        oldest_pending = pending["min"] if pending["pending"] else None
        floor = min((delivered, oldest_pending or delivered), key=lambda i: tuple(map(int, i.split("-"))))
        await self._reader.xtrim(self._stream, minid=floor, approximate=False)

    async def stream_length(self) -> int:
        """Entries still in the stream: unconsumed ones plus consumed ones not trimmed yet."""
        length: int = await self._writer.xlen(self._stream)
        return length

    async def consume_once(self, block_ms: int | None = None) -> int:
        """One step of the worker: this consumer's own unlanded entries first, then stale ones taken
        over from dead consumers, then new ones (waiting up to ``block_ms``). Returns judgments landed."""
        entries = await self._read("0", None) or await self.claim_stale() or await self.read_new(block_ms)
        return await self.land(entries)

    async def _work(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self._stopping:
            try:
                await self.consume_once(self._block_ms)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the store is down: entries stay pending, retried later
                self._group_ready = False  # a Redis that restarted empty has lost the group: recreate it
                wait = backoff.next_delay()
                log.warning("feedback consumer: %s; retrying in %.1fs", exc, wait)
                await asyncio.sleep(wait)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._work(), name="feedback-consumer")

    async def for_request(self, tenant: str, request_id: str) -> list[FeedbackRecord]:
        return await self._table.for_request(tenant, request_id)

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        return await self._table.mean_scores(requests)

    async def between(self, since: float, until: float, source: str | None = None) -> list[FeedbackRecord]:
        return await self._table.between(since, until, source)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            await stop_worker(task)
        for client in (self._writer, self._reader):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
        await self._table.aclose()
