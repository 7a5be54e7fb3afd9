"""Upstream model clients behind one ``Provider`` protocol: OpenAI-compatible Chat Completions and
the Anthropic Messages API, over one shared HTTP client."""
