"""Checks of the request fields that shape an answer beyond its text — tool definitions, the tool
choice, tool turns in the conversation, the response format, top_p and seed — and of which tiers
can carry them.

Every field is either sent to the tier or refused: a field a tier's wire protocol has no
counterpart for (``UNSUPPORTED``) pins no such tier, and a routed request is only routed among the
tiers that can carry all of its fields (``admits``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tierwise.router.config import Config, TierConfig
from tierwise.router.field_checks import InvalidRequest, check_json, check_printable
from tierwise.router.providers.tools import chosen_tool, function_of
from tierwise.router.types import RequestSpec, ToolCall

TOOL_CHOICE_WORDS = ("auto", "none", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")

# Per wire protocol, the request fields it has no counterpart for, and when a request sets one.
# The Messages API has no sampling seed, and its JSON output is asked for through a tool, not a
# response format, so neither can be passed on faithfully.
UNSUPPORTED: dict[str, dict[str, Callable[[RequestSpec], bool]]] = {
    "anthropic": {
        "response_format_json": lambda spec: bool(spec.response_format_json),
        "seed": lambda spec: spec.seed is not None,
    },
}


class WireToolCall(Protocol):
    id: str
    name: str
    arguments_json: str


def json_object(field: str, text: str, max_depth: int) -> dict[str, Any]:
    """``text`` parsed, which must be a JSON object nested at most ``max_depth`` deep."""
    check_json(field, text, max_depth)
    value = json.loads(text) if text.strip() else None
    if not isinstance(value, dict):
        raise InvalidRequest(field, "must be a JSON object")
    return value


def tool_calls(
    field: str,
    role: str,
    calls: Sequence[WireToolCall],
    max_chars: int,
    max_arguments_chars: int,
    max_depth: int,
) -> tuple[ToolCall, ...]:
    """An assistant turn's tool calls: each with an id and a name of at most ``max_chars``, and a
    JSON object of arguments (at most ``max_arguments_chars``, checked before it is parsed)."""
    if calls and role != "assistant":
        raise InvalidRequest(field, f"only assistant messages carry tool calls; this one is {role!r}")
    out = []
    for j, call in enumerate(calls):
        name = f"{field}[{j}]"
        for part, value in (("id", call.id), ("name", call.name)):
            if not value:
                raise InvalidRequest(f"{name}.{part}", "must not be empty")
            if len(value) > max_chars:
                raise InvalidRequest(
                    f"{name}.{part}", f"is {len(value)} characters; the limit is {max_chars}"
                )
            check_printable(f"{name}.{part}", value)
        if len(call.arguments_json) > max_arguments_chars:
            raise InvalidRequest(
                f"{name}.arguments_json",
                f"is {len(call.arguments_json)} characters; the limit is {max_arguments_chars}",
            )
        json_object(f"{name}.arguments_json", call.arguments_json, max_depth)
        out.append(ToolCall(call.id, call.name, call.arguments_json))
    return tuple(out)


def check_tool_turns(field: str, role: str, tool_call_id: str, earlier_ids: set[str]) -> None:
    """A tool turn answers a call an earlier assistant turn made; no other turn names one."""
    if role != "tool":
        if tool_call_id:
            raise InvalidRequest(
                f"{field}.tool_call_id", f"only tool messages carry one; this one is {role!r}"
            )
        return
    if not tool_call_id:
        raise InvalidRequest(f"{field}.tool_call_id", "a tool message must name the call it answers")
    if tool_call_id not in earlier_ids:
        raise InvalidRequest(
            f"{field}.tool_call_id", f"{tool_call_id[:64]!r} is no tool call of an earlier assistant message"
        )


def tool_names(tools_json: str) -> list[str]:
    """The names of the tools in ``tools_json`` (already checked as JSON): a JSON array of tool
    definitions, ``{"type": "function", "function": {"name": ...}}`` or the bare function object."""
    if not tools_json:
        return []
    tools = json.loads(tools_json)
    if not isinstance(tools, list):
        raise InvalidRequest("tools_json", "must be a JSON array of tool definitions")
    names = []
    for i, tool in enumerate(tools):
        function = function_of(tool)
        if function is None:
            raise InvalidRequest(
                f"tools_json[{i}]", 'must be an object with a "name" (or a "function" with one)'
            )
        names.append(str(function["name"]))
    return names


def check_tool_choice(choice: str, names: Sequence[str], max_depth: int) -> None:
    if not choice:
        return
    if not names:
        raise InvalidRequest("tool_choice", "needs tools_json")
    if choice in TOOL_CHOICE_WORDS:
        return
    if not choice.startswith("{"):
        raise InvalidRequest(
            "tool_choice", f"must be auto, none, required or a JSON object naming a tool; got {choice[:64]!r}"
        )
    name = chosen_tool(json_object("tool_choice", choice, max_depth))
    if name is None:
        raise InvalidRequest(
            "tool_choice", 'a JSON tool_choice is {"type": "function", "function": {"name": ...}}'
        )
    if name not in names:
        raise InvalidRequest("tool_choice", f"names {name[:64]!r}, which tools_json does not define")


def check_response_format(text: str, max_depth: int) -> None:
    if not text:
        return
    value = json_object("response_format_json", text, max_depth)
    kind = value.get("type")
    if kind not in RESPONSE_FORMATS:
        raise InvalidRequest(
            "response_format_json", f'"type" must be one of {", ".join(RESPONSE_FORMATS)}; got {kind!r:.64}'
        )
    schema = value.get("json_schema")
    if kind == "json_schema" and not (
        isinstance(schema, dict)
        and isinstance(schema.get("name"), str)
        and isinstance(schema.get("schema"), dict)
    ):
        raise InvalidRequest(
            "response_format_json", '"json_schema" must be an object with a "name" and a "schema"'
        )


def check_top_p(top_p: float | None) -> None:
    if top_p is not None and not (math.isfinite(top_p) and 0.0 <= top_p <= 1.0):
        raise InvalidRequest("top_p", f"must be in [0, 1]; got {top_p}")


def refused_fields(tier: TierConfig, spec: RequestSpec) -> list[str]:
    """The fields ``spec`` sets that ``tier``'s wire protocol (or, for images, its model) cannot carry."""
    refused = [name for name, is_set in UNSUPPORTED.get(tier.provider, {}).items() if is_set(spec)]
    if not tier.images:
        refused += [f"messages[{i}].images" for i, m in enumerate(spec.messages) if m.images][:1]
    elif tier.provider == "anthropic":  # the Messages API has no detail: auto is what it does anyway
        refused += [
            f"messages[{i}].images[{j}].detail"
            for i, m in enumerate(spec.messages)
            for j, image in enumerate(m.images)
            if image.detail in ("low", "high")
        ][:1]
    return refused


def admits(tier: TierConfig, spec: RequestSpec) -> bool:
    """``tier`` can answer ``spec`` as asked: its output limit and its protocol allow every field."""
    fits = spec.max_tokens is None or spec.max_tokens <= tier.max_output_tokens
    return fits and not refused_fields(tier, spec)


def check_tier_support(spec: RequestSpec, config: Config) -> None:
    """A pinned tier must carry every field; a routed request needs one tier that carries them all."""
    tiers = [config.tier(spec.tier)] if spec.tier is not None else list(config.tiers)
    if any(admits(t, spec) for t in tiers):
        return
    for tier in tiers:
        for field in refused_fields(tier, spec):
            where = "" if spec.tier is not None else "no tier that could answer honours it: "
            raise InvalidRequest(field, f"{where}tier {tier.name!r} ({tier.provider}) cannot honour it")
