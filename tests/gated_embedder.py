"""A real embedder whose ``encode()`` waits at a gate, so tests can hold a batch mid-encode."""

from __future__ import annotations

import asyncio
import threading

from tierwise.cache.embedder import Matrix, TextEmbedder


class GatedEmbedder:
    """Encodes with ``inner`` once ``release()`` was called; ``encoded``: every text it encoded."""

    def __init__(self, inner: TextEmbedder) -> None:
        self.inner = inner
        self.info = inner.info
        self.encoded: list[str] = []
        self._entered = threading.Event()
        self._gate = threading.Event()

    def encode(self, texts: list[str]) -> Matrix:
        self._entered.set()
        self._gate.wait(timeout=60)
        self.encoded.extend(texts)
        return self.inner.encode(texts)

    async def wait_until_encoding(self) -> None:
        """Until an ``encode()`` call has started (and is held at the gate)."""
        if not await asyncio.to_thread(self._entered.wait, 60):
            raise TimeoutError("no encode() call started")

    def release(self) -> None:
        self._gate.set()
