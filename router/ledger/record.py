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
from operator import attrgetter
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
    api_key: str = ""  # the API key's label (its name, or its digest prefix), never the secret

    def __post_init__(self) -> None:
        # A bad record would be journalled and then refused by every store, so refuse it here.
        if not self.request_id:
            raise ValueError("request_id must not be empty")
        if not math.isfinite(self.ts):
            raise ValueError(f"ts must be finite, got {self.ts}")
        if self.cache_result not in CACHE_RESULTS:
            raise ValueError(f"cache_result must be one of {CACHE_RESULTS}, got {self.cache_result!r}")
        if min(self.input_tokens, self.output_tokens, self.cached_input_tokens, self.attempts) < 0:
            raise ValueError(f"{_COUNTS} must not be negative")
        for amount in (self.cost_usd, self.saved_usd, self.router_cost_usd):
            if type(amount) is not Decimal or not amount.is_finite() or amount < 0:
                raise ValueError(f"{_MONEY} must be finite, non-negative Decimals, got {amount!r}")

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


FIELD_NAMES = tuple(f.name for f in fields(SpendRecord))

# A journal line is a JSON array: the format version, then the fields in
# FIELD_NAMES order (money as decimal text). Positional, because it halves the
# encoding time on the request path; new fields go at the end only, so an older
# line decodes with defaults for them and a newer one's extra values are ignored.
LINE_FORMAT = 1
_values = attrgetter(*FIELD_NAMES)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot journal a {type(value).__name__}")


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)


def encode_line(record: SpendRecord) -> bytes:
    """One journal line, newline-terminated."""
    return (_encoder.encode((LINE_FORMAT, *_values(record))) + "\n").encode()


def decode_line(line: bytes) -> SpendRecord:
    data = json.loads(line)
    if not isinstance(data, list) or not data or data[0] != LINE_FORMAT:
        raise ValueError("not a spend journal line (format 1)")
    values: dict[str, Any] = dict(zip(FIELD_NAMES, data[1:], strict=False))
    for name in _MONEY:
        if name in values:
            values[name] = Decimal(values[name])
    return SpendRecord(**values)


def hash_user(user: str, salt: bytes) -> str:
    """Salted SHA-256 of an end-user id ("" stays ""): groups one user's requests without storing who."""
    if not user:
        return ""
    return hashlib.sha256(salt + b"\x00" + user.encode()).hexdigest()
