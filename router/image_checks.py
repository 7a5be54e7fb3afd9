"""Checks of the images a user turn carries: where they come from, their type, size and detail.

An image is an ``https`` URL (the tier fetches it) or a ``data:`` URI holding base64 image data of
one of the types every supported wire protocol takes (PNG, JPEG, GIF, WebP). Plain ``http`` is
refused: the upstream would fetch it unencrypted, and a URL of a private address is the caller's
to host over https.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Protocol

from tierwise.router.config import LimitsConfig
from tierwise.router.field_checks import InvalidRequest, check_printable
from tierwise.router.providers.images import data_uri_parts
from tierwise.router.types import ImagePart

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
IMAGE_DETAILS = ("auto", "low", "high")


class WireImagePart(Protocol):
    url: str
    detail: str


def _check_data_uri(field: str, url: str, max_bytes: int) -> None:
    parts = data_uri_parts(url)
    if parts is None:
        raise InvalidRequest(field, "a data URI must be data:image/<type>;base64,<data>")
    media_type, data = parts
    if media_type not in IMAGE_MEDIA_TYPES:
        raise InvalidRequest(
            field, f"media type {media_type[:64]!r} is not one of {', '.join(IMAGE_MEDIA_TYPES)}"
        )
    # The decoded size is known from the length, so an oversized image is refused before decoding.
    size = len(data) * 3 // 4 - data[-2:].count("=")
    if size > max_bytes:
        raise InvalidRequest(field, f"holds {size} bytes; the limit is {max_bytes} (limits.max_image_bytes)")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(field, "is not valid base64") from None
    if not decoded:
        raise InvalidRequest(field, "holds no image data")


def _check_url(field: str, url: str, limits: LimitsConfig) -> None:
    if url.startswith("data:"):
        _check_data_uri(field, url, limits.max_image_bytes)
        return
    if not url.startswith("https://") or len(url) <= len("https://"):
        raise InvalidRequest(field, "must be an https:// URL or a data:image/...;base64, URI")
    if len(url) > limits.max_image_url_chars:
        raise InvalidRequest(field, f"is {len(url)} characters; the limit is {limits.max_image_url_chars}")
    check_printable(field, url)
    if " " in url:
        raise InvalidRequest(field, "must not contain spaces")


def images(
    field: str, role: str, parts: Sequence[WireImagePart], limits: LimitsConfig
) -> tuple[ImagePart, ...]:
    """A turn's images, checked: only user turns carry them."""
    if parts and role != "user":
        raise InvalidRequest(field, f"only user messages carry images; this one is {role!r}")
    out = []
    for j, part in enumerate(parts):
        name = f"{field}[{j}]"
        if not part.url:
            raise InvalidRequest(f"{name}.url", "must not be empty")
        _check_url(f"{name}.url", part.url, limits)
        detail = part.detail or "auto"
        if detail not in IMAGE_DETAILS:
            raise InvalidRequest(
                f"{name}.detail", f"must be one of {', '.join(IMAGE_DETAILS)}; got {detail[:32]!r}"
            )
        out.append(ImagePart(part.url, detail))
    return tuple(out)
