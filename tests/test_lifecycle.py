"""Start-up and shutdown: one exit stack opens in order and closes in reverse, also when a start fails."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import build_config, config_dict
from tests.upstream import ScriptedUpstream
from tierwise.cache.sqlite_store import SqliteEntryStore
from tierwise.router.budgets.manager import BudgetManager
from tierwise.router.caching import ResponseCache
from tierwise.router.config import Config, ConfigError
from tierwise.router.cpu_workers import CpuWorkers
from tierwise.router.feedback.factory import open_feedback_store
from tierwise.router.feedback.redis_store import RedisFeedbackStore
from tierwise.router.feedback.store import SqliteFeedbackStore
from tierwise.router.learning.loop import LearningLoop
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.observability.anomaly import AnomalyChecker
from tierwise.router.observability.tracing import Tracing
from tierwise.router.providers.anthropic import AnthropicProvider
from tierwise.router.providers.openai import OpenAIProvider
from tierwise.router.server import TierwiseServer
from tierwise.router.service import Service, ServingEmbedder, build_service

# What build_service opens (constructor) and how each is closed.
SERVICE_PARTS: list[tuple[type[Any], str]] = [
    (Tracing, "shutdown"),
    (CpuWorkers, "aclose"),  # the request workers
    (OpenAIProvider, "aclose"),
    (AnthropicProvider, "aclose"),
    (ServingEmbedder, "aclose"),  # the batcher the request path uses
    (SqliteEntryStore, "aclose"),
    (ResponseCache, "aclose"),
    (SpendLedger, "aclose"),
    (BudgetManager, "aclose"),  # after the ledger: it rebuilds budget usage Redis loses from it
    (SqliteFeedbackStore, "aclose"),
    (LearningLoop, "aclose"),
]


class Lifecycle:
    """Records every tracked object as its constructor returns, and its first close."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, parts: list[tuple[type[Any], str]]) -> None:
        self.opened: list[tuple[str, int]] = []
        self.closed: list[tuple[str, int]] = []
        self.objects: list[Any] = []
        for cls, close in parts:
            monkeypatch.setattr(cls, "__init__", self._opening(cls, cls.__init__))
            monkeypatch.setattr(cls, close, self._closing(cls, getattr(cls, close)))

    def _opening(self, cls: type[Any], init: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(init)
        def wrapper(obj: Any, *args: Any, **kwargs: Any) -> None:
            init(obj, *args, **kwargs)
            if type(obj) is cls:  # a subclass records itself, once
                self.opened.append((cls.__name__, id(obj)))
                self.objects.append(obj)

        return wrapper

    def _closing(self, cls: type[Any], close: Callable[..., Any]) -> Callable[..., Any]:
        def note(obj: Any) -> None:
            key = (cls.__name__, id(obj))
            if key not in self.closed:  # an idempotent second close (the cache's store) is not news
                self.closed.append(key)

        if cls is Tracing:  # the one synchronous close

            @functools.wraps(close)
            def sync_wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
                note(obj)
                return close(obj, *args, **kwargs)

            return sync_wrapper

        @functools.wraps(close)
        async def wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
            note(obj)
            return await close(obj, *args, **kwargs)

        return wrapper

    def names(self, events: list[tuple[str, int]]) -> list[str]:
        return [name for name, _ in events]


def service_config(store: Path, upstream: ScriptedUpstream, **learning: Any) -> Config:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    data["cache"] = {"enabled": True, "verifier": "cosine"}  # the entry store and the embedder open too
    data["learning"] = {"sampling": {"rate": 1.0}, **learning}
    return build_config(data)


def assert_closed_in_reverse(lifecycle: Lifecycle) -> None:
    assert lifecycle.closed == lifecycle.opened[::-1]
    providers = [o for o in lifecycle.objects if isinstance(o, OpenAIProvider | AnthropicProvider)]
    assert [p._http._client.is_closed for p in providers] == [True, True]  # really closed


@pytest.fixture
def service_parts(monkeypatch: pytest.MonkeyPatch) -> Lifecycle:
    return Lifecycle(monkeypatch, SERVICE_PARTS)


@pytest.fixture
def server_parts(monkeypatch: pytest.MonkeyPatch) -> Lifecycle:
    return Lifecycle(monkeypatch, [*SERVICE_PARTS, (AnomalyChecker, "aclose"), (Service, "aclose")])


@pytest.mark.asyncio
async def test_a_start_that_fails_late_closes_what_it_opened_in_reverse(
    tmp_path: Path, upstream: ScriptedUpstream, service_parts: Lifecycle
) -> None:
    # The judge is looked up once every store and client but the learning loop has opened.
    config = service_config(tmp_path / "var", upstream, judge={"kind": "no-such-judge"})
    with pytest.raises(ConfigError, match="no judge 'no-such-judge'"):
        await build_service(config)
    assert service_parts.names(service_parts.opened) == [
        "Tracing",
        "CpuWorkers",
        "OpenAIProvider",
        "AnthropicProvider",
        "ServingEmbedder",
        "SqliteEntryStore",
        "ResponseCache",
        "SpendLedger",
        "BudgetManager",
        "SqliteFeedbackStore",
    ]
    assert_closed_in_reverse(service_parts)
    store = next(o for o in service_parts.objects if isinstance(o, SqliteEntryStore))
    assert store._closed and not store._connections


@pytest.mark.asyncio
async def test_aclose_closes_everything_in_reverse_order_once(
    tmp_path: Path, upstream: ScriptedUpstream, service_parts: Lifecycle
) -> None:
    service = await build_service(service_config(tmp_path / "var", upstream))
    assert service_parts.names(service_parts.opened) == [cls.__name__ for cls, _ in SERVICE_PARTS]
    assert not service_parts.closed
    await service.aclose()
    assert_closed_in_reverse(service_parts)
    await service.aclose()  # a second close is a no-op
    assert len(service_parts.closed) == len(service_parts.opened)


async def server_for(store: Path, upstream: ScriptedUpstream, **server: Any) -> TierwiseServer:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    data["server"].update(server)
    return TierwiseServer(await build_service(build_config(data)))


def assert_stopped_in_reverse(lifecycle: Lifecycle) -> None:
    """What start() began (the anomaly checker), then the service and every store and client in it."""
    assert lifecycle.names(lifecycle.closed)[:2] == ["AnomalyChecker", "Service"]
    assert_closed_in_reverse(lifecycle)


@pytest.mark.asyncio
async def test_a_server_that_cannot_listen_closes_what_it_started_and_the_service(
    tmp_path: Path, upstream: ScriptedUpstream, server_parts: Lifecycle
) -> None:
    # TEST-NET: not an address of this host, so the bind fails.
    server = await server_for(tmp_path / "var", upstream, host="192.0.2.1", metrics_port=0)
    ledger = server.service.accounting.ledger
    assert ledger is not None
    # The gRPC port is bound last: the ledger, the anomaly checker and the learning loop started first.
    with pytest.raises((OSError, RuntimeError), match=r"192\.0\.2\.1"):
        await server.start()
    assert_stopped_in_reverse(server_parts)
    assert ledger._tasks and all(task.done() for task in ledger._tasks)  # its writer has ended
    await server.stop()  # a no-op after the failed start: nothing is closed twice
    assert len(server_parts.closed) == len(server_parts.opened)


@pytest.mark.asyncio
async def test_server_stop_closes_in_reverse_of_start(
    tmp_path: Path, upstream: ScriptedUpstream, server_parts: Lifecycle
) -> None:
    server = await server_for(tmp_path / "var", upstream, metrics_port=free_port())  # admin HTTP too
    await server.start()
    assert server.admin is not None and server.metrics_port > 0 and not server_parts.closed
    await server.stop(grace_s=0)
    assert server.admin is None  # the admin HTTP server was stopped
    assert_stopped_in_reverse(server_parts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_a_feedback_stream_that_fails_to_open_closes_the_table_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[str] = []
    monkeypatch.setattr(SqliteFeedbackStore, "close", lambda self: closed.append("table"))

    def refuse(*args: object, **kwargs: object) -> RedisFeedbackStore:
        raise ConnectionError("redis refused")

    monkeypatch.setattr(RedisFeedbackStore, "from_url", refuse)
    data = config_dict(tmp_path, "http://127.0.0.1:9/v1", "http://127.0.0.1:9")
    data["store"] = {"kind": "redis", "url": "redis://127.0.0.1:9/0", "path": str(tmp_path)}
    with pytest.raises(ConnectionError):
        open_feedback_store(build_config(data))
    assert closed == ["table"]
