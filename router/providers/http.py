"""HTTP plumbing shared by the upstream clients: one pooled connection per provider,
per-call deadlines, Server-Sent Events, and the mapping of every HTTP or transport
failure onto ``ProviderError``.

Deadlines: a call's ``timeout_s`` bounds the whole of a non-streaming call; for a
stream it bounds connecting plus receiving the response headers, and then every
gap between two pieces of the body (a stream may run longer than ``timeout_s`` in
total as long as it keeps producing).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import ssl
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

import httpx

from tierwise.router.providers.errors import ErrorType, ProviderError

T = TypeVar("T")

# Error bodies are only read to quote their message; never buffer more than this.
ERROR_BODY_LIMIT = 64 * 1024


def error_type_for_status(status: int) -> ErrorType:
    if status == 429:
        return ErrorType.RATE_LIMITED
    if 500 <= status <= 599:
        return ErrorType.SERVER_ERROR
    if 400 <= status <= 499:
        return ErrorType.CLIENT_ERROR
    # 1xx/3xx never answer a POST that is not redirected: the upstream is not speaking the API.
    return ErrorType.PROTOCOL


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait before retrying, from ``retry-after-ms`` (OpenAI) or ``Retry-After``
    (delay-seconds or an HTTP date, RFC 9110 §10.2.3); None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = _non_negative_float(millis)
        if seconds is not None:
            return seconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an obsolete date form without a zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def _non_negative_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def error_message_from_body(body: bytes | str) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return error_message(data)


def error_message(data: object) -> str | None:
    """The upstream's own explanation from a parsed error payload, whichever common shape it has:
    ``{"error": {"message": ...}}`` (OpenAI, Anthropic, vLLM), ``{"error": "..."}`` (Ollama,
    llama.cpp, TGI), ``{"message": ...}`` or ``{"detail": ...}`` (FastAPI-based servers)."""
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    for value in (error, data.get("message"), data.get("detail")):
        if isinstance(value, str) and value:
            return value
    return None


def _body_excerpt(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "message" when the server named none
    data: str


async def iter_sse(lines: AsyncIterator[str]) -> AsyncGenerator[SseEvent, None]:
    """Server-Sent Events from a body's lines (WHATWG HTML §9.2.6): ``event:`` names, ``data:``
    lines joined with newlines, a blank line dispatches; comments and ids are skipped. An event
    not terminated by a blank line before the body ends is still dispatched: some servers omit
    the last blank line, and a truncated one fails later in JSON parsing anyway."""
    event = ""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SseEvent(event or "message", "\n".join(data))


def parse_json_object(text: str | bytes, what: str) -> dict[str, Any]:
    """A JSON object from the upstream, or ``ValueError`` naming ``what`` was unreadable."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} is a JSON {type(data).__name__}, not an object")
    return data


@cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle takes tens of milliseconds; every client can share one context.
    return httpx.create_ssl_context()


