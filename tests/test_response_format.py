"""``response_format`` json_schema through gRPC, unary and streamed: the schema reaches the
OpenAI-compatible tier's body as sent and the JSON answer comes back whole (the HTTP front's
counterpart is in test_http_sdk_calls.py)."""

from __future__ import annotations

import json

import pytest

from tests.harness import AUTH, Running
from tests.test_request_fields import SCHEMA
from tests.test_server import svc  # noqa: F401 - the fixture: a server over the scripted upstream
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_json_schema_answer_comes_back_whole(
    svc: Running,  # noqa: F811 - the fixture imported above
    upstream: ScriptedUpstream,
    stream: bool,
) -> None:
    upstream.script(text='{"answer": 4}')
    request = pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content="What is 2+2?")],
        tier="small",
        response_format_json=json.dumps(SCHEMA),
    )
    if stream:
        chunks = [c async for c in svc.stub.CompleteStream(request, metadata=AUTH)]
        text = "".join(c.delta for c in chunks)
        assert chunks[-1].end.finish_reason == "stop"
    else:
        text = (await svc.stub.Complete(request, metadata=AUTH)).content
    assert json.loads(text) == {"answer": 4}
    body = upstream.requests[-1].body
    assert body["response_format"] == SCHEMA and body.get("stream", False) is stream
