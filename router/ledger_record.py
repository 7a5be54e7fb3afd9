"""One spend record per request: what it cost, what it saved, where the time went.

The record is the unit the ledger journals, stores and sums. Money is Decimal
end to end; the journal carries it as text so nothing passes through a float.
The end user appears only as a salted SHA-256 (``hash_user``), never raw.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

CACHE_RESULTS = ("miss", "exact", "semantic", "bypass")
STATUS_OK = "OK"

_MONEY = ("cost_usd", "saved_usd", "router_cost_usd")
_COUNTS = ("input_tokens", "output_tokens", "cached_input_tokens", "attempts")


@dataclass(frozen=True, slots=True)
class SpendRecord:
    request_id: str
    ts: float  # epoch seconds when the request finished
    tenant: str
    feature: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)  # the request's metadata: team, project, ...
    user_hash: str = ""
    experiment: str = ""
    arm: str = ""
    tier: str = ""
    model: str = ""
    provider: str = ""
    cache_result: str = "miss"  # miss | exact | semantic | bypass
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    saved_usd: Decimal = Decimal(0)
    router_cost_usd: Decimal = Decimal(0)
    total_ms: float = 0.0
    upstream_ms: float = 0.0
    overhead_ms: float = 0.0
    ttft_ms: float = 0.0
    status: str = STATUS_OK  # OK or the gRPC status name
    error_type: str = ""
    attempts: int = 0
    fallback: bool = False
    reason: str = ""

    def __post_init__(self) -> None:
        # A bad record would be journalled and then refused by every store, so refuse it here.
        if not self.request_id:
            raise ValueError("request_id must not be empty")
        if not math.isfinite(self.ts):
            raise ValueError(f"ts must be finite, got {self.ts}")
        if self.cache_result not in CACHE_RESULTS:
            raise ValueError(f"cache_result must be one of {CACHE_RESULTS}, got {self.cache_result!r}")
        for name in _COUNTS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in _MONEY:
            amount: Decimal = getattr(self, name)
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValueError(f"{name} must be a finite, non-negative Decimal, got {amount!r}")

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


FIELD_NAMES = tuple(f.name for f in fields(SpendRecord))


def record_to_dict(record: SpendRecord) -> dict[str, Any]:
    """JSON-ready: money as exact decimal text, tags as a plain dict."""
    data = {name: getattr(record, name) for name in FIELD_NAMES}
    for name in _MONEY:
        data[name] = str(data[name])
    data["tags"] = dict(record.tags)
    return data


def record_from_dict(data: Mapping[str, Any]) -> SpendRecord:
    """The inverse of ``record_to_dict``; keys it does not know (a newer writer's) are ignored."""
    values = {name: data[name] for name in FIELD_NAMES if name in data}
    for name in _MONEY:
        if name in values:
            values[name] = Decimal(str(values[name]))
    return SpendRecord(**values)


def encode_line(record: SpendRecord) -> bytes:
    """One journal line (JSON, newline-terminated)."""
    return json.dumps(record_to_dict(record), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode_line(line: bytes) -> SpendRecord:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a journal line must be a JSON object")
    return record_from_dict(data)


def hash_user(user: str, salt: bytes) -> str:
    """Salted SHA-256 of an end-user id ("" stays ""): groups one user's requests without storing who."""
    if not user:
        return ""
    return hashlib.sha256(salt + b"\x00" + user.encode()).hexdigest()
