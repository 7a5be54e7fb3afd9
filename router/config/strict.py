"""The base of every config section (frozen, unknown keys rejected) and the naming rules sections share."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_digest(value: str) -> str:
    """A key's SHA-256 as config holds it (an API key, the scrape key): 64 hex digits, lower case."""
    value = value.strip().lower()
    if not SHA256_HEX.fullmatch(value):
        raise ValueError("must be the 64-hex-digit SHA-256 of the key")
    return value


def duplicate_names(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


class StrictSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
