"""Image turns as the two wire protocols spell them.

A user turn with images becomes a list of content parts, its text first: OpenAI-compatible tiers
take ``image_url`` parts (https URLs and data URIs alike, with ``detail``); the Messages API takes
``image`` blocks whose source is ``base64`` (a data URI's media type and data) or ``url``. The
Messages API has no ``detail``; validation has already checked every URL.
"""

from __future__ import annotations

import re
from typing import Any

from tierwise.router.types import ChatMessage

_DATA_URI = re.compile(r"data:(?P<media_type>[^;,]*);base64,(?P<data>.*)", re.DOTALL)


def data_uri_parts(url: str) -> tuple[str, str] | None:
    """``(media_type, base64 data)`` of a ``data:...;base64,`` URI, else None."""
    found = _DATA_URI.fullmatch(url)
    return None if found is None else (found["media_type"], found["data"])


def content_parts(message: ChatMessage) -> list[dict[str, Any]]:
    """The OpenAI Chat Completions content parts of a turn with images."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    parts += [
        {"type": "image_url", "image_url": {"url": image.url, "detail": image.detail}}
        for image in message.images
    ]
    return parts


def image_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    """The Messages API content blocks of a turn with images."""
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    for image in message.images:
        data_uri = data_uri_parts(image.url)
        source = (
            {"type": "base64", "media_type": data_uri[0], "data": data_uri[1]}
            if data_uri is not None
            else {"type": "url", "url": image.url}
        )
        blocks.append({"type": "image", "source": source})
    return blocks
