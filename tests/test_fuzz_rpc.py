"""Fuzzing every RPC of the Router and Admin services against one real server.

Hypothesis draws requests field by field (boundary and random numbers, NaN and
infinities, empty, huge, odd-Unicode and control-character strings, invalid
roles, many messages, empty and huge metadata maps), raw bodies (random bytes,
truncated or mutated valid messages, invalid UTF-8 in string fields, unknown
and deeply nested fields) and credentials. Every call must end with a defined
status (never UNKNOWN or INTERNAL) and a message; afterwards the server still
reports SERVING, answers a plain request, logged no error, and its spend ledger
still writes.

The servers start once per module on a background event loop; the tests call
them through a synchronous channel (Hypothesis drives plain functions). How many
examples each test runs comes from ``tests/hypothesis_profiles.py`` (2,000 per
RPC under ``make``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import string
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import API_KEY, AUTH, OTHER_AUTH, build_config, config_dict
from tests.hypothesis_profiles import fuzz_settings
from tests.upstream import ScriptedUpstream
from tierwise.router.auth import sha256_hex
from tierwise.router.server import TierwiseServer
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
Code = grpc.StatusCode

ADMIN_KEY = "fuzz-admin-key"
ADMIN_AUTH: Metadata = (("authorization", f"Bearer {ADMIN_KEY}"),)
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
UPSTREAM_TEXT = (
    "Hello-from-the-scripted-upstream."  # one word: one delta in a stream, which keeps streams quick
)
CALL_TIMEOUT_S = 30
DEFINED = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.UNAUTHENTICATED,
    Code.PERMISSION_DENIED,
    Code.NOT_FOUND,
    Code.RESOURCE_EXHAUSTED,
    Code.UNAVAILABLE,
    Code.DEADLINE_EXCEEDED,
    Code.FAILED_PRECONDITION,
}


# -- the servers ---------------------------------------------------------------------------------


class LoopThread:
    """An event loop on its own thread, for servers that synchronous tests call into."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class ErrorLog(logging.Handler):
    """ERROR records from any logger (the server's, the cache's, asyncio's unretrieved task errors)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Served:
    loops: LoopThread
    server: TierwiseServer
    channel: grpc.Channel
    errors: ErrorLog
    request_ids: list[str] = field(default_factory=list)  # acme's real requests, for Feedback
    entry_ids: list[str] = field(default_factory=list)  # acme's cache entries, for InvalidateCache

    def assert_healthy(self) -> None:
        """SERVING, answers a plain request, logged no error, and the spend ledger writes."""
        health = health_pb2_grpc.HealthStub(self.channel)
        for service in ("", "tierwise.v1.Router"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        code, body, details = call_unary(self.channel, RPCS["Route"], route_request("still there?"), AUTH)
        assert code is Code.OK, details
        assert body is not None and pb.RouteDecision.FromString(body).tier
        ledger = self.server.service.accounting.ledger
        assert ledger is not None
        assert self.loops.run(ledger.flush(timeout_s=30)), "the spend ledger did not store its records"
        stats = ledger.stats()
        assert (stats.write_failures, stats.rejected_lines, stats.journal_errors) == (0, 0, 0), stats
        logged = [f"{r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in self.errors.records]
        self.errors.records.clear()  # reported once, by the test that caused them
        assert not logged, "\n".join(logged)


def fuzz_config(
    store: Path, upstream: ScriptedUpstream, *, cache: bool, http: bool = False
) -> dict[str, Any]:
    data = config_dict(store, upstream.openai_url, upstream.base_url)
    if http:  # the HTTP front (test_fuzz_http.py)
        data["server"]["http_port"] = 0
    data["auth"]["api_keys"].append({"key_sha256": sha256_hex(ADMIN_KEY), "tenant": "ops", "admin": True})
    data["server"]["max_message_bytes"] = MAX_MESSAGE_BYTES
    # Budgets on both tenants put the reservation path under fuzz; far above what fuzzing spends.
    data["budgets"] = [
        {"tenant": "acme", "window": "day", "usd": "1000000"},
        {"tenant": "globex", "window": "month", "tokens": 10**15},
    ]
    data["cache"] = {"enabled": cache}
    data["auth"]["throttle"] = {"max_failures": 0}  # wrong keys are drawn on purpose, from one address
    return data


@contextlib.contextmanager
def serving(
    loops: LoopThread,
    upstream: ScriptedUpstream,
    errors: ErrorLog,
    store: Path,
    *,
    cache: bool,
    http: bool = False,
) -> Iterator[Served]:
    config = build_config(fuzz_config(store, upstream, cache=cache, http=http))

    async def start() -> TierwiseServer:
        server = TierwiseServer(await build_service(config))
        await server.start()
        return server

    server = loops.run(start())
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
    )
    try:
        yield Served(loops, server, channel, errors)
    finally:
        channel.close()
        loops.run(server.stop(grace_s=1))


@pytest.fixture(scope="module")
def loops() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorLog]:
    """One collector for both servers (they share the process's loggers)."""
    collector = ErrorLog()
    logging.getLogger().addHandler(collector)
    yield collector
    logging.getLogger().removeHandler(collector)


@pytest.fixture(scope="module")
def upstream(loops: LoopThread) -> Iterator[ScriptedUpstream]:
    scripted = ScriptedUpstream()
    loops.run(scripted.start())
    scripted.script(text=UPSTREAM_TEXT)
    yield scripted
    loops.run(scripted.stop())


@pytest.fixture(scope="module")
def served(
    loops: LoopThread, upstream: ScriptedUpstream, errors: ErrorLog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The cache is off here: fuzzing the request path needs no embedding per call."""
    with serving(loops, upstream, errors, tmp_path_factory.mktemp("fuzz"), cache=False) as running:
        for i in range(4):
            request = pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=f"seed {i}")])
            code, body, details = call_unary(running.channel, RPCS["Complete"], request, AUTH)
            assert code is Code.OK and body is not None, details
            running.request_ids.append(pb.CompleteResponse.FromString(body).request_id)
        yield running


@pytest.fixture(scope="module")
def cached(
    loops: LoopThread, upstream: ScriptedUpstream, errors: ErrorLog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The cache is on here, holding entries of two tenants, for InvalidateCache."""
    with serving(loops, upstream, errors, tmp_path_factory.mktemp("fuzz-cache"), cache=True) as running:
        cache = running.server.service.cache
        assert cache is not None
        for auth in (AUTH, OTHER_AUTH):
            for i in range(3):
                request = route_request(f"Which plan includes feature {i}?")
                call_unary(running.channel, RPCS["Complete"], request, auth)
                loops.run(cache.drain())
                code, body, details = call_unary(running.channel, RPCS["Route"], request, auth)
                assert code is Code.OK and body is not None, details
                decision = pb.RouteDecision.FromString(body)
                assert decision.cache_hit
                if auth == AUTH:
                    running.entry_ids.append(decision.cached.entry_id)
        yield running


# -- calling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    path: str
    request: type[Message]
    response: type[Message]
    streaming: bool = False


RPCS = {
    "Route": Rpc("/tierwise.v1.Router/Route", pb.RouteRequest, pb.RouteDecision),
    "Complete": Rpc("/tierwise.v1.Router/Complete", pb.CompleteRequest, pb.CompleteResponse),
    "CompleteStream": Rpc("/tierwise.v1.Router/CompleteStream", pb.CompleteRequest, pb.CompleteChunk, True),
    "Feedback": Rpc("/tierwise.v1.Router/Feedback", pb.FeedbackRequest, pb.FeedbackAck),
    "InvalidateCache": Rpc(
        "/tierwise.v1.Admin/InvalidateCache", pb.InvalidateCacheRequest, pb.InvalidateCacheResponse
    ),
    "TierStatus": Rpc("/tierwise.v1.Admin/TierStatus", pb.TierStatusRequest, pb.TierStatusResponse),
    "BudgetStatus": Rpc("/tierwise.v1.Admin/BudgetStatus", pb.BudgetStatusRequest, pb.BudgetStatusResponse),
}


def route_request(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)])


