"""Caller authentication: an API key in metadata maps to a tenant.

Keys are held only as SHA-256 digests. The tenant comes from the key alone; a
tenant named in a request body is never trusted.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from tierwise.router.config import AuthConfig


class Unauthenticated(Exception):
    """No usable credentials; the message says what was missing, never the key."""


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    admin: bool = False


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._mode = config.mode
        self._open_tenant = config.tenant
        self._keys = tuple((k.key_sha256, Caller(k.tenant, k.admin)) for k in config.api_keys)

    def tenant_for(self, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        return self.caller_for(metadata).tenant

    def caller_for(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        if self._mode == "none":
            assert self._open_tenant is not None  # the config guarantees it
            return Caller(self._open_tenant, admin=True)  # local use: one trusted caller
        header = None
        for name, value in metadata:
            if name.lower() == "authorization":
                header = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                break
        if header is None:
            raise Unauthenticated("missing 'authorization: Bearer <key>' metadata")
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
        digest = sha256_hex(key.strip())
        caller = None
        # Compare against every key in constant time so timing reveals nothing.
        for known, known_caller in self._keys:
            if hmac.compare_digest(known, digest):
                caller = known_caller
        if caller is None:
            raise Unauthenticated("unknown API key")
        return caller
