"""A deterministic test embedder that remembers every text it was asked to embed."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from tierwise.cache.embedder import EmbedderInfo, Matrix


class RecordingEmbedder:
    """Each text's row is ``vector(text)`` (a subclass chooses it and ``info``); ``seen``: the texts asked for,
    in order."""

    info: EmbedderInfo

    def __init__(self) -> None:
        self.seen: list[str] = []

    def vector(self, text: str) -> NDArray[np.float32]:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> Matrix:
        self.seen.extend(texts)
        rows = [self.vector(text) for text in texts]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.info.dim)