class UpstreamHttp:
    """One provider's pooled HTTP client; every method raises only ``ProviderError``.

    ``kind`` ("openai", "anthropic", "azure_openai") starts every error message, followed by the model; the
    base URL is not in the message but in the error's ``upstream``.
    """

    def __init__(
        self,
        kind: str,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_connections: int = 100,
    ) -> None:
        self.kind = kind
        self.base_url = base_url.rstrip("/")
        address = urllib.parse.urlsplit(self.base_url)
        # Longest first: the whole URL, then host:port, then a host that cannot be a plain word.
        host = address.hostname or ""
        self._address_forms = [f for f in (self.base_url, address.netloc, host) if "." in f or ":" in f]
        self._client = httpx.AsyncClient(
            headers={"user-agent": "tierwise", **headers},
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            verify=_tls_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def failure(self, model: str, error_type: ErrorType, what: str, **kwargs: Any) -> ProviderError:
        # The message reaches callers (statuses, attempts): the upstream's address stays out of
        # it, even where an exception or an error body repeats it; ``upstream`` keeps it for logs.
        for form in self._address_forms:
            what = what.replace(form, "<upstream>")
        return ProviderError(
            error_type, f"{self.kind} model {model!r}: {what}", upstream=self.base_url, **kwargs
        )

    @contextmanager
    def reading(self, model: str, what: str) -> Iterator[None]:
        """Turn a malformed upstream payload (missing key, wrong type) into ``PROTOCOL``."""
        try:
            yield
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise self.failure(
                model, ErrorType.PROTOCOL, f"unreadable {what}: {type(exc).__name__}: {exc}"
            ) from exc

    async def post_json(
        self, path: str, body: Mapping[str, Any], model: str, timeout_s: float
    ) -> dict[str, Any]:
        """POST ``body``; the whole call, body included, must finish within ``timeout_s``."""
        content = await self._bounded(self._exchange(path, body, model, timeout_s), model, timeout_s)
        try:
            return parse_json_object(content, "the response body")
        except ValueError as exc:
            raise self.failure(
                model, ErrorType.PROTOCOL, f"{exc}: {_body_excerpt(content)!r}", http_status=200
            ) from None

    async def post_sse(
        self, path: str, body: Mapping[str, Any], model: str, timeout_s: float
    ) -> AsyncGenerator[SseEvent, None]:
        """POST ``body`` and yield its SSE events; ``timeout_s`` bounds the wait for the response
        headers and then each gap in the stream. The caller decides what a complete stream is."""
        # The deadline covers only the opening: it must not span the consumer's code at a yield.
        response = await self._bounded(self._open(path, body, model, timeout_s), model, timeout_s)
        try:
            async with aclosing(iter_sse(response.aiter_lines())) as events:
                async for event in events:
                    yield event
        except httpx.HTTPError as exc:
            raise self._transport_failure(model, exc, timeout_s, mid_stream=True) from exc
        finally:
            await response.aclose()

    async def _bounded(self, work: Awaitable[T], model: str, timeout_s: float) -> T:
        """``work`` within ``timeout_s`` in all, with its failures as ``ProviderError``."""
        try:
            async with asyncio.timeout(timeout_s):
                return await work
        except TimeoutError:
            raise self.failure(model, ErrorType.TIMEOUT, f"no response within {timeout_s:g}s") from None
        except httpx.HTTPError as exc:
            raise self._transport_failure(model, exc, timeout_s) from exc

    async def _exchange(self, path: str, body: Mapping[str, Any], model: str, timeout_s: float) -> bytes:
        response = await self._open(path, body, model, timeout_s)
        try:
            return await response.aread()
        finally:
            await response.aclose()

    async def _open(self, path: str, body: Mapping[str, Any], model: str, timeout_s: float) -> httpx.Response:
        """Send the request and return once the headers are in; an error status is raised here."""
        request = self._client.build_request(
            "POST", self.base_url + path, json=body, timeout=httpx.Timeout(timeout_s)
        )
        response = await self._client.send(request, stream=True)
        if response.status_code == 200:
            return response
        try:
            error_body = await _read_limited(response, ERROR_BODY_LIMIT)
        finally:
            await response.aclose()
        raise self._status_failure(model, response.status_code, response.headers, error_body)

    def _status_failure(
        self, model: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> ProviderError:
        error_type = error_type_for_status(status)
        detail = error_message_from_body(body) or _body_excerpt(body) or "(empty body)"
        # 429 says when to come back; a 503 may too.
        retry_later = error_type in (ErrorType.RATE_LIMITED, ErrorType.SERVER_ERROR)
        return self.failure(
            model,
            error_type,
            f"HTTP {status} ({error_type.value}): {detail}",
            http_status=status,
            retry_after_s=parse_retry_after(headers) if retry_later else None,
        )

    def event_failure(self, model: str, status: int | None, message: str) -> ProviderError:
        """An error event inside a 200 stream; ``status`` is the HTTP-like code it carries, if any."""
        error_type = ErrorType.SERVER_ERROR if status is None else error_type_for_status(status)
        if error_type is ErrorType.PROTOCOL:
            error_type = ErrorType.SERVER_ERROR
        return self.failure(model, error_type, f"error event mid-stream ({error_type.value}): {message}")

    def _transport_failure(
        self, model: str, exc: httpx.HTTPError, timeout_s: float, *, mid_stream: bool = False
    ) -> ProviderError:
        where = "mid-stream" if mid_stream else "before the response"
        if isinstance(exc, httpx.TimeoutException):
            what = "nothing received for" if mid_stream else f"{type(exc).__name__} after"
            return self.failure(model, ErrorType.TIMEOUT, f"{what} {timeout_s:g}s ({where})")
        if isinstance(exc, httpx.ConnectError):
            return self.failure(model, ErrorType.CONNECTION, f"cannot connect: {exc or type(exc).__name__}")
        if isinstance(exc, httpx.DecodingError):
            return self.failure(model, ErrorType.PROTOCOL, f"undecodable response body ({where}): {exc}")
        # Read/write errors and a peer that closed before the body was complete.
        return self.failure(
            model, ErrorType.CONNECTION, f"connection failed {where}: {exc or type(exc).__name__}"
        )


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


class HttpProvider(ABC):
    """The part every HTTP provider shares: its pooled client, whose headers are the protocol's own
    (authentication included), then the tier's configured ones, which win on a clash."""

    kind: str

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
    ) -> None:
        self._http = UpstreamHttp(
            self.kind,
            base_url,
            {**self._protocol_headers(api_key), **(headers or {})},
            max_connections=max_connections,
        )

    @abstractmethod
    def _protocol_headers(self, api_key: str | None) -> dict[str, str]:
        """The headers this wire protocol sends on every call, the API key's included (if any)."""

    async def aclose(self) -> None:
        await self._http.aclose()
