"""A tenant never learns where the upstreams live: no upstream URL in a status message, in the
attempts of a response or in the tierwise-attempts trailer; the operator's log keeps it."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from tests.harness import AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb

HI = [pb.ChatMessage(role="user", content="hi")]


def host_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]  # 127.0.0.1:PORT


def assert_private(text: str, *urls: str) -> None:
    for url in urls:
        assert host_of(url) not in text, text


def trailer(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("tierwise-attempts", "")


@pytest.mark.asyncio
async def test_dead_upstreams_are_unavailable_without_their_urls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tierwise.upstream")
    async with ScriptedUpstream() as closed:
        dead = closed.base_url
    async with running_server(build_config(config_dict(tmp_path / "var", dead + "/v1", dead))) as svc:
        error = await rpc_error(svc.stub.Complete(pb.CompleteRequest(messages=HI), metadata=AUTH))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = error.details() or ""
        assert "tier 'small'" in details and "tier 'large'" in details and "connect" in details
        assert_private(details + trailer(error), dead)
        assert "tier" in trailer(error)

        async def stream() -> None:
            async for _ in svc.stub.CompleteStream(pb.CompleteRequest(messages=HI), metadata=AUTH):
                pass

        error = await rpc_error(stream())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert_private((error.details() or "") + trailer(error), dead)
    logged = {
        getattr(r, "upstream", None) for r in caplog.records if r.getMessage() == "upstream call failed"
    }
    assert logged == {dead + "/v1", dead}


async def complete(svc: Running) -> pb.CompleteResponse:
    response: pb.CompleteResponse = await svc.stub.Complete(pb.CompleteRequest(messages=HI), metadata=AUTH)
    return response


@pytest.mark.asyncio
async def test_attempts_and_rejections_leave_the_url_out_even_when_the_upstream_echoes_it(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    urls = (upstream.openai_url, upstream.base_url)
    async with running_server(build_config(config_dict(tmp_path / "var", *urls))) as svc:
        # The upstream's own error body names its address: it is scrubbed too.
        upstream.script("small-model", status=500, error_message=f"overloaded at {upstream.openai_url}")
        upstream.script("large-model", text="from large")
        response = await complete(svc)
        assert response.content == "from large"
        failed = [a.error for a in response.attempts if not a.ok]
        assert failed and all("overloaded at <upstream>" in e for e in failed), failed
        assert_private(" ".join(failed), *urls)

        # host:port alone is scrubbed as well.
        upstream.script(
            "small-model", status=400, error_message=f"bad request to {host_of(upstream.openai_url)}"
        )
        error = await rpc_error(complete(svc))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tier 'small'" in (error.details() or "") and "bad request to <upstream>" in (
            error.details() or ""
        )
        assert_private((error.details() or "") + trailer(error), *urls)
