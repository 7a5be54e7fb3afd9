"""Who may read ``/metrics``, and what a tenant's key sees there.

Series carry tenant, feature and budget names, so ``metrics.scrape_key_sha256`` makes the
endpoint ask for a key: the scrape key or an admin API key sees every series, a tenant's API key
only the series labelled with its tenant and its own budgets (a series without a tenant label
sums every tenant's traffic, so a tenant key does not get it). The key travels as
``Authorization: Bearer <key>`` or as the password of HTTP Basic auth, as Prometheus's
``authorization`` and ``basic_auth`` scrape settings send it. Without a scrape key configured a
request without credentials sees everything, as before; one that brings credentials still has
them checked, so a tenant's key never lists other tenants.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import Metric

from tierwise.router.auth import Authenticator, Unauthenticated, sha256_hex


def bearer_metadata(header: str) -> str:
    """An HTTP Authorization header (Bearer, or Basic with the key as password) as the gRPC
    metadata value ``Authenticator`` reads."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return header
    try:
        _, _, key = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("malformed Basic credentials") from None
    return f"Bearer {key}"


class TenantScope:
    """Keeps the samples labelled with one tenant, or with one of that tenant's budgets."""

    def __init__(self, tenant: str, budget_tenants: Mapping[str, str]) -> None:
        self.tenant = tenant
        self._budgets = frozenset(name for name, owner in budget_tenants.items() if owner == tenant)

    def _keeps(self, labels: Mapping[str, str]) -> bool:
        return labels.get("tenant") == self.tenant or labels.get("budget") in self._budgets

    def __call__(self, families: Iterable[Metric]) -> list[Metric]:
        out = []
        for family in families:
            samples = [s for s in family.samples if self._keeps(s.labels)]
            if samples:
                kept = copy.copy(family)
                kept.samples = samples
                out.append(kept)
        return out


class ScrapeAccess:
    def __init__(
        self,
        scrape_key_sha256: str | None,
        api_keys: Authenticator | None,
        budget_tenants: Callable[[], Mapping[str, str]],
    ) -> None:
        """``api_keys``: the service's authenticator when it checks API keys (None in auth mode
        ``none``, where every caller would pass); ``budget_tenants``: budget name -> its tenant, asked
        at each scrape (stored keys' budgets come and go)."""
        self._scrape_key = scrape_key_sha256
        self._api_keys = api_keys
        self._budget_tenants = budget_tenants

    @property
    def challenge(self) -> str:
        return 'Bearer realm="tierwise metrics"'

    def scope(self, header: str | None, source: str) -> TenantScope | None:
        """None: every series. Raises ``Unauthenticated`` (its message names what is wrong, never the key);
        a tenant key goes through the API keys' check, so ``source`` (the caller's address) is throttled
        there like any caller's."""
        if header is None:
            if self._scrape_key is None:
                return None
            raise Unauthenticated("/metrics needs 'Authorization: Bearer <scrape key>'")
        metadata = bearer_metadata(header)
        scheme, _, key = metadata.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization must be 'Bearer <key>' or Basic with the key as password")
        if self._scrape_key is not None and hmac.compare_digest(sha256_hex(key.strip()), self._scrape_key):
            return None
        if self._api_keys is None:
            raise Unauthenticated("unknown scrape key")
        caller = self._api_keys.caller_for([("authorization", metadata)], source)
        return None if caller.admin else TenantScope(caller.tenant, self._budget_tenants())
