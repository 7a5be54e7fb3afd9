"""Caller authentication: an API key in metadata maps to a tenant.

Keys are held only as SHA-256 digests. The tenant comes from the key alone; a
tenant named in a request body is never trusted. Every failure is counted by
reason and logged with its source address (never the key); a source that fails
too often is refused for a while without a key check (``auth_throttle``).

Keys come from the config (``auth.api_keys``) and, beside them, from the key store
(``tierwise.router.keys``), which the server hands in as a ``KeyLookup``; a config key wins
when both know a digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc

from tierwise.router.auth_throttle import FailureThrottle
from tierwise.router.config import AuthConfig

log = logging.getLogger("tierwise.auth")

Metadata = Iterable[tuple[str, str | bytes]]


class Unauthenticated(Exception):
    """No usable credentials; the message says what was missing, never the key.

    ``reason`` is a short code for the failure counter: missing, malformed, duplicate,
    unknown_key, throttled.
    """

    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class KeyStoreDown(Unauthenticated):
    """The key is not in the config and the key store could not be read recently enough to say."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self) -> None:
        super().__init__("authorization: the API key store cannot be read; try again shortly", "store_down")


class AuthThrottled(Unauthenticated):
    """The source failed too often lately: refused without looking at its credentials."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(
            f"authorization: too many failed attempts from your address; try again in {self.retry_after_s}s",
            "throttled",
        )


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    admin: bool = False
    key: str = ""  # the key's label (its name or digest prefix) for rate limits; "" without keys
    rpm: int | None = None  # the key's own rate limits
    tpm: int | None = None


class StoredKey(Protocol):
    @property
    def tenant(self) -> str: ...
    @property
    def admin(self) -> bool: ...
    @property
    def name(self) -> str: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...


class KeyLookup(Protocol):
    """The stored keys (``tierwise.router.keys.StoredKeys``)."""

    def lookup(self, digest: str) -> StoredKey | str:
        """The key, or why none: revoked, expired, unknown, store_down."""
        ...

    async def refresh_on_miss(self) -> bool:
        """Read the store now if it may know a key the snapshot does not; True when it changed."""
        ...


_REFUSALS = {"revoked": "key revoked", "expired": "key expired", "unknown": "unknown API key"}


class Authenticator:
    def __init__(
        self,
        config: AuthConfig,
        on_failure: Callable[[str], None] | None = None,
        stored: KeyLookup | None = None,
    ) -> None:
        """``on_failure`` is told each failure's reason (the metrics counter); ``stored``: the keys
        kept as data, beside the config's."""
        self._mode = config.mode
        self._open_tenant = config.tenant
        self._keys = tuple(
            (k.key_sha256, Caller(k.tenant, k.admin, k.label, k.rpm, k.tpm)) for k in config.api_keys
        )
        self._stored = stored
        self._throttle = FailureThrottle(config.throttle)
        self._on_failure = on_failure

    def caller_for(self, metadata: Metadata, source: str) -> Caller:
        """The caller the metadata's key belongs to; ``source`` is the caller's address."""
        if self._mode == "none":
            assert self._open_tenant is not None  # the config guarantees it
            return Caller(self._open_tenant, admin=True)  # local use: one trusted caller
        self._throttled(source)
        try:
            return self._check(metadata)
        except Unauthenticated as exc:
            self._failed(exc, source)
            raise

    async def authenticate(self, metadata: Metadata, source: str) -> Caller:
        """``caller_for``, but a key the stored snapshot does not know makes it read the store
        first (a key created a moment ago works at once)."""
        if self._mode == "none" or self._stored is None:
            return self.caller_for(metadata, source)
        self._throttled(source)
        try:
            try:
                return self._check(metadata)
            except Unauthenticated as exc:
                if exc.reason != "unknown_key" or not await self._stored.refresh_on_miss():
                    raise
                return self._check(metadata)
        except Unauthenticated as exc:
            self._failed(exc, source)
            raise

    def _throttled(self, source: str) -> None:
        wait = self._throttle.retry_after(source)
        if wait is not None:
            self._count("throttled")  # not logged: its start was, and a flood would be
            raise AuthThrottled(wait)

    def _failed(self, exc: Unauthenticated, source: str) -> None:
        self._count(exc.reason)
        if exc.reason == "store_down":  # not the caller's failure: logged by the store, not throttled
            return
        log.warning("authentication failed", extra={"source": source, "reason": exc.reason})
        if self._throttle.failed(source):
            log.warning(
                "authentication throttled",
                extra={"source": source, "window_s": self._throttle.window_s},
            )

    def _count(self, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure(reason)

    def _check(self, metadata: Metadata) -> Caller:
        headers = [
            value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            for name, value in metadata
            if name.lower() == "authorization"
        ]
        if not headers:
            raise Unauthenticated("missing 'authorization: Bearer <key>' metadata", "missing")
        if len(headers) > 1:
            # Proxies and servers disagree on which of several wins; refuse rather than pick.
            raise Unauthenticated(
                f"authorization: {len(headers)} entries in the metadata; send exactly one", "duplicate"
            )
        scheme, _, key = headers[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
        digest = sha256_hex(key.strip())
        caller = None
        # Compare against every key in constant time so timing reveals nothing.
        for known, known_caller in self._keys:
            if hmac.compare_digest(known, digest):
                caller = known_caller
        if caller is not None:
            return caller
        if self._stored is None:
            raise Unauthenticated(_REFUSALS["unknown"], "unknown_key")
        found = self._stored.lookup(digest)
        if isinstance(found, str):
            if found == "store_down":
                raise KeyStoreDown()
            # Says which (revoked, expired) but never whose: no tenant or name in the message.
            raise Unauthenticated(_REFUSALS[found], "unknown_key" if found == "unknown" else found)
        return Caller(found.tenant, found.admin, found.name, found.rpm, found.tpm)
