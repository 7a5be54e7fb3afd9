"""Caller input at its edges, through the real server: strings that would reach labels, logs and
terminals raw, tools JSON nested past any reasonable depth, and bytes that are not UTF-8.

Each case was found by an attacker's review (issue 21, point 5); each status must name the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.harness import AUTH, Running, build_config, config_dict, rpc_error, running_server
from tests.test_fuzz_rpc import tagged
from tests.upstream import ScriptedUpstream
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

MAX_TOOLS_DEPTH = 4


@pytest_asyncio.fixture
async def svc(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Running]:
    # The cache is on: the tools JSON is part of its key, which is where deep nesting once broke.
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url, cache={"enabled": True})
    data["limits"] = {"max_tools_depth": MAX_TOOLS_DEPTH}
    async with running_server(build_config(data)) as running:
        yield running


def request(**fields: Any) -> dict[str, Any]:
    return {"messages": [pb.ChatMessage(role="user", content="hi")], **fields}


async def stream_call(svc: Running, message: pb.CompleteRequest) -> None:
    async for _ in svc.stub.CompleteStream(message, metadata=AUTH):
        pass


Call = Callable[[Running, dict[str, Any]], Awaitable[object]]
CALLS: dict[str, Call] = {
    "Route": lambda svc, f: svc.stub.Route(pb.RouteRequest(**f), metadata=AUTH),
    "Complete": lambda svc, f: svc.stub.Complete(pb.CompleteRequest(**f), metadata=AUTH),
    "CompleteStream": lambda svc, f: stream_call(svc, pb.CompleteRequest(**f)),
}

# Each character that would move a terminal's cursor, break a log line or reorder text.
UNPRINTABLE = {
    "ESC": "\x1b[2J",
    "newline": "a\nb",
    "carriage return": "a\rb",
    "DEL": "a\x7fb",
    "C1 NEL": "a\x85b",
    "C1 CSI": "a\x9b31m",
    "RLO U+202E": "a\u202eb",
    "RLI U+2067": "a\u2067b",
    "line separator U+2028": "a\u2028b",
}
# (request fields, the field the status must start with)
FIELDS: dict[str, tuple[Callable[[str], dict[str, Any]], str]] = {
    "feature": (lambda s: {"feature": s}, "feature:"),
    "user": (lambda s: {"user": s}, "user:"),
    "metadata value": (lambda s: {"metadata": {"team": s}}, "metadata['team']:"),
    "metadata key": (lambda s: {"metadata": {s: "x"}}, "metadata["),
    "arm override": (lambda s: {"metadata": {"tierwise-arm": s}}, "metadata['tierwise-arm']:"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("rpc", list(CALLS))
@pytest.mark.parametrize("field", list(FIELDS))
async def test_unprintable_caller_strings_are_refused_naming_the_field(
    svc: Running, upstream: ScriptedUpstream, rpc: str, field: str
) -> None:
    build, prefix = FIELDS[field]
    for name, text in UNPRINTABLE.items():
        error = await rpc_error(CALLS[rpc](svc, request(**build(text))))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        details = error.details() or ""
        assert details.startswith(prefix) and "control or bidirectional" in details, (name, details)
        assert text not in details  # the refusal itself never echoes the raw character
    assert upstream.requests == []


@pytest.mark.asyncio
async def test_printable_unicode_and_newline_stop_sequences_still_pass(svc: Running) -> None:
    # A zero-width joiner builds the family emoji; accents, CJK and a tab-free name are plain text.
    fields = request(
        feature="résumé-检索-👩\u200d👩\u200d👧", user="ünïcode", metadata={"team": "naïve"}, stop=["\n\n"]
    )
    decision = await svc.stub.Route(pb.RouteRequest(**fields), metadata=AUTH)
    assert decision.tier
    response = await svc.stub.Complete(pb.CompleteRequest(**fields), metadata=AUTH)
    assert response.content


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.asyncio
@pytest.mark.parametrize("rpc", list(CALLS))
async def test_deeply_nested_tools_json_is_invalid_argument(svc: Running, rpc: str) -> None:
    for tools, depth in (
        ("[" * 1000 + "]" * 1000, 1000),
        (nested(1000), 1000),
        (nested(MAX_TOOLS_DEPTH + 1), MAX_TOOLS_DEPTH + 1),
    ):
        error = await rpc_error(CALLS[rpc](svc, request(tools_json=tools)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert error.details() == f"tools_json: nests {depth} levels deep; the limit is {MAX_TOOLS_DEPTH}"


@pytest.mark.asyncio
@pytest.mark.parametrize("rpc", list(CALLS))
async def test_tools_json_at_the_depth_limit_passes_and_non_json_is_refused(svc: Running, rpc: str) -> None:
    # Brackets inside strings are text, not nesting.
    at_limit = '[{"name": "f]]]]{{{{", "parameters": {"p": {"q": 1}}}]'  # 4 deep
    await CALLS[rpc](svc, request(tools_json=at_limit))
    error = await rpc_error(CALLS[rpc](svc, request(tools_json="[{'name': 'f'}]")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("tools_json: is not JSON")


def field(number: int, payload: bytes) -> bytes:
    return tagged(number, 2, payload)


GOOD_MESSAGE = field(1, field(1, b"user") + field(2, b"hi"))
# (raw CompleteRequest bytes, the field the status must name)
NOT_UTF8 = [
    (field(1, field(1, b"\xff\xfe")), "messages[0].role"),
    (GOOD_MESSAGE + field(1, field(1, b"user") + field(2, b"ok\x80")), "messages[1].content"),
    (GOOD_MESSAGE + field(2, b"\xc3\x28"), "feature"),
    (GOOD_MESSAGE + field(9, field(1, b"team") + field(2, b"\xed\xa0\x80")), "metadata['team']"),
    (GOOD_MESSAGE + field(9, field(1, b"\xf4\x90\x80\x80") + field(2, b"x")), "metadata (a key)"),
    (GOOD_MESSAGE + field(10, b"a") + field(10, b"\xe2\x82"), "stop[1]"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["Route", "Complete", "CompleteStream"])
async def test_invalid_utf8_names_the_field(svc: Running, method: str) -> None:
    path = f"/tierwise.v1.Router/{method}"

    async def send(body: bytes) -> None:
        if method == "CompleteStream":
            async for _ in svc.channel.unary_stream(path)(body, metadata=AUTH):
                pass
        else:
            await svc.channel.unary_unary(path)(body, metadata=AUTH)

    for body, name in NOT_UTF8:
        error = await rpc_error(send(body))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == f"{name}: is not valid UTF-8"


@pytest.mark.asyncio
async def test_feedback_and_admin_strings_are_checked_too(svc: Running) -> None:
    # Feedback: a comment is prose (newlines pass, then the id is simply unknown); the rest are names.
    ok_text = pb.FeedbackRequest(request_id="0" * 32, score=1, source=1, comment="line one\nline two")
    error = await rpc_error(svc.stub.Feedback(ok_text, metadata=AUTH))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    bad = [
        (pb.FeedbackRequest(request_id="0\x1b[2J", score=1, source=1), "request_id:"),
        (pb.FeedbackRequest(request_id="0" * 32, score=1, source=1, comment="\x1b]0;pwned\x07"), "comment:"),
        (
            pb.FeedbackRequest(request_id="0" * 32, score=1, source=1, metadata={"k": "\u202e"}),
            "metadata['k']:",
        ),
    ]
    for message, prefix in bad:
        error = await rpc_error(svc.stub.Feedback(message, metadata=AUTH))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(prefix), error.details()
    admin = pb_grpc.AdminStub(svc.channel)
    for name in ("entry_id", "partition_key", "tenant"):
        invalidate = pb.InvalidateCacheRequest(all=True, **{name: "x\x85y"})
        error = await rpc_error(admin.InvalidateCache(invalidate, metadata=AUTH))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(f"{name}:"), error.details()
    raw = svc.channel.unary_unary("/tierwise.v1.Router/Feedback")
    error = await rpc_error(raw(field(4, b"\xff"), metadata=AUTH))
    assert error.details() == "comment: is not valid UTF-8"
