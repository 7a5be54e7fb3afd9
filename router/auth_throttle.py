"""Failed authentications per source address, in fixed windows, for a bounded set of sources.

A window opens at a source's first failure. Once it holds ``max_failures`` failures the source
is refused, without a key check, until the window ends; then it starts afresh. At most
``max_sources`` windows are kept: the one whose last failure is oldest goes first, so memory
stays bounded whatever the number of addresses. (A caller with more addresses than that could
spread its guesses anyway; the bound is on memory, not on such a caller.)
"""

from __future__ import annotations

import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tierwise.router.config import AuthThrottleConfig


@dataclass(slots=True)
class _Window:
    opened: float
    failures: int


class FailureThrottle:
    def __init__(self, config: AuthThrottleConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_failures = config.max_failures
        self._window_s = config.window_s
        self._max_sources = config.max_sources
        self._clock = clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max_failures > 0

    @property
    def window_s(self) -> float:
        return self._window_s

    def retry_after(self, source: str) -> float | None:
        """Seconds until ``source`` may try again; None when it may now."""
        window = self._current(source)
        if window is None or window.failures < self._max_failures:
            return None
        return window.opened + self._window_s - self._clock()

    def failed(self, source: str) -> bool:
        """Count a failure of ``source``; True when this one used up its window's allowance."""
        if not self.enabled:
            return False
        window = self._current(source)
        if window is None:
            window = self._windows[source] = _Window(self._clock(), 0)
        window.failures += 1
        self._windows.move_to_end(source)
        while len(self._windows) > self._max_sources:
            self._windows.popitem(last=False)
        return window.failures == self._max_failures

    def _current(self, source: str) -> _Window | None:
        window = self._windows.get(source)
        if window is not None and self._clock() - window.opened >= self._window_s:
            del self._windows[source]
            return None
        return window

    def __len__(self) -> int:
        return len(self._windows)


def source_address(peer: str) -> str:
    """The address part of a gRPC peer string: ``ipv4:10.0.0.1:5123`` -> ``10.0.0.1``,
    ``ipv6:[::1]:5123`` -> ``::1``; a peer of another form (``unix:/path``) is itself.

    The port changes with every connection, so it must not tell sources apart. Newer gRPC
    releases percent-encode the brackets of an IPv6 peer.
    """
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:].partition("]")[0]
    return peer