def call_unary(
    channel: grpc.Channel, rpc: Rpc, request: Message | bytes, metadata: Metadata
) -> tuple[Code, bytes | None, str]:
    """One call with the body as given (no client-side serializer); the status, reply and message."""
    body = request if isinstance(request, bytes) else request.SerializeToString()
    try:
        reply = channel.unary_unary(rpc.path, None, None)(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code(), None, exc.details() or ""
    return Code.OK, reply, ""


def call_stream(
    channel: grpc.Channel, rpc: Rpc, request: Message | bytes, metadata: Metadata
) -> tuple[Code, list[bytes], str]:
    body = request if isinstance(request, bytes) else request.SerializeToString()
    chunks: list[bytes] = []
    try:
        for chunk in channel.unary_stream(rpc.path, None, None)(
            body, metadata=metadata, timeout=CALL_TIMEOUT_S
        ):
            chunks.append(chunk)
    except grpc.RpcError as exc:
        return exc.code(), chunks, exc.details() or ""
    return Code.OK, chunks, ""


def assert_defined(rpc: Rpc, code: Code, details: str) -> None:
    assert code in DEFINED, f"{rpc.path} ended with {code.name}: {details!r}"
    assert code is Code.OK or details.strip(), f"{rpc.path} ended with {code.name} and no message"
    # The upstream answers at once and the server's own deadline (60 s) is past the client's: a
    # DEADLINE_EXCEEDED here can only be the client giving up on a call that hung.
    assert code is not Code.DEADLINE_EXCEEDED, f"{rpc.path} hung for {CALL_TIMEOUT_S} s: {details!r}"


def exercise(served: Served, rpc: Rpc, request: Message | bytes, metadata: Metadata) -> Code:
    """Call ``rpc``; the status must be a defined one, and an OK reply must be well formed."""
    if rpc.streaming:
        code, chunks, details = call_stream(served.channel, rpc, request, metadata)
        assert_defined(rpc, code, details)
        parsed = [pb.CompleteChunk.FromString(c) for c in chunks]
        kinds = [c.WhichOneof("body") for c in parsed]
        if code is Code.OK:
            assert kinds[0] == "decision" and kinds[-1] == "end", kinds
            assert "".join(c.delta for c in parsed) == UPSTREAM_TEXT
        return code
    code, body, details = call_unary(served.channel, rpc, request, metadata)
    assert_defined(rpc, code, details)
    if code is Code.OK:
        assert body is not None
        reply = rpc.response.FromString(body)
        if isinstance(reply, pb.CompleteResponse):
            assert reply.content == UPSTREAM_TEXT and len(reply.request_id) == 32
        elif isinstance(reply, pb.RouteDecision):
            assert reply.tier in ("small", "large") and len(reply.request_id) == 32
        elif isinstance(reply, pb.FeedbackAck):
            assert reply.feedback_id and reply.request_id in served.request_ids
        elif isinstance(reply, pb.InvalidateCacheResponse):
            assert reply.removed >= 0
    return code


# -- strategies ----------------------------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each drawn in proportion to its weight (shrinks toward the first)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


ODD_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\n\r\x0b\x0c",
    "\x1b[31mred\x1b[0m",
    "\x7f\x80\x9f",
    "\u200b\u200d\u2060",
    "\ufeffbom",
    "\u202eevil\u202c",
    "e\u0301\u0301\u0301",
    "\U0001d518\U0001d52b\U0001d526",
    "\U0010ffff\U000e0001",
    "\ufffd\ufffe\uffff",
    "🙂" * 64,
    "null",
    "{}",
    '{"role": "system"}',
    "'; DROP TABLE entries; --",
    "%s%n%x",
    "../../etc/passwd",
    "user",
    "system",
    "assistant",
    "a" * 256,
    "a" * 257,
    "ö" * 256,
    "ö" * 257,
]
HUGE_TEXT = [
    "x" * 200_000,
    "x" * 200_001,
    "é" * 200_001,
    "\x00" * 10_000,
    "word " * 60_000,
    "🙂" * 50_000,
]
NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")
# Names (feature, user, metadata) refuse controls, line separators and bidi formatting (field_checks).
PRINTABLE = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Zl", "Zp"),
    exclude_characters="\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069",
)

