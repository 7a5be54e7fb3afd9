"""Fail-fast while Redis is unreachable: one probe call per backoff step, the rest refused at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tierwise.cache.errors import CacheStoreError
from tierwise.cache.replication import ReconnectBackoff

logger = logging.getLogger(__name__)


class RedisOutage:
    """Fails calls fast while Redis is unreachable, letting one through per backoff step."""

    def __init__(
        self, name: str, backoff: ReconnectBackoff, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._name = name
        self._backoff = backoff
        self._clock = clock
        self._since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._since is not None

    def check(self) -> None:
        now = self._clock()
        if self._since is not None and now < self._retry_at:
            raise CacheStoreError(
                f"cache store {self._name} unreachable for {now - self._since:.1f} s; "
                f"next attempt in {self._retry_at - now:.1f} s"
            )

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        if now < self._retry_at:
            return  # a call that started before the outage was noticed: not another probe
        if self._since is None:
            self._since = now
            logger.warning("cache store %s unreachable (%s); retrying with backoff", self._name, exc)
        self._retry_at = now + self._backoff.next_delay()

    def succeeded(self) -> None:
        if self._since is not None:
            logger.info(
                "cache store %s reachable again after %.1f s", self._name, self._clock() - self._since
            )
            self._since = None
            self._retry_at = 0.0
            self._backoff.reset()
