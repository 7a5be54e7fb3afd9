"""The HTTP front's edges: it starts and stops in the server's exit stack (a port it cannot bind
closes what was started; a stop lets a request in flight finish), shares the authenticator's
per-address throttle with gRPC, serves the open tenant when auth is off, speaks TLS with the gRPC
port's certificate, refuses an oversized body, and answers 504 past the deadline."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import openai
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.harness import API_KEY, AUTH, build_config, rpc_error, running_server
from tests.otlp_collector import Collector, collector  # noqa: F401 - the fixture
from tests.test_http_front import QUESTION, client, http_config, post
from tests.test_tls import make_pki
from tests.upstream import ScriptedUpstream
from tierwise.router.server import TierwiseServer
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb

pytestmark = pytest.mark.timeout(60)


@pytest.mark.asyncio
async def test_a_port_it_cannot_bind_fails_the_start_and_closes_the_rest(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        data = http_config(tmp_path, upstream)
        data["server"]["http_port"] = taken.getsockname()[1]
        server = TierwiseServer(await build_service(build_config(data)))
        ledger = server.service.accounting.ledger
        assert ledger is not None
        with pytest.raises(OSError):
            await server.start()
    assert server.port == 0  # gRPC, bound last, never was
    assert ledger._tasks and all(task.done() for task in ledger._tasks)  # the service was closed
    await server.stop()  # nothing left to close


@pytest.mark.asyncio
async def test_a_stop_lets_a_request_in_flight_finish(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream.script(text="Slow but sure.", latency_s=0.5)
    server = TierwiseServer(await build_service(build_config(http_config(tmp_path, upstream))))
    await server.start()
    url = f"http://127.0.0.1:{server.http_port}/v1"
    sdk = openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0)
    in_flight = asyncio.create_task(sdk.chat.completions.create(model="small", messages=QUESTION))  # type: ignore[arg-type]
    while not upstream.requests:
        await asyncio.sleep(0.01)
    await server.stop(grace_s=2)
    assert (await in_flight).choices[0].message.content == "Slow but sure."
    with pytest.raises(openai.APIConnectionError):  # no longer listening
        await sdk.chat.completions.create(model="small", messages=QUESTION)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_failed_keys_over_either_front_throttle_both(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    data = http_config(tmp_path, upstream)
    data["auth"]["throttle"] = {"max_failures": 2, "window_s": 60}
    async with running_server(build_config(data)) as svc:
        bad = (("authorization", "Bearer wrong"),)
        request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content="hi")])
        assert (
            await rpc_error(svc.stub.Complete(request, metadata=bad))
        ).code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(openai.AuthenticationError):
            await client(svc, "also-wrong").chat.completions.create(model="small", messages=QUESTION)  # type: ignore[arg-type]
        # The address is throttled now, the right key included, on both fronts.
        status, body, headers = await post(svc, '{"model": "small", "messages": []}')
        assert (status, body["error"]["code"]) == (429, "auth_throttled")
        assert 1 <= int(headers["retry-after"]) <= 60
        error = await rpc_error(svc.stub.Complete(request, metadata=AUTH))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.asyncio
async def test_without_auth_every_request_is_the_open_tenant(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    data = http_config(tmp_path, upstream)
    data["auth"] = {"mode": "none", "tenant": "local"}
    async with running_server(build_config(data)) as svc:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                svc.http_url + "/chat/completions", json={"model": "small", "messages": QUESTION}
            ) as reply,
        ):
            assert reply.status == 200
            request_id = (await reply.json())["tierwise"]["request_id"]
        ledger = svc.server.service.accounting.ledger
        assert ledger is not None and await ledger.lookup(request_id, "local") is not None


@pytest.mark.asyncio
async def test_a_body_over_the_message_limit_is_413(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    data = http_config(tmp_path, upstream)
    data["server"]["max_message_bytes"] = 2048
    async with running_server(build_config(data)) as svc:
        status, body, _ = await post(
            svc, '{"model": "small", "messages": [{"role": "user", "content": "' + "x" * 4096 + '"}]}'
        )
    assert status == 413
    assert body["error"]["message"] == "body: is over 2048 bytes (server.max_message_bytes)"
    assert upstream.requests == []


@pytest.mark.asyncio
async def test_past_the_deadline_is_504(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    data = http_config(tmp_path, upstream)
    data["server"]["default_timeout_s"] = 0.5
    upstream.script(hang=True)
    async with running_server(build_config(data)) as svc:
        status, body, _ = await post(
            svc, '{"model": "small", "messages": [{"role": "user", "content": "hi"}]}'
        )
    assert (status, body["error"]["type"]) == (504, "timeout_error")


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make test certificates")
@pytest.mark.parametrize("mutual", [False, True])
async def test_with_tls_the_http_front_uses_the_grpc_certificate(
    upstream: ScriptedUpstream, tmp_path: Path, mutual: bool
) -> None:
    make_pki(tmp_path)
    tls: dict[str, Any] = {
        "cert_file": str(tmp_path / "server.pem"),
        "key_file": str(tmp_path / "server.key"),
    }
    if mutual:
        tls["client_ca_file"] = str(tmp_path / "ca.pem")
    data = http_config(tmp_path, upstream)
    data["server"]["tls"] = tls
    server = TierwiseServer(await build_service(build_config(data)))
    await server.start()
    url = f"https://127.0.0.1:{server.http_port}/v1/models"
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    trusted.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    bare = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))  # no client certificate
    headers = {"authorization": f"Bearer {API_KEY}"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=trusted, headers=headers) as reply:
                assert reply.status == 200
            if mutual:
                with pytest.raises(aiohttp.ClientError):
                    async with session.get(url, ssl=bare, headers=headers) as reply:
                        await reply.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # system roots: not our CA
                async with session.get(url, ssl=ssl.create_default_context(), headers=headers):
                    pass
    finally:
        await server.stop(grace_s=1)


TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.asyncio
async def test_a_callers_traceparent_makes_the_request_a_child_of_its_trace(
    upstream: ScriptedUpstream,
    tmp_path: Path,
    collector: Collector,  # noqa: F811
) -> None:
    tracing = {"otlp_endpoint": collector.endpoint, "service_name": "tierwise-test"}
    async with running_server(build_config(http_config(tmp_path, upstream, tracing=tracing))) as svc:
        status, _, _ = await post(
            svc,
            '{"model": "small", "messages": [{"role": "user", "content": "hi"}], "stream": true}',
            {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert status == 200
    (root,) = [s for s in collector.spans if s.name == "tierwise.ChatCompletionsStream"]
    assert (root.trace_id, root.parent_span_id) == (TRACE_ID, PARENT_ID)
    (attempt,) = [s for s in collector.spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert attempt.parent_span_id == root.span_id
    assert attempt.attributes["tierwise.tier"] == "small"