# Huge strings are mostly refused by a length check; where one is valid (a 200,000-character message)
# the request is slow to count, so they are drawn rarely and the boundary sizes have their own test.
any_text = weighted(
    (16, st.text(max_size=48)), (6, st.sampled_from(ODD_TEXT)), (1, st.sampled_from(HUGE_TEXT))
)
field_text = st.text(PRINTABLE, max_size=48)  # passes validation as feature, user, metadata, stop
content_text = weighted(
    (4, st.text(min_size=1, max_size=200).filter(str.strip)),
    (1, st.sampled_from([t for t in ODD_TEXT if t.strip()] + ["\x00" * 10_000, "🙂" * 2_000])),
)
BOUNDARY_DOUBLES = [0.0, -0.0, 1.0, 2.0, 1.0000000000000002, 2.0000000000000004, -5e-324, 5e-324]
BOUNDARY_DOUBLES += [1.7976931348623157e308, float("inf"), float("-inf"), float("nan")]
doubles = weighted((3, st.floats()), (2, st.sampled_from(BOUNDARY_DOUBLES)))
int64s = weighted(
    (3, st.integers(-(2**63), 2**63 - 1)),
    (2, st.sampled_from([0, -1, 1, 512, 513, 2048, 2049, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)])),
)
int32s = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-1, 5))

