"""The OpenAI Chat Completions request body, read into the ``CompleteRequest`` message the gRPC front
receives, so one validation (``validation.py``) judges both fronts' requests the same way.

The body's shape is checked by pydantic models that forbid unknown fields: a field tierwise cannot
honour (``n`` above 1, ``logprobs``, ``frequency_penalty``, a message's ``name``...) is refused with
an error naming it, never dropped. Routing controls ride in a ``tierwise`` object of the body (the
SDK's ``extra_body``) or in ``x-tierwise-*`` headers; ``model`` is a tier's name, or ``tierwise-auto``
to let tierwise choose. Errors from the shared validation name proto fields (``tools_json``,
``messages[0].images[0].url``); ``FieldNames.public`` renames them as this body spells them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from tierwise.router.experiments.assignment import ARM_OVERRIDE_KEY
from tierwise.router.field_checks import InvalidRequest
from tierwise.v1 import tierwise_pb2 as pb

AUTO_MODEL = "tierwise-auto"
CONTROL_HEADER = "x-tierwise-"

# Request fields of the OpenAI API that tierwise does not carry: refused by name with this reason.
UNSUPPORTED = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "modalities",
        "name",  # of a message
        "refusal",  # of an assistant message
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "safety_identifier",
        "service_tier",
        "store",
        "top_logprobs",
        "verbosity",
        "web_search_options",
    }
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FunctionCall(_Body):
    name: str
    arguments: str


class ToolCallIn(_Body):
    id: str
    type: Literal["function"]
    function: FunctionCall


class ImageUrl(_Body):
    url: str
    detail: str = ""


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageUrlPart(_Body):
    type: Literal["image_url"]
    image_url: ImageUrl


def _part_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "text part", "image_url": "image part"}.get(kind) if isinstance(kind, str) else None


# Tags that are not identifiers stay out of the field paths of errors (see ``_path``).
ContentPart = Annotated[
    Annotated[TextPart, Tag("text part")] | Annotated[ImageUrlPart, Tag("image part")],
    Discriminator(
        _part_kind,
        custom_error_type="content_part",
        custom_error_message='must be a {"type": "text"} or {"type": "image_url"} part',
    ),
]


class MessageIn(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class Controls(_Body):
    """What steers tierwise itself (the ``tierwise`` body object, or ``x-tierwise-*`` headers)."""

    quality_target: float | None = None
    latency_budget_ms: int | None = None
    feature: str | None = None
    cache_mode: Literal["use", "bypass", "refresh"] | None = None
    max_age_s: int | None = None
    arm: str | None = None


class ChatRequest(_Body):
    model: str
    messages: list[MessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tierwise: Controls | None = None


_CACHE_MODES = {"use": pb.CACHE_MODE_USE, "bypass": pb.CACHE_MODE_BYPASS, "refresh": pb.CACHE_MODE_REFRESH}
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "none"})
_OWN = {name: f"tierwise.{name}" for name in ("quality_target", "latency_budget_ms", "feature", "max_age_s")}
_RENAMED = {"tools_json": "tools", "response_format_json": "response_format", "tier": "model", **_OWN}
_RENAMED["cache_mode"] = "tierwise.cache_mode"
_ARM = f"metadata[{ARM_OVERRIDE_KEY!r}]"
_PROTO_WORDS = re.compile(r"\b(tools_json|response_format_json)\b")
_TOOL_CALL = re.compile(r"^(messages\[\d+\]\.tool_calls\[\d+\])\.(arguments_json|name)$")
_IMAGE = re.compile(r"^messages\[(\d+)\]\.images(?:\[(\d+)\](.*))?$")


class UnknownModel(Exception):
    def __init__(self, model: str, known: Sequence[str]) -> None:
        super().__init__(f"model: {model[:64]!r} is no tier; models: {', '.join(known)}")


@dataclass(frozen=True, slots=True)
class FieldNames:
    """How the body spelt what the proto names differently, for error messages."""

    max_tokens: str = "max_tokens"
    arm: str = _ARM  # tierwise.arm when the control set it, else the metadata entry the caller sent
    # (message, image) -> the content part the image came from
    image_parts: dict[tuple[int, int], int] = field(default_factory=dict)

    def public(self, error: InvalidRequest) -> InvalidRequest:
        problem = _PROTO_WORDS.sub(lambda m: _RENAMED[m.group(1)], str(error)[len(error.field) + 2 :])
        return InvalidRequest(self._name(error.field), problem)

    def _name(self, name: str) -> str:
        if name == "max_tokens":
            return self.max_tokens
        if name == _ARM:
            return self.arm
        if name in _RENAMED:
            return _RENAMED[name]
        if name.startswith("tools_json["):
            return "tools" + name[len("tools_json") :]
        call = _TOOL_CALL.match(name)
        if call is not None:
            return f"{call.group(1)}.function.{'arguments' if call.group(2) == 'arguments_json' else 'name'}"
        image = _IMAGE.match(name)
        if image is None:
            return name
        message = int(image.group(1))
        if image.group(2) is None:
            return f"messages[{message}].content"
        part = self.image_parts[(message, int(image.group(2)))]
        return f"messages[{message}].content[{part}].image_url{image.group(3)}"


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A chat completion body, read: the request every front validates, and how to answer."""

    request: pb.CompleteRequest
    model: str
    stream: bool
    include_usage: bool
    names: FieldNames


