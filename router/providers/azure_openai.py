"""Client for Azure OpenAI's Chat Completions: the OpenAI wire format, posted to a deployment's
URL (``{base_url}/openai/deployments/{deployment}/chat/completions?api-version=...``) with
the key in an ``api-key`` header instead of ``Authorization: Bearer``."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from tierwise.router.providers.openai import OpenAIProvider


class AzureOpenAIProvider(OpenAIProvider):
    """``base_url`` is the resource endpoint (``https://NAME.openai.azure.com``); the deployment,
    not the body's ``model``, picks the model Azure runs."""

    kind = "azure_openai"

    def __init__(
        self,
        base_url: str,
        *,
        deployment: str,
        api_version: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
    ) -> None:
        super().__init__(base_url, api_key=api_key, headers=headers, max_connections=max_connections)
        query = urllib.parse.urlencode({"api-version": api_version})
        self._chat_path = (
            f"/openai/deployments/{urllib.parse.quote(deployment, safe='')}/chat/completions?{query}"
        )

    def _protocol_headers(self, api_key: str | None) -> dict[str, str]:
        return {"api-key": api_key} if api_key else {}
