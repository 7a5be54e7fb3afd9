"""The flat layout in which every entry store persists a :class:`~tierwise.cache.store.CacheEntry`.

SQLite rows and Redis hashes keep the same named columns and the same vector bytes, so the layout
is written once here and each store only encodes the values its own way.
"""

from __future__ import annotations

import numpy as np

from tierwise.cache.errors import CacheStoreError
from tierwise.cache.store import CacheEntry

ColumnValue = str | int | float | bytes | None
"""A column as stored: text, a whole number, a real (None only for ``last_hit_at``), or vector bytes."""


def encode_vector(vector: np.ndarray) -> bytes:
    """Little-endian float32, so a store's bytes read back the same on any host."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def decode_vector(blob: bytes, dim: int) -> np.ndarray:
    """The inverse of :func:`encode_vector`; a length that disagrees with ``dim`` means corruption."""
    if len(blob) != 4 * dim:
        raise CacheStoreError(f"stored embedding has {len(blob)} bytes, expected {4 * dim}")
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def entry_columns(entry: CacheEntry) -> dict[str, ColumnValue]:
    """Every field of ``entry`` but its id, the response inlined and the vector as ``dim`` plus bytes.

    Numbers are coerced to the column's own type (``int`` or ``float``), so a store may pick its
    encoding by the value's type.
    """
    response = entry.response
    return {
        "partition_key": entry.partition_key,
        "tenant": entry.tenant,
        "namespace": entry.namespace,
        "exact_key": entry.exact_key,
        "query_text": entry.query_text,
        "embedder_key": entry.embedder_key,
        "dim": int(entry.embedding.shape[0]),
        "embedding": encode_vector(entry.embedding),
        "content": response.content,
        "finish_reason": response.finish_reason,
        "model": response.model,
        "input_tokens": int(response.input_tokens),
        "output_tokens": int(response.output_tokens),
        "created_at": float(entry.created_at),
        "expires_at": float(entry.expires_at),
        "hits": int(entry.hits),
        "last_hit_at": None if entry.last_hit_at is None else float(entry.last_hit_at),
        "threshold_adjust": float(entry.threshold_adjust),
        "negative_feedback": int(entry.negative_feedback),
        "saved": float(entry.saved),
    }
