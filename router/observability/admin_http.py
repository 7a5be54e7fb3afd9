"""The operator's HTTP port (``server.metrics_port``): ``/metrics``, ``/healthz`` (and ``/dashboard``,
added by ``tierwise.router.analytics.dashboard_http``).

``app`` is a plain aiohttp application: other parts (a dashboard, say) add their
routes to it before ``start``; aiohttp freezes the router once it runs.

A scrape encodes in a worker thread: the text grows with the series, and encoding it on
the event loop would hold up every request the process is serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from tierwise.router.auth import Unauthenticated
from tierwise.router.http_refusal import refusal
from tierwise.router.observability.metrics import Metrics
from tierwise.router.observability.scrape_access import ScrapeAccess, TenantScope

log = logging.getLogger("tierwise.admin")

HealthCheck = Callable[[], bool]
Refresher = Callable[[], Awaitable[None]]
Encoder = Callable[[CollectorRegistry], bytes]


OPEN = ScrapeAccess(None, None, dict)


class AdminServer:
    def __init__(self, metrics: Metrics, access: ScrapeAccess = OPEN) -> None:
        self.metrics = metrics
        self.access = access
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._serve_metrics)
        self.app.router.add_get("/healthz", self._serve_health)
        self._checks: dict[str, HealthCheck] = {}
        self._refreshers: list[Refresher] = []
        self.refresh_timeout_s = 2.0
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add_check(self, name: str, check: HealthCheck) -> None:
        """``/healthz`` answers 503 while any check returns False (or raises)."""
        self._checks[name] = check

    def add_refresher(self, refresh: Refresher) -> None:
        """Run before each scrape, e.g. to read budget usage from its store into gauges.

        One that fails or outlasts ``refresh_timeout_s`` is logged; the scrape still answers
        with the values last set.
        """
        self._refreshers.append(refresh)

    async def _refresh(self, refresh: Refresher) -> None:
        try:
            await asyncio.wait_for(refresh(), self.refresh_timeout_s)
        except Exception as exc:
            log.warning("metrics refresh failed", extra={"error": repr(exc)})

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        try:
            scope = self.access.scope(request.headers.get("Authorization"), request.remote or "")
        except Unauthenticated as exc:
            raise refusal(exc, self.access.challenge) from None
        await asyncio.gather(*(self._refresh(r) for r in self._refreshers))
        watched = self.metrics.watched()  # on the loop: these read state the loop owns
        # Prometheus text or OpenMetrics, whichever the scraper asks for.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(self._encode, encode, watched, scope)
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    def _encode(self, encode: Encoder, watched: list[Metric], scope: TenantScope | None) -> bytes:
        return encode(self.metrics.view(watched, scope))

    async def _serve_health(self, request: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception:
                results[name] = False
        healthy = all(results.values())
        return web.json_response(
            {"status": "ok" if healthy else "unhealthy", "checks": results}, status=200 if healthy else 503
        )

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port); returns the bound port."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
