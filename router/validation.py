"""Turn a wire request into a validated ``RequestSpec``, or say which field is wrong.

Every check runs before any work is done; the error message always starts
with the field's name so a caller can fix the request without guessing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from tierwise.router.config import Config
from tierwise.router.experiments.assignment import ARM_OVERRIDE_KEY, Assigner, BadArmOverride
from tierwise.router.field_checks import InvalidRequest as InvalidRequest
from tierwise.router.field_checks import check_json, check_printable, check_tags
from tierwise.router.image_checks import WireImagePart, images
from tierwise.router.tool_checks import (
    WireToolCall,
    check_response_format,
    check_tier_support,
    check_tool_choice,
    check_tool_turns,
    check_top_p,
    tool_calls,
    tool_names,
)
from tierwise.router.types import ROLES, CacheMode, ChatMessage, RequestSpec

_CACHE_MODES = {0: CacheMode.USE, 1: CacheMode.USE, 2: CacheMode.BYPASS, 3: CacheMode.REFRESH}


class _WireMessage(Protocol):
    role: str
    content: str
    tool_call_id: str

    @property
    def tool_calls(self) -> Sequence[WireToolCall]: ...
    @property
    def images(self) -> Sequence[WireImagePart]: ...


class WireRequest(Protocol):
    """The fields RouteRequest and CompleteRequest share."""

    @property
    def messages(self) -> Sequence[_WireMessage]: ...

    feature: str
    user: str
    tier: str
    quality_target: float
    latency_budget_ms: int
    max_tokens: int
    temperature: float

    @property
    def metadata(self) -> Mapping[str, str]: ...
    @property
    def stop(self) -> Sequence[str]: ...

    tools_json: str
    cache_mode: int
    max_age_s: int
    tool_choice: str
    parallel_tool_calls: bool
    response_format_json: str
    top_p: float
    seed: int

    def HasField(self, field_name: str) -> bool: ...


def _opt_str(request: WireRequest, name: str) -> str | None:
    return str(getattr(request, name)) if request.HasField(name) else None


def _opt_int(request: WireRequest, name: str) -> int | None:
    return int(getattr(request, name)) if request.HasField(name) else None


def _opt_float(request: WireRequest, name: str) -> float | None:
    return float(getattr(request, name)) if request.HasField(name) else None


def _check_text(field: str, value: str, limit: int, *, printable: bool = True) -> None:
    """``printable``: the string names something (a label, a log field). Stop sequences and
    tools JSON are text sent upstream, where a newline is common."""
    if len(value) > limit:
        raise InvalidRequest(field, f"is {len(value)} characters; the limit is {limit}")
    if printable:
        check_printable(field, value)
    elif "\x00" in value:
        raise InvalidRequest(field, "must not contain NUL characters")


def _messages(request: WireRequest, config: Config) -> tuple[ChatMessage, ...]:
    limits = config.limits
    if not request.messages:
        raise InvalidRequest("messages", "at least one message is required")
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            "messages", f"has {len(request.messages)} messages; the limit is {limits.max_messages}"
        )
    total = 0
    out: list[ChatMessage] = []
    call_ids: set[str] = set()
    image_count = 0
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role", f"must be one of {', '.join(ROLES)}; got {message.role!r}"
            )
        calls = tool_calls(
            f"messages[{i}].tool_calls",
            message.role,
            message.tool_calls,
            limits.max_field_chars,
            limits.max_content_chars,
            limits.max_tools_depth,
        )
        check_tool_turns(f"messages[{i}]", message.role, message.tool_call_id, call_ids)
        call_ids.update(c.id for c in calls)
        total += sum(len(c.arguments) for c in calls)
        pictures = images(f"messages[{i}].images", message.role, message.images, limits)
        image_count += len(pictures)
        if image_count > limits.max_images:
            raise InvalidRequest(
                f"messages[{i}].images",
                f"brings the request to {image_count} images; the limit is {limits.max_images}",
            )
        if not message.content.strip() and not calls and not pictures:
            raise InvalidRequest(f"messages[{i}].content", "must not be empty")
        if len(message.content) > limits.max_content_chars:
            raise InvalidRequest(
                f"messages[{i}].content",
                f"is {len(message.content)} characters; the limit is {limits.max_content_chars}",
            )
        total += len(message.content)
        out.append(ChatMessage(message.role, message.content, calls, message.tool_call_id, pictures))
    if total > limits.max_total_chars:
        raise InvalidRequest("messages", f"total {total} characters; the limit is {limits.max_total_chars}")
    if out[-1].role == "tool":  # the model goes on from a tool's result
        return tuple(out)
    if out[-1].role != "user":
        raise InvalidRequest(f"messages[{len(out) - 1}].role", "the last message must be from the user")
    return tuple(out)


def validate_request(request: WireRequest, tenant: str, config: Config) -> RequestSpec:
    limits = config.limits
    messages = _messages(request, config)
    _check_text("feature", request.feature, limits.max_field_chars)
    _check_text("user", request.user, limits.max_field_chars)

    tier = _opt_str(request, "tier")
    if tier is not None and tier not in config.tier_names:
        raise InvalidRequest(
            "tier", f"unknown tier {tier[:64]!r}; configured: {', '.join(config.tier_names)}"
        )

    quality_target = _opt_float(request, "quality_target")
    if quality_target is not None and not (math.isfinite(quality_target) and 0.0 <= quality_target <= 1.0):
        raise InvalidRequest("quality_target", f"must be in [0, 1]; got {quality_target}")

    latency_budget = _opt_int(request, "latency_budget_ms")
    if latency_budget is not None and latency_budget < 0:
        raise InvalidRequest("latency_budget_ms", f"must not be negative; got {latency_budget}")

    max_tokens = _opt_int(request, "max_tokens")
    if max_tokens is not None:
        if max_tokens <= 0:
            raise InvalidRequest("max_tokens", f"must be positive; got {max_tokens}")
        limit_tiers = [config.tier(tier)] if tier is not None else list(config.tiers)
        limit = max(t.max_output_tokens for t in limit_tiers)
        if max_tokens > limit:
            where = f"tier {tier!r}" if tier is not None else "every configured tier"
            raise InvalidRequest("max_tokens", f"{max_tokens} is over the limit of {where} ({limit})")

    temperature = _opt_float(request, "temperature")
    if temperature is not None and not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        raise InvalidRequest("temperature", f"must be in [0, 2]; got {temperature}")

    if len(request.metadata) > limits.max_metadata_entries:
        raise InvalidRequest(
            "metadata", f"has {len(request.metadata)} entries; the limit is {limits.max_metadata_entries}"
        )
    check_tags("metadata", request.metadata, limits.max_metadata_chars)

    if len(request.stop) > limits.max_stop_sequences:
        raise InvalidRequest(
            "stop", f"has {len(request.stop)} sequences; the limit is {limits.max_stop_sequences}"
        )
    for i, stop in enumerate(request.stop):
        if not stop:
            raise InvalidRequest(f"stop[{i}]", "must not be empty")
        _check_text(f"stop[{i}]", stop, limits.max_field_chars, printable=False)
    _check_text("tools_json", request.tools_json, limits.max_tools_chars, printable=False)
    check_json("tools_json", request.tools_json, limits.max_tools_depth)
    tools_json = request.tools_json if request.tools_json.strip() else ""
    names = tool_names(tools_json)
    _check_text("tool_choice", request.tool_choice, limits.max_tools_chars, printable=False)
    check_tool_choice(request.tool_choice, names, limits.max_tools_depth)
    parallel = request.parallel_tool_calls if request.HasField("parallel_tool_calls") else None
    if parallel is not None and not names:
        raise InvalidRequest("parallel_tool_calls", "needs tools_json")
    response_format = request.response_format_json if request.response_format_json.strip() else ""
    _check_text("response_format_json", response_format, limits.max_tools_chars, printable=False)
    check_response_format(response_format, limits.max_tools_depth)
    top_p = _opt_float(request, "top_p")
    check_top_p(top_p)

    if request.cache_mode not in _CACHE_MODES:
        raise InvalidRequest("cache_mode", f"unknown value {request.cache_mode}")
    max_age = _opt_int(request, "max_age_s")
    if max_age is not None and max_age < 0:
        raise InvalidRequest("max_age_s", f"must not be negative; got {max_age}")

    spec = RequestSpec(
        tenant=tenant,
        messages=messages,
        feature=request.feature,
        user=request.user,
        tier=tier,
        quality_target=quality_target,
        latency_budget_ms=latency_budget,
        max_tokens=max_tokens,
        temperature=temperature,
        metadata=dict(request.metadata),
        stop=tuple(request.stop),
        tools_json=tools_json,
        cache_mode=_CACHE_MODES[request.cache_mode],
        max_age_s=max_age,
        tool_choice=request.tool_choice,
        parallel_tool_calls=parallel,
        response_format_json=response_format,
        top_p=top_p,
        seed=_opt_int(request, "seed"),
    )
    check_tier_support(spec, config)
    if ARM_OVERRIDE_KEY in spec.metadata:
        try:
            Assigner(config.experiments).forced_arm(spec)
        except BadArmOverride as exc:
            raise InvalidRequest(f"metadata[{ARM_OVERRIDE_KEY!r}]", str(exc)) from None
    return spec