roles = weighted((2, st.sampled_from(["user", "system", "assistant"])), (1, any_text))


def message(role: str, content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=role, content=content)


def many_messages(count: int) -> list[pb.ChatMessage]:
    return [message("assistant" if i % 2 else "user", f"turn {i}") for i in range(count - 1)] + [
        message("user", "and now?")
    ]


valid_messages = st.builds(
    lambda history, last: [*history, message("user", last)],
    st.lists(st.builds(message, st.sampled_from(["system", "user", "assistant"]), content_text), max_size=3),
    content_text,
)
wild_messages = weighted(
    (6, st.lists(st.builds(message, roles, any_text), max_size=8)),
    (1, st.sampled_from([0, 1, 255, 256, 257, 2000]).map(lambda n: many_messages(n) if n else [])),
)
valid_metadata = st.dictionaries(st.text(PRINTABLE, min_size=1, max_size=32), field_text, max_size=4)
wild_metadata = weighted(
    (5, st.dictionaries(any_text, any_text, max_size=6)),
    (
        1,
        st.sampled_from(
            [
                {f"k{i}": "v" for i in range(64)},
                {f"k{i}": "v" for i in range(65)},
                {f"k{i}": f"value {i}" for i in range(10_000)},
                {"": "empty key"},
                {"k": "\x00"},
                {"a" * 257: "v"},
                {"k": "v" * 257},
            ]
        ),
    ),
)

# Field name -> (a value that passes validation, any value); None leaves an optional field unset.
ROUTE_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "messages": (valid_messages, wild_messages),
    "feature": (field_text, any_text),
    "user": (field_text, any_text),
    "tier": (st.sampled_from([None, "small", "large"]), st.none() | any_text),
    "quality_target": (st.none() | st.floats(0, 1), st.none() | doubles),
    "latency_budget_ms": (st.none() | st.integers(0, 2**63 - 1), st.none() | int64s),
    "max_tokens": (st.none() | st.integers(1, 512), st.none() | int64s),
    "temperature": (st.none() | st.floats(0, 2), st.none() | doubles),
    "metadata": (valid_metadata, wild_metadata),
    "stop": (
        st.lists(st.text(NO_NUL, min_size=1, max_size=16), max_size=8),
        weighted((4, st.lists(any_text, max_size=12)), (1, st.just(["x"] * 1000))),
    ),
    "tools_json": (st.sampled_from(["", '[{"name": "lookup", "parameters": {}}]']), any_text),
    "cache_mode": (st.integers(0, 3), int32s),
    "max_age_s": (st.none() | st.integers(0, 2**63 - 1), st.none() | int64s),
    # Valid alone (without tools, and on either tier's protocol): unset, or top_p in range.
    "tool_choice": (st.just(""), any_text),
    "parallel_tool_calls": (st.none(), st.none() | st.booleans()),
    "response_format_json": (st.just(""), any_text),
    "top_p": (st.none() | st.floats(0, 1), st.none() | doubles),
    "seed": (st.none(), st.none() | int64s),
}


