"""Partition and exact keys: everything that can change the answer separates requests."""

from __future__ import annotations

import json

import pytest

from tierwise.cache.partition import (
    GenerationParams,
    build_partition,
    context_digest,
    exact_key,
    last_user_turn,
    max_tokens_bucket,
    tools_digest,
)

SYSTEM = ("system", "You are a support agent.")
BASE = [SYSTEM, ("user", "Where is my order?")]


def key(**changes: object) -> str:
    args: dict[str, object] = {
        "tenant": "acme",
        "namespace": "support",
        "messages": BASE,
        "params": GenerationParams("small", 256, 0.0, ()),
        "tools_json": "",
    }
    args.update(changes)
    return build_partition(**args).key  # type: ignore[arg-type]


def test_same_scope_same_partition_and_last_turn_does_not_matter() -> None:
    assert key() == key()
    assert key() == key(messages=[SYSTEM, ("user", "Where is my parcel?")])


@pytest.mark.parametrize(
    "changes",
    [
        {"tenant": "globex"},
        {"namespace": "billing"},
        {"messages": [("system", "You are a pirate."), ("user", "Where is my order?")]},
        {"messages": [("user", "Where is my order?")]},
        {"tools_json": '[{"name": "lookup_order"}]'},
        {"params": GenerationParams("large", 256, 0.0, ())},
        {"params": GenerationParams("small", 1024, 0.0, ())},
        {"params": GenerationParams("small", 256, 0.7, ())},
        {"params": GenerationParams("small", 256, 0.0, ("END",))},
        {"messages": [SYSTEM, ("user", "Hi"), ("assistant", "Hello!"), ("user", "Where is my order?")]},
    ],
)
def test_any_scope_change_gives_another_partition(changes: dict[str, object]) -> None:
    assert key(**changes) != key()


def test_equivalent_settings_share_a_partition() -> None:
    # Same bucket, same rounded temperature, stop order and JSON spacing do not change the answer.
    assert key(params=GenerationParams("small", 200, 0.0, ())) == key()
    assert key(params=GenerationParams("small", 256, 0.04, ())) == key()
    a = key(params=GenerationParams("small", 256, 0.0, ("a", "b")), tools_json='{"x": 1, "y": [1, 2]}')
    b = key(params=GenerationParams("small", 256, 0.0, ("b", "a")), tools_json='{ "y": [1,2], "x":1 }')
    assert a == b


def test_earlier_turns_separate_follow_ups() -> None:
    flight = [SYSTEM, ("user", "Book a flight to Oslo"), ("assistant", "Booked."), ("user", "cancel it")]
    hotel = [SYSTEM, ("user", "Book a hotel in Oslo"), ("assistant", "Booked."), ("user", "cancel it")]
    assert key(messages=flight) != key(messages=hotel)
    # Roles are part of the history: the same words said by the other side are another conversation.
    swapped = [SYSTEM, ("assistant", "Book a flight to Oslo"), ("user", "Booked."), ("user", "cancel it")]
    assert context_digest(flight) != context_digest(swapped)
    # A turn after the question (an assistant prefill) is context too.
    assert context_digest([("user", "q")]) != context_digest([("user", "q"), ("assistant", "Sure")])


def test_exact_key_normalises_only_what_cannot_change_meaning() -> None:
    partition = build_partition("acme", "support", BASE)
    base = exact_key(partition, BASE)
    assert exact_key(partition, [SYSTEM, ("user", "  Where is my order?\r\n")]) == base
    for different in ("where is my order?", "Where is my order", "Where is my  order?", "Where is order 2?"):
        assert exact_key(partition, [SYSTEM, ("user", different)]) != base
    other = build_partition("globex", "support", BASE)
    assert exact_key(other, BASE) != base
    # Each part is length-prefixed: texts split or joined differently never spell the same key.
    spellings = [[("user", "ab")], [("user", "a"), ("user", "b")], [("usera", "b")], [("user", "a\x00b")]]
    assert len({exact_key(partition, m) for m in spellings}) == len(spellings)


def test_helpers() -> None:
    assert [max_tokens_bucket(n) for n in (None, 1, 2, 3, 256, 257)] == [0, 1, 2, 4, 256, 512]
    with pytest.raises(ValueError):
        max_tokens_bucket(0)
    assert tools_digest("not json {") != tools_digest("not json  {!")
    assert tools_digest("") == tools_digest("   ")
    assert last_user_turn([("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]) == "c"
    assert last_user_turn([("system", "s")]) == ""
    with pytest.raises(ValueError):
        GenerationParams(temperature=float("nan")).key_parts()


def test_parameters_added_later_leave_the_keys_of_requests_without_them_unchanged() -> None:
    # Entries stored before top_p, seed, tool_choice, parallel_tool_calls and response_format
    # existed keep serving the requests that set none of them.
    assert set(GenerationParams("small", 256, 0.0, ("a",)).key_parts()) == {
        "model_class",
        "max_tokens_bucket",
        "temperature",
        "stop",
    }
    keys = {
        json.dumps(GenerationParams(**change).key_parts(), sort_keys=True)
        for change in (
            {},
            {"top_p": 0.5},
            {"seed": 3},
            {"tool_choice": "auto"},
            {"parallel_tool_calls": False},
            {"response_format_json": '{"type": "json_object"}'},
        )
    }
    assert len(keys) == 6