def read_chat(body: object, headers: Mapping[str, str], tiers: Sequence[str]) -> ChatCall:
    """Raises ``InvalidRequest`` naming the body's field, or ``UnknownModel``."""
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    try:
        chat = ChatRequest.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    if chat.model != AUTO_MODEL and chat.model not in tiers:
        raise UnknownModel(chat.model, [AUTO_MODEL, *tiers])
    if chat.n is not None and chat.n != 1:
        raise InvalidRequest("n", f"tierwise answers with one choice; n must be 1, got {chat.n}")
    if chat.stream_options is not None and not chat.stream:
        raise InvalidRequest("stream_options", "is only allowed with stream: true")
    if chat.max_tokens is not None and chat.max_completion_tokens is not None:
        raise InvalidRequest("max_completion_tokens", "set max_tokens or max_completion_tokens, not both")
    controls = _controls(chat.tierwise, headers)
    names = FieldNames(
        "max_tokens" if chat.max_completion_tokens is None else "max_completion_tokens",
        "tierwise.arm" if controls.arm is not None else _ARM,
    )
    request = pb.CompleteRequest(messages=[_message(i, m, names) for i, m in enumerate(chat.messages)])
    _fill_generation(request, chat)
    _fill_controls(request, controls)
    if chat.model != AUTO_MODEL:
        request.tier = chat.model
    include_usage = chat.stream_options is not None and chat.stream_options.include_usage
    return ChatCall(request, chat.model, bool(chat.stream), include_usage, names)


def _fill_generation(request: pb.CompleteRequest, chat: ChatRequest) -> None:
    """The fields the tier is sent (and ``user``, which buckets experiments)."""
    max_tokens = chat.max_tokens if chat.max_tokens is not None else chat.max_completion_tokens
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", chat.temperature),
        ("top_p", chat.top_p),
        ("seed", chat.seed),
        ("parallel_tool_calls", chat.parallel_tool_calls),
        ("user", chat.user),
    ):
        if value is not None:
            setattr(request, name, value)
    if chat.stop is not None:
        request.stop.extend([chat.stop] if isinstance(chat.stop, str) else chat.stop)
    if chat.tools is not None:
        request.tools_json = json.dumps(chat.tools)
    if chat.tool_choice is not None:
        choice = chat.tool_choice
        request.tool_choice = choice if isinstance(choice, str) else json.dumps(choice)
    if chat.response_format is not None:
        request.response_format_json = json.dumps(chat.response_format)
    if chat.metadata is not None:
        request.metadata.update(chat.metadata)


