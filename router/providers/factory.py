"""Build the upstream client a configured tier speaks to."""

from __future__ import annotations

import os
from typing import assert_never

from tierwise.router.config import ConfigError, HeaderFromEnv, TierConfig
from tierwise.router.config.server import header_value_problem
from tierwise.router.providers.anthropic import AnthropicProvider
from tierwise.router.providers.azure_openai import AzureOpenAIProvider
from tierwise.router.providers.base import Provider
from tierwise.router.providers.openai import OpenAIProvider


def build_provider(tier: TierConfig, default_max_tokens: int | None = None) -> Provider:
    """The client for ``tier``; its API key and ``{env: VAR}`` headers come from the environment.

    ``default_max_tokens`` is the output cap for Anthropic calls that set none (that API requires
    one); it defaults to the tier's ``max_output_tokens``. Raises ``ConfigError`` when a variable
    the tier names is unset or empty, or holds what cannot be a header value, so a deployment
    fails at start, not on the first request. No message quotes a value: they are secrets.
    """
    api_key: str | None = None
    if tier.api_key_env:
        api_key = _from_env(
            tier.api_key_env,
            f"tiers.{tier.name}.api_key_env",
            f"the API key for {tier.provider} at {tier.base_url}",
        )
    headers = {
        name: _from_env(value.env, f"tiers.{tier.name}.headers.{name}.env", f"the {name} header")
        if isinstance(value, HeaderFromEnv)
        else value.get_secret_value()
        for name, value in tier.headers.items()
    }
    if tier.provider == "openai":
        return OpenAIProvider(tier.base_url, api_key=api_key, headers=headers)
    if tier.provider == "azure_openai":
        assert tier.api_version is not None  # TierConfig requires it for this provider
        return AzureOpenAIProvider(
            tier.base_url,
            deployment=tier.azure_deployment,
            api_version=tier.api_version,
            api_key=api_key,
            headers=headers,
        )
    if tier.provider == "anthropic":
        return AnthropicProvider(
            tier.base_url,
            api_key=api_key,
            headers=headers,
            default_max_tokens=default_max_tokens or tier.max_output_tokens,
        )
    assert_never(tier.provider)


def _from_env(variable: str, where: str, holds: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{where}: environment variable {variable} is not set (it should hold {holds})")
    problem = header_value_problem(value)
    if problem:
        raise ConfigError(f"{where}: environment variable {variable} {problem} (it should hold {holds})")
    return value
