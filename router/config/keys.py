"""Config of the API keys kept as data (``tierwise keys``): how often replicas look for changes and
what stored keys get while the key store cannot be read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tierwise.router.config.strict import StrictSection


class KeysConfig(StrictSection):
    """Stored keys live in SQLite under store.path; with store.kind redis in PostgreSQL when
    ledger.postgres_dsn is set, else in Redis. Keys in auth.api_keys work beside them."""

    poll_interval_s: float = Field(
        2.0, gt=0, description="how often each replica asks the store whether the keys changed (one read)"
    )
    fail_mode: Literal["closed", "open"] = Field(
        "closed",
        description="the store unreadable: closed serves the last keys read for max_stale_s, then refuses"
        " stored keys with UNAVAILABLE; open serves the last keys read until the store answers again",
    )
    max_stale_s: float = Field(
        30.0, ge=0, description="closed: the longest the last keys read keep serving while the store is down"
    )
    timeout_s: float = Field(2.0, gt=0, description="the most one read of the key store waits")

    @model_validator(mode="after")
    def _stale_covers_a_poll(self) -> KeysConfig:
        # Closed with a window shorter than a poll would refuse stored keys between healthy polls.
        if self.fail_mode == "closed" and self.max_stale_s < self.poll_interval_s:
            raise ValueError(
                f"keys.max_stale_s ({self.max_stale_s}) must be at least keys.poll_interval_s ({self.poll_interval_s})"
            )
        return self
