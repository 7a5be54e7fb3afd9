"""The base of every config section (frozen, unknown keys rejected) and the naming rules sections share."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def duplicate_names(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


class StrictSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
