"""The stored keys a replica serves from: a snapshot read from the ``KeyStore``, refreshed by polling
its version (one cheap read every ``keys.poll_interval_s``), on SIGHUP, and when a request brings a
key the snapshot does not know (so a key made a moment ago works at once; such reads are spaced at
least ``MISS_REFRESH_S`` apart, so a flood of unknown keys costs the store a few reads a second,
and a new key arriving within that spacing of an unknown one is refused once, until the next read).

A request is authenticated once, when it starts: revoking its key does not cut a call in flight.

The store unreadable (``keys.fail_mode``): the last snapshot keeps serving. ``closed`` (the
default) bounds that to ``keys.max_stale_s`` after the last successful read; beyond it, and before
any read succeeded, a key that is not in the config's ``auth.api_keys`` is refused with UNAVAILABLE,
since whether it is valid cannot be known. ``open`` keeps serving the last snapshot however old (a
revocation made during the outage is not seen until the store answers). Keys in the config are
never affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from tierwise.router.config import KeysConfig
from tierwise.router.keys.record import KeyRecord, KeyStore, KeyStoreUnavailable

log = logging.getLogger("tierwise.keys")

MISS_REFRESH_S = 0.25
Verdict = Literal["revoked", "expired", "unknown", "store_down"]
ChangeListener = Callable[[Sequence[KeyRecord]], None]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    version: int
    current: dict[str, KeyRecord]  # secret digest -> key
    previous: dict[str, KeyRecord]  # digest of the secret before the last rotation -> key


class StoredKeys:
    def __init__(
        self,
        store: KeyStore,
        config: KeysConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._snapshot: _Snapshot | None = None
        self._read_at = -float("inf")  # the last successful read of the store (clock)
        self._missed_at = -float("inf")  # the last read an unknown key asked for
        self._listeners: list[ChangeListener] = []
        self._refreshing: asyncio.Task[bool] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._down = False
        self._requested: set[asyncio.Task[bool]] = set()

    def add_listener(self, listener: ChangeListener) -> None:
        """Told every key (revoked and expired too) after each read that found a change."""
        self._listeners.append(listener)

    # -- the request path -----------------------------------------------------

    def lookup(self, digest: str) -> KeyRecord | Verdict:
        """The active key with that secret digest, or why there is none.

        A dict lookup by digest: the digest of a guess is not under the guesser's control, so the
        time it takes tells nothing about stored secrets.
        """
        snapshot = self._snapshot
        if snapshot is None or self._too_stale():
            return "store_down"
        now = self._wall_clock()
        record = snapshot.current.get(digest)
        if record is not None:
            state = record.state(now)
            return record if state == "active" else state
        record = snapshot.previous.get(digest)
        if record is None:
            return "unknown"
        state = record.state(now)
        if state != "active":
            return state
        # A rotated-out secret opens the key through its grace period; after it, it is revoked.
        return record if record.previous_until is not None and now < record.previous_until else "revoked"

    def _too_stale(self) -> bool:
        if self._config.fail_mode == "open":
            return False
        return self._clock() - self._read_at > self._config.max_stale_s

    # -- refreshing -------------------------------------------------------------

    async def refresh(self) -> bool:
        """Read the version and, if it moved, the keys; True when something changed. Concurrent
        callers share one read. Never raises: a failed read is logged once per outage."""
        if self._refreshing is None or self._refreshing.done():  # done: its waiter was cancelled
            self._refreshing = asyncio.create_task(self._refresh())
        task = self._refreshing
        try:
            return await asyncio.shield(task)
        finally:
            if task.done() and self._refreshing is task:
                self._refreshing = None

    async def refresh_on_miss(self) -> bool:
        """An unknown key arrived: join a read under way (it may bring the key), then read the
        store unless another unknown key made it read a moment ago (polls do not count: one may
        have started just before the key was made)."""
        if self._refreshing is not None and not self._refreshing.done() and await self.refresh():
            return True
        now = self._clock()
        if now - self._missed_at < MISS_REFRESH_S:
            return False
        self._missed_at = now
        return await self.refresh()

    def request_refresh(self) -> None:
        """SIGHUP: read the store now, off the caller's stack."""
        task = asyncio.get_running_loop().create_task(self.refresh())
        self._requested.add(task)  # held so it is not collected mid-read
        task.add_done_callback(self._requested.discard)

    async def _refresh(self) -> bool:
        known = None if self._snapshot is None else self._snapshot.version
        try:
            read = await asyncio.wait_for(asyncio.to_thread(self._read, known), self._config.timeout_s)
        except Exception as exc:  # unreachable, timed out, or a store answering nonsense: all "down"
            if not isinstance(exc, (KeyStoreUnavailable, TimeoutError)):
                log.exception("key store %s: unexpected error reading keys", self.store.name)
            if not self._down:
                self._down = True
                log.warning(
                    "key store %s unreadable (fail_mode %s): serving the keys last read",
                    self.store.name,
                    self._config.fail_mode,
                    extra={"error": str(exc) or "timed out"},
                )
            return False
        self._read_at = self._clock()
        if self._down:
            self._down = False
            log.warning("key store %s readable again", self.store.name)
        if read is None:
            return False
        version, records = read
        self._snapshot = _Snapshot(
            version,
            {r.secret_sha256: r for r in records},
            {r.previous_sha256: r for r in records if r.previous_sha256 is not None},
        )
        for listener in self._listeners:
            try:
                listener(records)
            except Exception:  # one bad record must not stop the keys being served or polled
                log.exception("key store %s: a listener refused the keys read", self.store.name)
        return True

    def _read(self, known: int | None) -> tuple[int, list[KeyRecord]] | None:
        """In a thread: the keys, or None when the version is still ``known``."""
        if known is not None and self.store.version() == known:
            return None
        return self.store.load()

    # -- lifetime ---------------------------------------------------------------

    async def start(self) -> None:
        """One read now (a store that is down only delays stored keys), then polling."""
        await self.refresh()
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._config.poll_interval_s)
            await self.refresh()

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._refreshing is not None:
            with contextlib.suppress(Exception):
                await self._refreshing
        await asyncio.to_thread(self.store.close)
