"""How the Redis entry store encodes what it keeps: entry hash fields, vectors, script replies, stream ids."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tierwise.cache.entry_columns import ColumnValue, decode_vector, entry_columns
from tierwise.cache.errors import CacheStoreError
from tierwise.cache.store import CachedResponse, CacheEntry, EntryRef


def encode_float(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    return repr(float(value))


def decode_text(value: bytes) -> str:
    return value.decode("utf-8")


def encode_column(value: ColumnValue) -> bytes | str:
    """A hash field: text and bytes as they are, reals by :func:`encode_float`, no value as ``""``."""
    if value is None:
        return ""
    if isinstance(value, bytes | str):
        return value
    if isinstance(value, float):
        return encode_float(value)
    return str(value)


def entry_fields(entry: CacheEntry) -> dict[str, bytes | str]:
    return {name: encode_column(value) for name, value in entry_columns(entry).items()}


def decode_entry(entry_id: str, fields: dict[bytes, bytes]) -> CacheEntry:
    def text(name: str) -> str:
        return decode_text(fields[name.encode()])

    try:
        last_hit = text("last_hit_at")
        return CacheEntry(
            entry_id=entry_id,
            partition_key=text("partition_key"),
            tenant=text("tenant"),
            namespace=text("namespace"),
            exact_key=text("exact_key"),
            query_text=text("query_text"),
            embedder_key=text("embedder_key"),
            embedding=decode_vector(fields[b"embedding"], int(text("dim"))),
            response=CachedResponse(
                content=text("content"),
                finish_reason=text("finish_reason"),
                model=text("model"),
                input_tokens=int(text("input_tokens")),
                output_tokens=int(text("output_tokens")),
            ),
            created_at=float(text("created_at")),
            expires_at=float(text("expires_at")),
            hits=int(text("hits")),
            last_hit_at=float(last_hit) if last_hit else None,
            threshold_adjust=float(text("threshold_adjust")),
            negative_feedback=int(text("negative_feedback")),
            saved=float(text("saved")),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CacheStoreError(f"cache entry {entry_id} in Redis is malformed: {exc!r}") from exc


def decode_refs(reply: Any) -> list[EntryRef]:
    values = [decode_text(value) for value in reply or []]
    return [EntryRef(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]


def reply_pairs(reply: Sequence[bytes]) -> dict[bytes, bytes]:
    return {reply[i]: reply[i + 1] for i in range(0, len(reply), 2)}


def change_time(change_id: str) -> float:
    return int(change_id.split("-", 1)[0]) / 1000.0
