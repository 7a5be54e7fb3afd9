"""/metrics through the real server: caller-chosen feature names add a bounded number of series
(the ledger keeps every name), the scrape key guards the endpoint, a tenant's key lists no
other tenant's names on /metrics or /dashboard, and pages built off the loop do not starve it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import AUTH, OTHER_AUTH, Running, build_config, running_server
from tests.test_accounting_server import metered_config, tagged_request
from tierwise.router.auth import sha256_hex

SCRAPE_KEY = "scrape-key-7f3a"
ADMIN_KEY = "test-key-ops-admin"
ALLOWED = ("chat",)
MAX_FEATURES = 5
UNIQUE = 10_000


def series(text: str) -> list[dict[str, str]]:
    """Every series in an exposition, as its labels (with the sample name under ``__name__``)."""
    return [
        {"__name__": s.name, **s.labels}
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **metrics: Any) -> AsyncIterator[tuple[Running, str]]:
    """A server with a metrics port, an admin key, a budget per tenant and ``metrics`` settings."""
    async with metered_config(tmp_path) as data:
        data["auth"]["api_keys"].append({"key_sha256": sha256_hex(ADMIN_KEY), "tenant": "ops", "admin": True})
        data["budgets"] = [
            {"tenant": "acme", "window": "month", "usd": "100"},
            {"tenant": "globex", "feature": "chat", "window": "day", "usd": "50"},
        ]
        data["metrics"] = metrics
        async with running_server(build_config(data)) as svc:
            yield svc, f"http://127.0.0.1:{svc.server.metrics_port}"


async def _complete(svc: Running, features: list[str], auth: Any = AUTH, concurrency: int = 64) -> None:
    queue = list(reversed(features))

    async def worker() -> None:
        while queue:
            feature = queue.pop()
            await svc.stub.Complete(
                tagged_request(f"prompt for {feature}", feature, "small", "red"), metadata=auth
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@pytest.mark.asyncio
async def test_ten_thousand_feature_names_add_no_series_beyond_the_configured_bound(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, features=list(ALLOWED), max_features=MAX_FEATURES) as (svc, base),
        httpx.AsyncClient() as client,
    ):
        first = ["chat", *(f"early-{i}" for i in range(MAX_FEATURES)), "one-too-many"]
        await _complete(svc, first, concurrency=1)  # in order: the early ones are admitted
        before = series((await client.get(f"{base}/metrics")).text)
        await _complete(svc, [f"unique-{i}" for i in range(UNIQUE)])
        after = series((await client.get(f"{base}/metrics")).text)

        features = {s["feature"] for s in after if "feature" in s}
        assert features == {"chat", *(f"early-{i}" for i in range(MAX_FEATURES)), "other"}
        assert len(after) == len(before)  # the 10,000 names all went to the existing "other" series
        requests = [s for s in after if s["__name__"] == "tierwise_requests_total"]
        other = [s for s in requests if s["feature"] == "other"]
        assert len(other) == 1
        text = (await client.get(f"{base}/metrics")).text
        assert "unique-" not in text and "one-too-many" not in text

        ledger = svc.server.service.accounting.ledger
        assert ledger is not None and await ledger.flush(60)
        stored = await ledger.totals(0, 4e9, ["feature"])
        assert len(stored) == len(first) + UNIQUE  # the ledger keeps every name


@pytest.mark.asyncio
async def test_a_configured_scrape_key_guards_metrics(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, scrape_key_sha256=sha256_hex(SCRAPE_KEY)) as (svc, base),
        httpx.AsyncClient() as client,
    ):
        await _complete(svc, ["chat"])
        await _complete(svc, ["chat"], auth=OTHER_AUTH)
        url = f"{base}/metrics"
        missing = await client.get(url)
        assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "tenant" not in missing.text
        for wrong in ({"Authorization": "Bearer not-the-key"}, {"Authorization": f"Token {SCRAPE_KEY}"}):
            assert (await client.get(url, headers=wrong)).status_code == 401
        bearer = await client.get(url, headers={"Authorization": f"Bearer {SCRAPE_KEY}"})
        basic = await client.get(url, auth=("prometheus", SCRAPE_KEY))
        admin = await client.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        for response in (bearer, basic, admin):
            assert response.status_code == 200
            tenants = {s["tenant"] for s in series(response.text) if "tenant" in s}
            assert tenants == {"acme", "globex"}
        health = await client.get(f"{base}/healthz")
        assert health.status_code == 200  # liveness carries no names and stays open


@pytest.mark.asyncio
@pytest.mark.parametrize("scrape_key", [None, SCRAPE_KEY])
async def test_a_tenant_key_sees_only_its_own_tenant(tmp_path: Path, scrape_key: str | None) -> None:
    settings = {} if scrape_key is None else {"scrape_key_sha256": sha256_hex(scrape_key)}
    async with serving(tmp_path, **settings) as (svc, base), httpx.AsyncClient() as client:
        await _complete(svc, ["acme-secret-feature"])
        await _complete(svc, ["globex-secret-feature", "chat"], auth=OTHER_AUTH)
        everything = await client.get(
            f"{base}/metrics", headers={} if scrape_key is None else {"Authorization": f"Bearer {scrape_key}"}
        )
        assert "globex-secret-feature" in everything.text and 'budget="globex/chat/day"' in everything.text

        own = await client.get(f"{base}/metrics", headers=dict(AUTH))
        assert own.status_code == 200
        found = series(own.text)
        assert {s.get("tenant") for s in found if "budget" not in s} == {"acme"}
        assert {s["budget"] for s in found if "budget" in s} == {"acme/*/month"}
        assert {s["feature"] for s in found if "feature" in s} == {"acme-secret-feature"}
        assert "globex" not in own.text

        ledger = svc.server.service.accounting.ledger
        assert ledger is not None and await ledger.flush(10)  # the dashboard reads what was stored
        page = await client.get(f"{base}/dashboard", params={"since": "1h"}, headers=dict(AUTH))
        assert page.status_code == 200 and "acme-secret-feature" in page.text
        assert "globex" not in page.text

        unknown = await client.get(f"{base}/metrics", headers={"Authorization": "Bearer not-a-key"})
        assert unknown.status_code == 401


@pytest.mark.asyncio
async def test_dashboards_loaded_at_once_leave_the_servers_worker_threads_free(tmp_path: Path) -> None:
    # Pages are built in a worker thread and read the ledger through the loop's default pool; built
    # in that same pool, more pages than it has threads would wait on each other's reads for ever.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
    async with serving(tmp_path) as (svc, base), httpx.AsyncClient(timeout=None) as client:
        await _complete(svc, ["chat", "search"])
        ledger = svc.server.service.accounting.ledger
        assert ledger is not None and await ledger.flush(10)
        loads = [
            client.get(f"{base}/dashboard", params={"since": "1h"}, auth=("ops", ADMIN_KEY)) for _ in range(5)
        ]
        pages = await asyncio.wait_for(asyncio.gather(*loads), timeout=60)  # a deadlock, not a speed limit
        assert [p.status_code for p in pages] == [200] * 5
        assert all('"search"' in p.text for p in pages)