@st.composite
def fields_of(
    draw: st.DrawFn, table: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]
) -> Any:
    """Every field valid, or all valid but one, or every field wild: most requests reach the pipeline."""
    mode = draw(st.sampled_from(["valid", "one wild", "wild"]))
    wild_one = draw(st.sampled_from(sorted(table))) if mode == "one wild" else None
    fields = {}
    for name, (valid, wild) in table.items():
        value = draw(wild if mode == "wild" or name == wild_one else valid)
        if value is not None:
            fields[name] = value
    return fields


def feedback_table(
    request_ids: Sequence[str],
) -> dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]:
    return {
        "request_id": (
            st.sampled_from(list(request_ids)),
            weighted((3, any_text), (1, st.sampled_from(["0" * 32, "a" * 128, "a" * 129]))),
        ),
        "score": (st.floats(0, 1), doubles),
        "source": (st.integers(1, 3), int32s),
        "comment": (field_text, weighted((4, any_text), (1, st.sampled_from(["c" * 4096, "c" * 4097])))),
        "metadata": (valid_metadata, wild_metadata),
    }


def invalidate_table(
    entry_ids: Sequence[str],
) -> dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]:
    tenants = st.sampled_from(["", "acme", "globex", "ops", "initech"])
    return {
        "entry_id": (st.sampled_from(["", *entry_ids]), any_text),
        "partition_key": (st.sampled_from(["", "0" * 64]), any_text),
        "older_than_s": (st.none() | st.floats(0, 1e9), st.none() | doubles),
        "all": (st.booleans(), st.booleans()),
        "tenant": (tenants, weighted((1, tenants), (2, any_text))),
    }


