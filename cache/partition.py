"""Cache scope: the exact partition a request may be answered from, and its exact key.

A partition is never a similarity: two requests share one only when everything
that can change the answer besides the last user turn is identical — tenant,
feature namespace, system prompt, tool definitions, the generation parameters
that matter, and every earlier turn of the conversation (so "cancel it" only
matches "cancel it" said after the same history). The semantic tier searches
inside one partition and nowhere else.

Normalisation, for keys only: Unicode NFC, line endings to ``\\n``, and leading
and trailing whitespace stripped from each message. Case, inner whitespace
(indentation in code), punctuation and numbers are kept, because changing any of
them can change the meaning; near-identical texts are the semantic tier's job.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

Message = tuple[str, str]
"""One chat message as ``(role, content)``."""

KEY_VERSION = 1


def normalise_text(text: str) -> str:
    return unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").strip()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tools_digest(tools_json: str) -> str:
    """SHA-256 of the tool definitions; JSON that parses is canonicalised (key order, spacing) first."""
    return json_digest(tools_json)


def json_digest(json_text: str) -> str:
    """SHA-256 of a JSON text canonicalised (key order, spacing); text that does not parse is hashed
    as normalised text."""
    text = json_text.strip()
    if not text:
        return sha256_hex("")
    try:
        parsed = json.loads(text)
    except ValueError:
        return sha256_hex("raw:" + normalise_text(text))
    return sha256_hex("json:" + _canonical_json(parsed))


def max_tokens_bucket(max_tokens: int | None) -> int:
    """The next power of two at or above ``max_tokens`` (0 when unset)."""
    if max_tokens is None:
        return 0
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    return 1 << (max_tokens - 1).bit_length()


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """The generation settings that change the answer; ``model_class`` is opaque to the cache."""

    model_class: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    top_p: float | None = None
    seed: int | None = None
    tool_choice: str = ""  # a word, or a JSON object
    parallel_tool_calls: bool | None = None
    response_format_json: str = ""

    def key_parts(self) -> dict[str, object]:
        temperature: float | None = None
        if self.temperature is not None:
            if not math.isfinite(self.temperature):
                raise ValueError(f"temperature must be finite, got {self.temperature}")
            # One decimal: 0.70 and 0.7000001 are the same setting, 0.7 and 0.8 are not.
            temperature = round(self.temperature, 1) + 0.0
        return {
            "model_class": self.model_class,
            "max_tokens_bucket": max_tokens_bucket(self.max_tokens),
            "temperature": temperature,
            # The order of stop sequences does not change the output.
            "stop": sorted(set(self.stop)),
            **self._later_parts(),
        }

    def _later_parts(self) -> dict[str, object]:
        """Parts added after version 1, present only when set: the keys of requests without them
        stay what they were, so entries stored before still serve them."""
        parts: dict[str, object] = {}
        if self.top_p is not None:
            if not math.isfinite(self.top_p):
                raise ValueError(f"top_p must be finite, got {self.top_p}")
            parts["top_p"] = self.top_p + 0.0
        if self.seed is not None:
            parts["seed"] = self.seed
        if self.tool_choice:
            parts["tool_choice"] = json_digest(self.tool_choice)
        if self.parallel_tool_calls is not None:
            parts["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format_json:
            parts["response_format"] = json_digest(self.response_format_json)
        return parts


def last_user_index(messages: Sequence[Message]) -> int:
    """Index of the last ``user`` message, or -1 when there is none."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index][0] == "user":
            return index
    return -1


def last_user_turn(messages: Sequence[Message]) -> str:
    index = last_user_index(messages)
    return messages[index][1] if index >= 0 else ""


def context_digest(messages: Sequence[Message]) -> str:
    """Hash of every non-system message except the last user turn, roles and positions included."""
    query_index = last_user_index(messages)
    context: list[list[str]] = []
    for index, (role, content) in enumerate(messages):
        if role == "system":
            continue
        # The query's own slot is marked, so turns after it (an assistant prefill) stay distinct.
        context.append(["<query>", ""] if index == query_index else [role, normalise_text(content)])
    return sha256_hex(_canonical_json(context))


def system_digest(messages: Sequence[Message]) -> str:
    return sha256_hex(
        _canonical_json([normalise_text(content) for role, content in messages if role == "system"])
    )


@dataclass(frozen=True, slots=True)
class Partition:
    """``key`` is the SHA-256 of every scope part; tenant and namespace are kept for invalidation."""

    tenant: str
    namespace: str
    key: str


def build_partition(
    tenant: str,
    namespace: str,
    messages: Sequence[Message],
    params: GenerationParams | None = None,
    tools_json: str = "",
    attachments: str = "",
) -> Partition:
    """``attachments`` names the request's non-text inputs (a digest of its images): part of the
    key only when set, so text-only keys stay what they were."""
    parts: dict[str, object] = {
        "v": KEY_VERSION,
        "tenant": tenant,
        "namespace": namespace,
        "system": system_digest(messages),
        "tools": tools_digest(tools_json),
        "params": (params or GenerationParams()).key_parts(),
        "context": context_digest(messages),
    }
    if attachments:
        parts["attachments"] = attachments
    return Partition(tenant, namespace, sha256_hex(_canonical_json(parts)))


EXACT_KEY_SCHEME = b"tierwise-exact-2\x00"
"""Version 1 hashed the canonical JSON of the partition and the messages. JSON-escaping a text holds
the GIL (about 5 ms for a million characters), so version 2 streams length-prefixed parts into the
hash, which releases the GIL for large buffers. Entries stored under version 1 keys are no longer
found by their exact key; the semantic tier still finds them (the same text, in the same partition)."""


def exact_key(partition: Partition, messages: Sequence[Message]) -> str:
    """Hash of the partition and the full normalised message list: equal keys mean the same request.

    Every part is preceded by its length in bytes, so no choice of texts spells another's parts."""
    digest = hashlib.sha256(EXACT_KEY_SCHEME)
    for part in (partition.key, *(p for role, content in messages for p in (role, normalise_text(content)))):
        data = part.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
