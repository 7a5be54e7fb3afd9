"""Upstream model clients behind one ``Provider`` protocol: OpenAI-compatible Chat Completions (Azure
OpenAI's deployments too) and the Anthropic Messages API, over one shared HTTP client."""

from tierwise.router.providers.base import (
    ChatCall,
    ChatResult,
    Provider,
    StreamEvent,
    StreamFinish,
    TextDelta,
)
from tierwise.router.providers.errors import ErrorType, ProviderError
from tierwise.router.providers.factory import build_provider

__all__ = [
    "ChatCall",
    "ChatResult",
    "ErrorType",
    "Provider",
    "ProviderError",
    "StreamEvent",
    "StreamFinish",
    "TextDelta",
    "build_provider",
]
