"""Creating, listing, revoking and rotating stored keys: the rules both fronts share (``tierwise
keys`` and the Admin RPCs). A bad input raises ``KeyInputError`` naming its field; each front
renders the field its own way (an option, a request field).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TypedDict

from tierwise.router.auth import sha256_hex
from tierwise.router.config import TIER_NAME, BudgetConfig
from tierwise.router.keys.record import (
    KeyBudget,
    KeyConflict,
    KeyNotFound,
    KeyRecord,
    KeyStore,
    new_key_id,
    new_secret,
)

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BUDGET = re.compile(r"^\s*\$?([0-9]+(?:\.[0-9]+)?)\s*/\s*(day|month)\s*$")
MAX_TENANT = 128


class KeyInputError(ValueError):
    """A bad input; ``field`` is the manager's name for it (tenant, name, expires_in_s, rpm, tpm,
    budget_usd, grace_s, key)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class NewSecret:
    """A key and its secret: the only time the secret exists outside the caller's hands."""

    record: KeyRecord
    secret: str


def parse_duration(text: str, field: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> seconds."""
    match = _DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise KeyInputError(
            field, f"must be a positive number with a unit s, m, h, d or w (like 30d); got {text!r}"
        )
    return float(match[1]) * _UNIT_S[match[2]]


def parse_budget(text: str, field: str = "budget_usd") -> KeyBudget:
    """``5/day``, ``$100/month`` -> a budget in USD per calendar day or month (UTC)."""
    match = _BUDGET.match(text)
    if match is None:
        raise KeyInputError(field, f"must be USD per day or month, like 5/day or 100/month; got {text!r}")
    try:
        usd = Decimal(match[1])
    except InvalidOperation:  # the pattern admits only decimals; kept for the type's sake
        raise KeyInputError(field, f"not a number: {match[1]!r}") from None
    if usd <= 0:
        raise KeyInputError(field, f"must be above 0; got {text!r}")
    return KeyBudget(usd, "day" if match[2] == "day" else "month")


class KeyManager:
    def __init__(
        self, store: KeyStore, config_names: Collection[str] = (), clock: Callable[[], float] = time.time
    ) -> None:
        """``config_names``: the labels of the keys in auth.api_keys, which a stored key may not take."""
        self._store = store
        self._config_names = frozenset(config_names)
        self._clock = clock

    def create(
        self,
        tenant: str,
        *,
        name: str | None = None,
        expires_in_s: float | None = None,
        admin: bool = False,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: KeyBudget | None = None,
    ) -> NewSecret:
        if not 0 < len(tenant) <= MAX_TENANT or not tenant.isprintable() or tenant != tenant.strip():
            raise KeyInputError("tenant", f"must be 1-{MAX_TENANT} printable characters without edge spaces")
        key_id = new_key_id()
        name = key_id if name is None else name
        if not TIER_NAME.match(name):
            raise KeyInputError(
                "name",
                f"must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; got {name!r}",
            )
        if name in self._config_names:
            raise KeyInputError("name", f"a key in auth.api_keys is named {name!r}")
        for field, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value <= 0:
                raise KeyInputError(field, f"must be above 0; got {value}")
        if expires_in_s is not None and not expires_in_s > 0:
            raise KeyInputError("expires_in_s", f"must be above 0; got {expires_in_s}")
        now = self._clock()
        secret = new_secret()
        record = KeyRecord(
            id=key_id,
            name=name,
            tenant=tenant,
            secret_sha256=sha256_hex(secret),
            created_at=now,
            admin=admin,
            expires_at=None if expires_in_s is None else now + expires_in_s,
            rpm=rpm,
            tpm=tpm,
            budget=budget,
        )
        try:
            self._store.insert(record)
        except KeyConflict:
            raise KeyInputError("name", f"a stored key is named {name!r} already") from None
        return NewSecret(record, secret)

    def list(self, tenant: str | None = None) -> list[KeyRecord]:
        _, records = self._store.load()
        return [r for r in records if tenant is None or r.tenant == tenant]

    def find(self, ref: str, tenant: str | None = None) -> KeyRecord:
        """The key with id or name ``ref`` (of ``tenant``, when given)."""
        for record in self.list(tenant):
            if ref in (record.id, record.name):
                return record
        raise KeyInputError("key", f"no stored key with id or name {ref!r}")

    def revoke(self, ref: str, tenant: str | None = None) -> KeyRecord:
        """Revoked from now on (a second revoke keeps the first time)."""
        record = self.find(ref, tenant)
        if record.revoked_at is not None:
            return record
        return self._replace(replace(record, revoked_at=self._clock()))

    def rotate(self, ref: str, *, grace_s: float = 0.0, tenant: str | None = None) -> NewSecret:
        """A new secret for the key; the old one opens it for ``grace_s`` more, then is revoked.
        Only one old secret is kept: rotating again within a grace period ends the earlier one's."""
        if not grace_s >= 0:
            raise KeyInputError("grace_s", f"must be 0 or more; got {grace_s}")
        record = self.find(ref, tenant)
        now = self._clock()
        state = record.state(now)
        if state != "active":
            raise KeyInputError("key", f"key {record.name!r} is {state}; create a new one")
        secret = new_secret()
        rotated = replace(
            record,
            secret_sha256=sha256_hex(secret),
            previous_sha256=record.secret_sha256,
            previous_until=now + grace_s,
        )
        return NewSecret(self._replace(rotated), secret)

    def _replace(self, record: KeyRecord) -> KeyRecord:
        try:
            self._store.replace(record)
        except KeyNotFound:  # removed under us: no store here deletes keys, but say so if one does
            raise KeyInputError("key", f"key {record.id!r} is gone from the store") from None
        return record


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


class KeyDescription(TypedDict):
    id: str
    name: str
    tenant: str
    admin: bool
    state: str
    created_at: str
    expires_at: str
    revoked_at: str
    rpm: int
    tpm: int
    budget_usd: str
    budget_window: str
    previous_secret_until: str


def describe(record: KeyRecord, now: float) -> KeyDescription:
    """What a listing shows of a key (never a secret or its digest), shaped as ``ApiKeyInfo``."""
    budget = record.budget
    state = record.state(now)
    rotated = state == "active" and record.previous_until is not None and record.previous_until > now
    return KeyDescription(
        id=record.id,
        name=record.name,
        tenant=record.tenant,
        admin=record.admin,
        state=state,
        created_at=_iso(record.created_at),
        expires_at=_iso(record.expires_at),
        revoked_at=_iso(record.revoked_at),
        rpm=record.rpm or 0,
        tpm=record.tpm or 0,
        budget_usd="" if budget is None else str(budget.usd),
        budget_window="" if budget is None else budget.window,
        previous_secret_until=_iso(record.previous_until) if rotated else "",
    )


def key_budgets(records: Iterable[KeyRecord]) -> list[BudgetConfig]:
    """The stored keys' budgets as the budget manager holds them (``tenant/key:NAME/window``), so
    a key's budget reserves, degrades and alerts as one in the config's ``budgets`` does."""
    return [
        BudgetConfig(tenant=r.tenant, key=r.name, window=r.budget.window, usd=r.budget.usd)
        for r in records
        if r.budget is not None
    ]
