"""How the plain-text HTTP endpoints (``/metrics``, the dashboard) turn away a caller the
authenticator refused: the statuses the gRPC codes and the OpenAI-compatible front give."""

from __future__ import annotations

from aiohttp import web

from tierwise.router.auth import AuthThrottled, KeyStoreDown, Unauthenticated


def refusal(exc: Unauthenticated, challenge: str) -> web.HTTPException:
    """429 with Retry-After for a throttled source; 503 when the key store cannot be read (not the
    caller's fault, UNAVAILABLE over gRPC); 401 with the ``WWW-Authenticate`` challenge otherwise."""
    text = f"{exc}\n"
    if isinstance(exc, AuthThrottled):
        return web.HTTPTooManyRequests(text=text, headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, KeyStoreDown):
        return web.HTTPServiceUnavailable(text=text)
    return web.HTTPUnauthorized(text=text, headers={"WWW-Authenticate": challenge})
