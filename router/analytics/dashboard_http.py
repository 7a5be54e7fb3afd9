"""``/dashboard`` on the operator's HTTP port, behind the admin API's authentication.

The key travels as ``Authorization: Bearer <key>`` (curl, proxies) or as the
password of HTTP Basic auth, which is what a browser asks a person for after the
401 challenge. A tenant's key sees only its own tenant; an admin key sees all, or
one with ``?tenant=``. The page embeds its data (no second request: browsers do not
resend Basic credentials from a URL to ``fetch``); the charting library and the
page's script are files shipped in the package, so nothing is fetched from outside.

The page is built in a worker thread, on an event loop of its own: summing, bucketing and
clustering a busy window takes seconds, which on the server's loop would stall every request
meanwhile. The builders' reads of the ledger and the judged scores still run on the server's
loop (``_OnLoop``), which owns their connections; the thread only computes over what they return.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from importlib import resources
from typing import Any, TypeVar

from aiohttp import web

from tierwise.router.analytics.clusters import MAX_CLUSTERS, TrafficLookup
from tierwise.router.analytics.dashboard import DEFAULT_CLUSTERS, PanelContext, dashboard_data
from tierwise.router.analytics.quality import JudgedScores
from tierwise.router.analytics.source import parse_since
from tierwise.router.auth import Authenticator, Caller, Unauthenticated
from tierwise.router.config import Config
from tierwise.router.http_refusal import refusal
from tierwise.router.ledger.reports import SpendSource
from tierwise.router.ledger.sql import Sample, SampleQuery, SpendTotals
from tierwise.router.observability.scrape_access import bearer_metadata

_STATIC = {"chart.umd.min.js": "text/javascript", "dashboard.js": "text/javascript"}
_CHALLENGE = 'Basic realm="tierwise dashboard", charset="UTF-8"'
_SECURITY = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src data:",
}


def _static(name: str) -> bytes:
    return resources.files("tierwise.router.analytics").joinpath("static", name).read_bytes()


def _embed(data: object) -> str:
    """JSON safe inside <script type="application/json">: nothing in it can close the element."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


T = TypeVar("T")


class _OnLoop:
    """The spend source and judged scores, awaited from the page's thread, run on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, source: SpendSource, scores: JudgedScores | None):
        self._loop = loop
        self._source = source
        self._scores = scores

    async def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._loop))

    async def totals(
        self, since: float, until: float, by: Sequence[str] = (), filters: Mapping[str, str] | None = None
    ) -> list[SpendTotals]:
        return await self._run(self._source.totals(since, until, by, filters))

    async def samples(self, query: SampleQuery) -> list[Sample]:
        return await self._run(self._source.samples(query))

    async def mean_scores(self, requests: Iterable[tuple[str, str]]) -> dict[tuple[str, str], float]:
        assert self._scores is not None  # handed out as scores only when there are some
        return await self._run(self._scores.mean_scores(list(requests)))


class Dashboard:
    def __init__(
        self,
        source: SpendSource,
        config: Config,
        authenticator: Authenticator,
        scores: JudgedScores | None,
        traffic: TrafficLookup | None = None,
    ) -> None:
        self._source = source
        self._traffic = traffic
        self._config = config
        self._auth = authenticator
        self._scores = scores
        self._files = {name: _static(name) for name in _STATIC}
        self._page = _static("dashboard.html").decode()
        # Its own thread, not the loop's default pool: a page waits on reads that run in that
        # pool, so pages filling it would wait for ever; and one page at a time bounds the CPU.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierwise-dashboard")

    def install(self, app: web.Application) -> None:
        app.router.add_get("/dashboard", self._serve_page)
        app.router.add_get("/dashboard/static/{name}", self._serve_static)
        app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        self._builder.shutdown(wait=False, cancel_futures=True)

    def _caller(self, request: web.Request) -> Caller:
        header = request.headers.get("Authorization")
        try:
            metadata = [] if header is None else [("authorization", bearer_metadata(header))]
            return self._auth.caller_for(metadata, request.remote or "")
        except Unauthenticated as exc:
            raise refusal(exc, _CHALLENGE) from None

    async def _serve_static(self, request: web.Request) -> web.Response:
        self._caller(request)
        name = request.match_info["name"]
        if name not in self._files:
            raise web.HTTPNotFound()
        return web.Response(body=self._files[name], content_type=_STATIC[name], headers=_SECURITY)

    def _context(self, request: web.Request, caller: Caller) -> PanelContext:
        now = time.time()
        query = request.query
        try:
            since = parse_since(query.get("since", "7d"), now)
            until = now if "until" not in query else parse_since(query["until"], now)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        if until <= since:
            raise web.HTTPBadRequest(text="until: must be after since\n")
        clusters = query.get("clusters", str(DEFAULT_CLUSTERS))
        digits = clusters.isascii() and clusters.isdigit() and len(clusters) <= len(str(MAX_CLUSTERS))
        if not (digits and 1 <= int(clusters) <= MAX_CLUSTERS):
            raise web.HTTPBadRequest(text=f"clusters: a whole number from 1 to {MAX_CLUSTERS}\n")
        tenant = query.get("tenant") or None
        if not caller.admin:
            if tenant not in (None, caller.tenant):
                raise web.HTTPForbidden(text="tenant: only admin keys see other tenants\n")
            tenant = caller.tenant
        return PanelContext(
            self._source, self._config, self._scores, since, until, tenant, self._traffic, int(clusters)
        )

    async def _serve_page(self, request: web.Request) -> web.Response:
        context = self._context(request, self._caller(request))
        reads = _OnLoop(asyncio.get_running_loop(), context.source, context.scores)
        context = replace(context, source=reads, scores=None if context.scores is None else reads)
        page = await asyncio.get_running_loop().run_in_executor(self._builder, self._render, context)
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=_SECURITY)

    def _render(self, context: PanelContext) -> str:
        """The page, in a worker thread: ``context``'s reads go back to the server's loop."""
        data = asyncio.run(dashboard_data(context))
        return self._page.replace("{{DATA}}", _embed(data))
