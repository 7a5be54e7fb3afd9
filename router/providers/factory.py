"""Build the upstream client a configured tier speaks to."""

from __future__ import annotations

import os
from typing import assert_never

from tierwise.router.config import ConfigError, TierConfig
from tierwise.router.providers.anthropic import AnthropicProvider
from tierwise.router.providers.base import Provider
from tierwise.router.providers.openai import OpenAIProvider


def build_provider(tier: TierConfig, default_max_tokens: int | None = None) -> Provider:
    """The client for ``tier``; its API key comes from the environment variable the tier names.

    ``default_max_tokens`` is the output cap for Anthropic calls that set none (that API requires
    one); it defaults to the tier's ``max_output_tokens``. Raises ``ConfigError`` when the tier
    names an API key variable that is unset or empty, so a deployment fails at start, not on
    the first request.
    """
    api_key: str | None = None
    if tier.api_key_env:
        api_key = os.environ.get(tier.api_key_env)
        if not api_key:
            raise ConfigError(
                f"tiers.{tier.name}.api_key_env: environment variable {tier.api_key_env} is not set "
                f"(it should hold the API key for {tier.provider} at {tier.base_url})"
            )
    if tier.provider == "openai":
        return OpenAIProvider(tier.base_url, api_key=api_key, headers=tier.headers)
    if tier.provider == "anthropic":
        return AnthropicProvider(
            tier.base_url,
            api_key=api_key,
            headers=tier.headers,
            default_max_tokens=default_max_tokens or tier.max_output_tokens,
        )
    assert_never(tier.provider)