GOOD_AUTH = [AUTH, OTHER_AUTH, ADMIN_AUTH, (("authorization", f"bearer   {API_KEY}  "),)]
BAD_AUTH: list[Metadata] = [
    (),
    (("authorization", "Bearer wrong-key"),),
    (("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),),
    (("authorization", "Bearer"),),
    (("x-tenant", "acme"),),
    (("authorization", "Bearer wrong-key"), AUTH[0]),
]
auths = weighted(
    (6, st.sampled_from(GOOD_AUTH)),
    (2, st.sampled_from(BAD_AUTH)),
    (1, st.text(string.printable.strip(), max_size=64).map(lambda v: (("authorization", v),))),
)


# -- raw bodies ----------------------------------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tagged(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    key = varint(number << 3 | wire_type)
    return key + varint(len(payload)) + payload if wire_type == 2 else key + payload


def string_paths(descriptor: Any, depth: int = 0) -> list[tuple[FieldDescriptor, ...]]:
    """Every string field reachable from ``descriptor`` (through messages and map entries)."""
    paths: list[tuple[FieldDescriptor, ...]] = []
    for f in descriptor.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            paths.append((f,))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            paths += [(f, *rest) for rest in string_paths(f.message_type, depth + 1)]
    return paths


BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ok\x80", b"\xe2\x82"]


def utf8_error_pattern(path: Sequence[FieldDescriptor]) -> str:
    """The status a bad string at ``path`` must get: its field named, with the index of each repeated
    field on the way (which depends on where the bad bytes went) or the map key (empty: none is
    encoded)."""
    head, *rest = path
    if rest and head.message_type is not None and head.message_type.GetOptions().map_entry:
        name = f"{head.name} \\(a key\\)" if rest[0].name == "key" else f"{head.name}\\[''\\]"
    else:
        name = r"\.".join(f.name + (r"\[\d+\]" if f.is_repeated else "") for f in path)
    return name + ": is not valid UTF-8"


def bad_string_field(path: Sequence[FieldDescriptor], raw: bytes) -> bytes:
    """Wire bytes setting the string at ``path`` to ``raw`` (not valid UTF-8)."""
    encoded = tagged(path[-1].number, 2, raw)
    for outer in reversed(path[:-1]):
        encoded = tagged(outer.number, 2, encoded)
    return encoded


def unknown_fields(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        number = draw(st.sampled_from([1, 2, 3, 9, 15, 16, 999, 2**29 - 1]))
        kind = draw(st.sampled_from(["varint", "fixed64", "bytes", "fixed32", "groups"]))
        if kind == "varint":
            out += tagged(number, 0, varint(draw(st.integers(0, 2**64 - 1))))
        elif kind == "fixed64":
            out += tagged(number, 1, draw(st.binary(min_size=8, max_size=8)))
        elif kind == "fixed32":
            out += tagged(number, 5, draw(st.binary(min_size=4, max_size=4)))
        elif kind == "bytes":
            out += tagged(number, 2, draw(st.binary(max_size=64)))
        else:  # nested groups, possibly past any recursion limit, possibly unterminated
            depth = draw(st.sampled_from([1, 50, 101, 5000]))
            closed = draw(st.booleans())
            out += varint(number << 3 | 3) * depth + (varint(number << 3 | 4) * depth if closed else b"")
    return out


@st.composite
def raw_bodies(draw: st.DrawFn, rpc: Rpc, valid: st.SearchStrategy[Message]) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "bad utf-8", "unknown fields"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    body = draw(valid).SerializeToString()
    if kind == "truncated":
        return body[: draw(st.integers(0, max(0, len(body) - 1)))]
    if kind == "mutated":
        mutable = bytearray(body or b"\x00")
        for _ in range(draw(st.integers(1, 4))):
            mutable[draw(st.integers(0, len(mutable) - 1))] = draw(st.integers(0, 255))
        return bytes(mutable)
    paths = string_paths(rpc.request.DESCRIPTOR)
    if kind == "bad utf-8" and paths:
        bad = bad_string_field(draw(st.sampled_from(paths)), draw(st.sampled_from(BAD_UTF8)))
        return body + bad if draw(st.booleans()) else bad + body
    return body + unknown_fields(draw)


# -- the tests -----------------------------------------------------------------------------------


def route_like(rpc: Rpc) -> st.SearchStrategy[Message]:
    return fields_of(ROUTE_FIELDS).map(lambda fields: rpc.request(**fields))


# Requests drawn field by field, per RPC (the field-less status requests vary only in raw bytes).
MESSAGES: dict[str, Callable[[Served], st.SearchStrategy[Message]]] = {
    "Route": lambda s: route_like(RPCS["Route"]),
    "Complete": lambda s: route_like(RPCS["Complete"]),
    "CompleteStream": lambda s: route_like(RPCS["CompleteStream"]),
    "Feedback": lambda s: fields_of(feedback_table(s.request_ids)).map(lambda f: pb.FeedbackRequest(**f)),
    "InvalidateCache": lambda s: fields_of(invalidate_table(s.entry_ids)).map(
        lambda f: pb.InvalidateCacheRequest(**f)
    ),
    "TierStatus": lambda s: st.just(pb.TierStatusRequest()),
    "BudgetStatus": lambda s: st.just(pb.BudgetStatusRequest()),
}
# Statuses each field fuzzing must have produced: the mix reached past validation, not only into it.
REACHED = {
    "Route": {Code.OK, Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED},
    "Complete": {Code.OK, Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED},
    "CompleteStream": {Code.OK, Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED},
    "Feedback": {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.UNAUTHENTICATED},
    "InvalidateCache": {Code.OK, Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED},
}


def server_for(name: str, request: pytest.FixtureRequest) -> Served:
    """InvalidateCache needs the server with the cache on; every other RPC uses the cache-off one."""
    fixture = "cached" if name == "InvalidateCache" else "served"
    running: Served = request.getfixturevalue(fixture)
    return running


@pytest.mark.parametrize("name", list(REACHED))
def test_fuzzed_fields_end_with_a_defined_status(name: str, request: pytest.FixtureRequest) -> None:
    served, rpc = server_for(name, request), RPCS[name]
    seen: set[Code] = set()

    @fuzz_settings()
    @given(message=MESSAGES[name](served), auth=auths)
    def run(message: Message, auth: Metadata) -> None:
        seen.add(exercise(served, rpc, message, auth))

    run()
    assert REACHED[name] <= seen, seen
    served.assert_healthy()


# Found by the fuzzer: proto3 enums are open, so a negative source once indexed SOURCES from the end.
def test_feedback_source_outside_the_enum_is_invalid_argument(served: Served) -> None:
    outcomes = []
    for source in (-1, -2, -3, -(2**31), 0, 4, 2**31 - 1):
        feedback = pb.FeedbackRequest(request_id=served.request_ids[0], score=0.5, source=source)
        code, _, details = call_unary(served.channel, RPCS["Feedback"], feedback, AUTH)
        outcomes.append((source, code.name, details))
    assert all(code == "INVALID_ARGUMENT" and d.startswith("source:") for _, code, d in outcomes), outcomes


def test_invalidate_cache_without_a_cache_is_failed_precondition(served: Served) -> None:
    request = pb.InvalidateCacheRequest(all=True)
    code, _, details = call_unary(served.channel, RPCS["InvalidateCache"], request, AUTH)
    assert code is Code.FAILED_PRECONDITION and details.startswith("cache:"), (code, details)


@pytest.mark.parametrize("name", list(RPCS))
def test_raw_bodies_end_with_a_defined_status(name: str, request: pytest.FixtureRequest) -> None:
    """Random bytes, cut or mutated messages, invalid UTF-8, unknown and deeply nested fields.

    TierStatus and BudgetStatus requests have no fields: this is their whole fuzzing (the key and
    the body are what can vary), so they get the full number of examples.
    """
    served, rpc = server_for(name, request), RPCS[name]
    fieldless = not rpc.request.DESCRIPTOR.fields
    seen: set[Code] = set()

    @fuzz_settings(share=1.0 if fieldless else 0.25)
    @given(body=raw_bodies(rpc, MESSAGES[name](served)), auth=auths)
    def run(body: bytes, auth: Metadata) -> None:
        seen.add(exercise(served, rpc, body, auth))

    run()
    if fieldless:
        assert {Code.OK, Code.UNAUTHENTICATED} <= seen, seen
    else:
        assert Code.INVALID_ARGUMENT in seen, seen
    served.assert_healthy()


@pytest.mark.parametrize("name", [n for n, rpc in RPCS.items() if string_paths(rpc.request.DESCRIPTOR)])
def test_invalid_utf8_in_any_string_field_is_invalid_argument(
    name: str, request: pytest.FixtureRequest
) -> None:
    served, rpc = server_for(name, request), RPCS[name]
    paths = string_paths(rpc.request.DESCRIPTOR)

    @fuzz_settings(share=0.05)
    @given(
        valid=MESSAGES[name](served),
        path=st.sampled_from(paths),
        raw=st.sampled_from(BAD_UTF8),
        before=st.booleans(),
    )
    def run(valid: Message, path: tuple[FieldDescriptor, ...], raw: bytes, before: bool) -> None:
        bad = bad_string_field(path, raw)
        body = bad + valid.SerializeToString() if before else valid.SerializeToString() + bad
        if rpc.streaming:
            code, _, details = call_stream(served.channel, rpc, body, ADMIN_AUTH)
        else:
            code, _, details = call_unary(served.channel, rpc, body, ADMIN_AUTH)
        where = ".".join(f.name for f in path)
        assert code is Code.INVALID_ARGUMENT, f"{where}: {code.name} {details!r}"
        assert re.fullmatch(utf8_error_pattern(path), details), (where, details)

    run()
    served.assert_healthy()


def test_the_size_limits_themselves_pass_and_one_more_is_named(served: Served) -> None:
    """The boundaries the fuzzing draws only rarely (they are slow to count): at the limit, and one past."""
    limits = served.server.service.config.limits
    at_content = [message("user", "x" * limits.max_content_chars)]
    per_message = limits.max_total_chars // 5
    at_total = [message("user" if i % 2 == 0 else "assistant", "y" * per_message) for i in range(5)]
    at_count = many_messages(limits.max_messages)
    for messages in (at_content, at_total, at_count):
        for rpc in (RPCS["Route"], RPCS["Complete"]):
            code, _, details = call_unary(served.channel, rpc, pb.CompleteRequest(messages=messages), AUTH)
            assert code is Code.OK, (rpc.path, code, details)
    past = [
        ([message("user", "x" * (limits.max_content_chars + 1))], "messages[0].content:"),
        ([*at_total, message("user", "z")], "messages:"),
        (many_messages(limits.max_messages + 1), "messages:"),
    ]
    for messages, named in past:
        code, _, details = call_unary(
            served.channel, RPCS["Route"], pb.CompleteRequest(messages=messages), AUTH
        )
        assert code is Code.INVALID_ARGUMENT and details.startswith(named), (code, details)
    served.assert_healthy()


def test_oversized_credentials_are_refused_by_grpc(served: Served) -> None:
    """Metadata past gRPC's hard header limit (16 KiB) never reaches tierwise; the server stays up."""
    huge_key = (("authorization", "Bearer " + "k" * 20_000),)
    for rpc in (RPCS["Route"], RPCS["TierStatus"]):
        code, _, details = call_unary(served.channel, rpc, route_request("hi"), huge_key)
        assert code is Code.RESOURCE_EXHAUSTED, (code, details)
    served.assert_healthy()


def padded(prefix: bytes, size: int) -> bytes:
    """``prefix`` plus one unknown bytes field, ``size`` bytes in all."""
    key = varint(1000 << 3 | 2)
    for length_bytes in range(1, 6):
        payload = size - len(prefix) - len(key) - length_bytes
        if len(varint(payload)) == length_bytes:
            return prefix + key + varint(payload) + b"p" * payload
    raise AssertionError(f"cannot pad to {size} bytes")


@pytest.mark.parametrize("name", list(RPCS))
def test_message_size_limit_is_resource_exhausted_and_the_limit_itself_passes(
    name: str, request: pytest.FixtureRequest
) -> None:
    served, rpc = server_for(name, request), RPCS[name]
    valid: Message = rpc.request()
    if name == "Feedback":
        valid = pb.FeedbackRequest(request_id=served.request_ids[0], score=1, source=pb.FEEDBACK_SOURCE_APP)
    elif name == "InvalidateCache":
        valid = pb.InvalidateCacheRequest(entry_id="no-such-entry")
    elif rpc.request in (pb.RouteRequest, pb.CompleteRequest):
        valid = route_request("How big can a request be?")
    call = call_stream if rpc.streaming else call_unary
    auth = ADMIN_AUTH if rpc.path.startswith("/tierwise.v1.Admin/") else AUTH
    at_limit = padded(valid.SerializeToString(), MAX_MESSAGE_BYTES)
    assert len(at_limit) == MAX_MESSAGE_BYTES
    code, _, details = call(served.channel, rpc, at_limit, auth)
    assert code is Code.OK, (code, details)
    over = padded(valid.SerializeToString(), MAX_MESSAGE_BYTES + 1)
    code, _, details = call(served.channel, rpc, over, auth)
    assert code is Code.RESOURCE_EXHAUSTED, (code, details)
    served.assert_healthy()


def test_an_answer_over_the_request_limit_is_delivered_whole(
    served: Served, upstream: ScriptedUpstream
) -> None:
    """max_message_bytes bounds requests only: an answer longer than it was paid for, so it is sent."""
    text = "x" * (MAX_MESSAGE_BYTES + 100)  # one word: one delta in a stream
    upstream.script(text=text)
    try:
        code, reply, details = call_unary(
            served.channel, RPCS["Complete"], route_request("Tell me everything."), AUTH
        )
        assert code is Code.OK and reply is not None, (code, details)
        assert pb.CompleteResponse.FromString(reply).content == text
        code, chunks, details = call_stream(
            served.channel, RPCS["CompleteStream"], route_request("Tell me everything."), AUTH
        )
        assert code is Code.OK, (code, details)
        parsed = [pb.CompleteChunk.FromString(c) for c in chunks]
        assert "".join(c.delta for c in parsed) == text and parsed[-1].HasField("end")
    finally:
        upstream.script(text=UPSTREAM_TEXT)
    served.assert_healthy()


def poll(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
