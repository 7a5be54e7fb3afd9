"""Bounded values for a metric label whose values callers choose (``feature``).

Every distinct label value is a new series in every family that carries the label, held until
the process ends and sent on every scrape, so a caller sending a fresh feature name per request
would grow ``/metrics`` without bound. A value keeps its own series when the operator listed it,
or while fewer than ``max_values`` others have been seen; later ones share the ``other`` series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

OTHER = "other"


class BoundedLabelValues:
    def __init__(self, allow: Iterable[str] = (), max_values: int = 20) -> None:
        if max_values < 0:
            raise ValueError(f"max_values must not be negative, got {max_values}")
        self.allow = frozenset(allow)
        self.max_values = max_values
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # first-seen admission is check-then-add

    @property
    def seen(self) -> frozenset[str]:
        """The values admitted beyond the allow-list."""
        with self._lock:
            return frozenset(self._seen)

    def __call__(self, value: str) -> str:
        """The label value ``value`` is counted under: itself, or ``OTHER``."""
        if value in self.allow or value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.max_values:
                self._seen.add(value)
                return value
        return OTHER
