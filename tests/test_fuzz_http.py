"""Fuzzing the HTTP front's chat completions against one real server: Hypothesis draws bodies that
are nearly valid (the schema's own field names, and OpenAI fields tierwise refuses, with values of
every JSON type, boundary numbers and odd strings; messages with odd roles and content parts),
arbitrary JSON, and raw bytes. Every answer must be one of the front's defined statuses with an
OpenAI error body naming a field (or, streamed, end with ``[DONE]`` or an error event); afterwards
the server answers a plain request, logged no error, and its spend ledger still writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness import API_KEY, AUTH
from tests.hypothesis_profiles import fuzz_settings
from tests.test_fuzz_rpc import ErrorLog, LoopThread, Served, errors, loops, serving, upstream
from tierwise.router.openai_schema import UNSUPPORTED, ChatRequest, Controls, MessageIn

__all__ = ["errors", "loops", "upstream"]  # module fixtures this module shares

DEFINED = {200, 400, 404, 413}
HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither
    st.sampled_from([0, 1, -1, 0.5, 2, 2.5, 1024, 2**31, 2**63]),
)
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "small", "large", "tierwise-auto", "auto", "required", "none", "\x00", "\u202e", "a" * 300]
    ),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "", "robot"])
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {
                    "url": st.sampled_from(
                        ["https://x.example/a.png", "http://x", "data:image/png;base64,AAAA", ""]
                    )
                },
                optional={"detail": st.sampled_from(["auto", "low", "high", "max"])},
            ),
        }
    ),
    json_values,
)
messages = st.fixed_dictionaries(
    {"role": roles},
    optional={
        "content": st.one_of(texts, st.none(), st.lists(parts, max_size=3), json_values),
        "tool_calls": json_values,
        "tool_call_id": texts,
        **{name: json_values for name in ("name", "refusal", "extra")},
    },
)
FIELDS = sorted({*ChatRequest.model_fields, *UNSUPPORTED, "colour"} - {"messages", "model"})
bodies = st.fixed_dictionaries(
    {
        "model": st.one_of(st.sampled_from(["small", "large", "tierwise-auto"]), texts),
        "messages": st.one_of(st.lists(messages, min_size=1, max_size=3), json_values),
    },
    optional={
        **{name: json_values for name in FIELDS},
        "tierwise": st.one_of(
            st.dictionaries(st.sampled_from([*Controls.model_fields, "other"]), json_values, max_size=3),
            json_values,
        ),
    },
)
# Valid values, so that part of the traffic gets through to the pipeline (and streams).
tame = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["small", "large", "tierwise-auto"]),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=40)}),
            min_size=1,
            max_size=2,
        ),
    },
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "max_tokens": st.integers(1, 512),
        "stop": st.one_of(
            st.text(min_size=1, max_size=5), st.lists(st.text(min_size=1, max_size=5), max_size=3)
        ),
        "stream": st.booleans(),
        "user": st.text(max_size=10),
        "metadata": st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
        "tierwise": st.fixed_dictionaries(
            {}, optional={"quality_target": st.floats(0, 1), "cache_mode": st.sampled_from(["use", "bypass"])}
        ),
    },
)
raw = st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()))
assert set(MessageIn.model_fields) <= {"role", "content", "tool_calls", "tool_call_id"}


@pytest.fixture(scope="module")
def served(
    loops: LoopThread, upstream: Any, errors: ErrorLog, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    with serving(
        loops, upstream, errors, tmp_path_factory.mktemp("fuzz-http"), cache=False, http=True
    ) as running:
        yield running


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    base = f"http://127.0.0.1:{served.server.http_port}/v1"
    with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
        yield client


def exercise(http: httpx.Client, body: bytes) -> int:
    reply = http.post("/chat/completions", content=body)
    assert reply.status_code in DEFINED, (reply.status_code, reply.text)
    if reply.status_code != 200:
        error = reply.json()["error"]
        assert error["message"] and error["type"], error
        assert reply.status_code == 404 or error["param"], error  # a 400 names what was wrong
    elif reply.headers["content-type"].startswith("text/event-stream"):
        last = reply.text.rstrip().rsplit("\n", 1)[-1]
        assert last == "data: [DONE]" or '"error"' in last, reply.text
    else:
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    return reply.status_code


def test_nearly_valid_bodies_get_a_defined_answer(served: Served, http: httpx.Client) -> None:
    seen: set[int] = set()

    @fuzz_settings(share=0.25)
    @given(body=st.one_of(bodies, tame))
    def run(body: dict[str, Any]) -> None:
        seen.add(exercise(http, json.dumps(body).encode()))

    run()
    assert {200, 400} <= seen, seen
    served.assert_healthy()


def test_arbitrary_bytes_get_a_defined_answer(served: Served, http: httpx.Client) -> None:
    @fuzz_settings(share=0.1)
    @given(body=raw)
    def run(body: bytes) -> None:
        assert exercise(http, body) == 400

    run()
    served.assert_healthy()
    assert AUTH  # the gRPC check in assert_healthy authenticates with the same key
