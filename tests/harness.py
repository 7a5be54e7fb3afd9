"""Start a real tierwise gRPC server on a free port, in the test's event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tierwise.router.auth import sha256_hex
from tierwise.router.config import Config, parse_config
from tierwise.router.server import TierwiseServer
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

API_KEY = "test-key-acme"
OTHER_KEY = "test-key-globex"
AUTH = (("authorization", f"Bearer {API_KEY}"),)
OTHER_AUTH = (("authorization", f"Bearer {OTHER_KEY}"),)

SMALL_PRICE = {"input_per_mtok": "0.5", "output_per_mtok": "1.5", "cached_input_per_mtok": "0.25"}
LARGE_PRICE = {"input_per_mtok": "3", "output_per_mtok": "15"}


def config_dict(store: Path, openai_url: str, anthropic_url: str, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "grace_period_s": 5},
        "auth": {
            "api_keys": [
                {"key_sha256": sha256_hex(API_KEY), "tenant": "acme"},
                {"key_sha256": sha256_hex(OTHER_KEY), "tenant": "globex"},
            ]
        },
        "tiers": [
            {
                "name": "small",
                "provider": "openai",
                "base_url": openai_url,
                "model": "small-model",
                "price": SMALL_PRICE,
                "max_output_tokens": 512,
                "timeout_s": 5,
                # A fake upstream answers in milliseconds, so a learned timeout is its 2 s floor,
                # which a loaded CI machine's scheduling spike can pass; tests of it turn it on.
                "adaptive_timeout": False,
            },
            {
                "name": "large",
                "provider": "anthropic",
                "base_url": anthropic_url,
                "model": "large-model",
                "price": LARGE_PRICE,
                "max_output_tokens": 2048,
                "timeout_s": 5,
                "adaptive_timeout": False,
            },
        ],
        "store": {"kind": "embedded", "path": str(store)},
        # Off unless a test turns it on: repeated prompts in fault tests must reach the upstream.
        "cache": {"enabled": False},
        "logging": {"level": "WARNING"},
    }
    for key, value in sections.items():
        data[key] = value
    return data


@dataclass
class Running:
    server: TierwiseServer
    channel: grpc.aio.Channel
    stub: pb_grpc.RouterStub
    config: Config

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def http_url(self) -> str:
        """The OpenAI-compatible HTTP front's base URL (config ``server.http_port`` set)."""
        return f"http://127.0.0.1:{self.server.http_port}/v1"


@contextlib.asynccontextmanager
async def running_server(config: Config) -> AsyncIterator[Running]:
    server = TierwiseServer(await build_service(config))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, channel, pb_grpc.RouterStub(channel), config)
    finally:
        await channel.close(None)
        await server.stop(grace_s=1)


def build_config(data: dict[str, Any]) -> Config:
    return parse_config(data)


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error ``call`` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def unavailable_details(svc: Running, request: pb.CompleteRequest) -> str:
    """Send ``request`` as acme: it must fail with UNAVAILABLE; the error's details."""
    error = await rpc_error(svc.stub.Complete(request, metadata=AUTH))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    return error.details() or ""
