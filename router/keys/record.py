"""A stored API key and the ``KeyStore`` protocol every store implements.

A record holds the SHA-256 of its secret, never the secret. A rotation keeps the record (its id,
name, limits and budget go on) and moves the old digest to ``previous_sha256``, which still opens
the key until ``previous_until`` (the grace period) and is refused as revoked after it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

SECRET_PREFIX = "twk_"  # recognisable in logs and by secret scanners
Window = Literal["day", "month"]


class KeyStoreUnavailable(Exception):
    """The store could not be read or written (down, timed out); the message names the store."""


class KeyNotFound(LookupError):
    """No stored key has that id or name."""


class KeyConflict(ValueError):
    """A write would break a rule the store keeps: a second key with one name."""


@dataclass(frozen=True, slots=True)
class KeyBudget:
    usd: Decimal
    window: Window


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    tenant: str
    secret_sha256: str
    created_at: float  # epoch seconds
    admin: bool = False
    expires_at: float | None = None
    revoked_at: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget: KeyBudget | None = None
    previous_sha256: str | None = None  # the secret before the last rotation
    previous_until: float | None = None  # ... which opens the key until then

    def state(self, now: float) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def new_secret() -> str:
    """A fresh key: the prefix and 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


class KeyStore(Protocol):
    """Where stored keys live. ``version`` changes with every write, so a replica polls one
    number and reads the keys only when it moved. Every method raises ``KeyStoreUnavailable``
    when the store cannot answer."""

    name: str  # what log lines and errors call the store

    def version(self) -> int: ...

    def load(self) -> tuple[int, list[KeyRecord]]:
        """Every key (revoked and expired ones too) and the version they are of."""
        ...

    def insert(self, record: KeyRecord) -> None:
        """Add a key; ``KeyConflict`` when its name is taken."""
        ...

    def replace(self, record: KeyRecord) -> None:
        """Overwrite the key with ``record.id``; ``KeyNotFound`` when there is none."""
        ...

    def close(self) -> None: ...
