"""The entry store failing."""

from __future__ import annotations


class CacheStoreError(RuntimeError):
    """The entry store failed (I/O, corruption, closed); the request may go on without the cache."""