def _message(index: int, message: MessageIn, names: FieldNames) -> pb.ChatMessage:
    out = pb.ChatMessage(role=message.role, tool_call_id=message.tool_call_id or "")
    for call in message.tool_calls or ():
        out.tool_calls.add(id=call.id, name=call.function.name, arguments_json=call.function.arguments)
    content = message.content
    if isinstance(content, str):
        out.content = content
        return out
    texts = 0
    for k, part in enumerate(content or ()):
        where = f"messages[{index}].content[{k}]"
        if isinstance(part, ImageUrlPart):
            names.image_parts[(index, len(out.images))] = k
            out.images.add(url=part.image_url.url, detail=part.image_url.detail)
            continue
        # One text, then the images: the shape both wire protocols' tiers are sent.
        if texts or out.images:
            raise InvalidRequest(where, "a turn carries one text part, before its images")
        texts += 1
        out.content = part.text
    return out


def _controls(body: Controls | None, headers: Mapping[str, str]) -> Controls:
    """The body's ``tierwise`` object, with the ``x-tierwise-*`` headers; one control set twice is refused."""
    sent = {
        name[len(CONTROL_HEADER) :].replace("-", "_"): value
        for name, value in ((n.lower(), v) for n, v in headers.items())
        if name.startswith(CONTROL_HEADER)
    }
    if not sent:
        return body or Controls()
    try:
        from_headers = Controls.model_validate(sent, strict=False)  # header values are text
    except ValidationError as exc:
        raise _invalid(exc, prefix=CONTROL_HEADER, header=True) from None
    merged = from_headers.model_dump(exclude_unset=True)
    for name, value in (body.model_dump(exclude_unset=True) if body else {}).items():
        if name in merged:
            header = CONTROL_HEADER + name.replace("_", "-")
            raise InvalidRequest(header, f"sets what tierwise.{name} in the body sets too; send one")
        merged[name] = value
    return Controls.model_validate(merged)


def _fill_controls(request: pb.CompleteRequest, controls: Controls) -> None:
    for name in ("quality_target", "latency_budget_ms", "feature", "max_age_s"):
        value = getattr(controls, name)
        if value is not None:
            setattr(request, name, value)
    if controls.cache_mode is not None:
        request.cache_mode = _CACHE_MODES[controls.cache_mode]
    if controls.arm is not None:
        if ARM_OVERRIDE_KEY in request.metadata:
            raise InvalidRequest("tierwise.arm", f"metadata[{ARM_OVERRIDE_KEY!r}] names an arm too; send one")
        request.metadata[ARM_OVERRIDE_KEY] = controls.arm


def _path(loc: Sequence[int | str], *, header: bool) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_LABELS:  # union members' labels are left out
            out += part.replace("_", "-") if header else ("." if out else "") + part
    return out


def _invalid(exc: ValidationError, *, prefix: str = "", header: bool = False) -> InvalidRequest:
    """The first field pydantic refused, named as the caller spelt it, with every reason it gave."""
    errors = exc.errors(include_url=False, include_input=False)
    # A union's members each fail; the one that went deepest says most (a list's bad part).
    first = max(errors, key=lambda e: len(_path(e["loc"], header=header)))
    name = _path(first["loc"], header=header)
    if first["type"] == "extra_forbidden":
        known = re.split(r"[.\]]", name)[-1] in UNSUPPORTED
        reason = "tierwise cannot honour this field" if known else "is not a field tierwise knows"
        return InvalidRequest(prefix + name, reason)
    reasons = [e["msg"] for e in errors if _path(e["loc"], header=header) == name]
    return InvalidRequest(prefix + (name or "body"), "; or ".join(dict.fromkeys(reasons)).lower())
