"""Config sections of spend and judgments: the ledger, the feedback store, budgets, cost anomalies."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator

from tierwise.router.config.strict import TIER_NAME, StrictSection


class LedgerConfig(StrictSection):
    """The spend ledger: one record per request, journalled on disk, written to the store in batches.

    ``record`` appends to a journal file with a plain write: the kernel keeps it if
    the process dies, but not through a power loss unless ``fsync_journal`` is set.
    """

    enabled: bool = True
    batch_size: int = Field(500, gt=0, description="most records per store write")
    flush_interval_s: float = Field(1.0, gt=0, description="longest a record waits before a store write")
    retention_days: float | None = Field(
        400, gt=0, description="records older than this are purged; null keeps all"
    )
    fsync_journal: bool = Field(
        False, description="fsync every journal append: survives power loss, costs a disk flush"
    )
    postgres_dsn: str | None = Field(
        None, description="PostgreSQL instead of the embedded SQLite file in store.path"
    )
    user_salt_env: str = Field(
        "TIERWISE_USER_SALT",
        description="environment variable with the salt for hashing end-user ids; unset: a random salt kept in store.path",
    )
    compute_usd_per_hour: Decimal = Field(
        Decimal(0),
        ge=0,
        description="what one tierwise process costs an hour; times request overhead = router_cost_usd",
    )


class FeedbackConfig(StrictSection):
    """Judgments (Feedback RPC, sampled judge): kept in SQLite under store.path; with store.kind 'redis'
    each replica appends them to a Redis stream that consumer-group workers land in the store
    (PostgreSQL when ledger.postgres_dsn is set, else the consuming replica's SQLite file)."""

    retention_days: float | None = Field(
        None, gt=0, description="judgments older than this are purged; null keeps all"
    )
    stream: str = Field("tierwise:feedback", min_length=1, description="Redis stream key (shared mode)")
    group: str = Field("tierwise-feedback", min_length=1, description="Redis consumer group (shared mode)")
    claim_idle_s: float = Field(
        30.0,
        gt=0,
        description="a judgment delivered but unacknowledged this long is taken over (dead replica)",
    )
    batch_size: int = Field(100, gt=0, description="most stream entries landed per store write")


class BudgetDegrade(StrictSection):
    """What a request over a soft limit gets: a lower quality target, a cap on the tier, or both."""

    quality_target: float | None = Field(None, ge=0, le=1)
    max_tier: str | None = None

    @model_validator(mode="after")
    def _something(self) -> BudgetDegrade:
        if self.quality_target is None and self.max_tier is None:
            raise ValueError("degrade needs quality_target or max_tier")
        return self


class BudgetConfig(StrictSection):
    """A spending limit per tenant (or tenant + feature, + API key) and calendar window (UTC)."""

    tenant: str = Field(min_length=1, max_length=128)
    feature: str | None = Field(None, min_length=1, description="unset: all of the tenant's features")
    key: str | None = Field(
        None,
        pattern=TIER_NAME.pattern,
        description="the name of one of the tenant's auth.api_keys: only requests made with that key",
    )
    window: Literal["day", "month"]
    usd: Decimal | None = Field(None, gt=0, description="hard limit: requests beyond it are refused")
    tokens: int | None = Field(None, gt=0)
    soft_usd: Decimal | None = Field(None, gt=0, description="soft limit: requests beyond it degrade")
    soft_tokens: int | None = Field(None, gt=0)
    on_soft: Literal["degrade", "notify"] = "degrade"
    degrade: BudgetDegrade = BudgetDegrade(quality_target=0.5)
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    alerts: tuple[float, ...] = Field((0.5, 0.75, 0.9, 1.0), description="shares of the limit that alert")
    fail_mode: Literal["open", "closed"] | None = Field(
        None, description="budget store unreachable: overrides budget_store.fail_mode for this budget"
    )

    @model_validator(mode="after")
    def _limits(self) -> BudgetConfig:
        if all(v is None for v in (self.usd, self.tokens, self.soft_usd, self.soft_tokens)):
            raise ValueError("a budget needs usd, tokens, soft_usd or soft_tokens")
        if self.usd is not None and self.soft_usd is not None and self.soft_usd >= self.usd:
            raise ValueError("soft_usd must be below usd")
        if self.tokens is not None and self.soft_tokens is not None and self.soft_tokens >= self.tokens:
            raise ValueError("soft_tokens must be below tokens")
        if any(not 0 < a <= 1 for a in self.alerts):
            raise ValueError("alerts are shares of the limit in (0, 1]")
        return self

    @property
    def name(self) -> str:
        """``tenant/feature-or-*/window``; a key budget ``tenant/key:NAME/window`` (with a feature,
        ``tenant/feature/key:NAME/window``), so its store rows and Redis keys are its own."""
        if self.key is None:
            return f"{self.tenant}/{self.feature or '*'}/{self.window}"
        feature = "" if self.feature is None else f"{self.feature}/"
        return f"{self.tenant}/{feature}key:{self.key}/{self.window}"


class BudgetStoreConfig(StrictSection):
    """Where budget usage lives: follows store.kind (SQLite in store.path, or Redis at store.url)."""

    fail_mode: Literal["open", "closed"] = Field(
        "closed",
        description="store unreachable (or its lost usage not rebuildable): closed refuses requests under"
        " a hard limit, open admits them unmetered; a budget's own fail_mode overrides it",
    )
    reservation_ttl_s: float = Field(
        600.0,
        gt=0,
        description="an unsettled reservation stops counting after this; above any request's length",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="first wait before retrying an unreachable store")
    reconnect_max_s: float = Field(30.0, gt=0)
    redis_timeout_s: float = Field(0.25, gt=0, description="socket timeout of budget calls to Redis")
    webhook_timeout_s: float = Field(5.0, gt=0)
    rebuild_timeout_s: float = Field(
        10.0,
        gt=0,
        description="longest the ledger may take to give a period's spend when Redis lost it; then fail_mode",
    )


class AnomalyConfig(StrictSection):
    """Cost anomaly flags: each hour's spend per tenant (and tenant + feature) against its own history.

    The baseline is the median of the last ``window_hours`` hours, or, once
    ``seasonal_after_weeks`` weeks of history exist, of the same hour-of-week in
    earlier weeks; the spread is a robust one (MAD) with a floor, so a flat
    series does not flag a tiny change.
    """

    enabled: bool = True
    window_hours: int = Field(168, ge=2, description="hours of history the baseline and spread come from")
    threshold_z: float = Field(4.0, gt=0, description="flag an hour whose robust z-score exceeds this")
    min_history_hours: int = Field(24, ge=1, description="hours of history before an hour is scored")
    seasonal_after_weeks: int = Field(
        3, ge=1, description="weeks of history after which hours compare with the same hour-of-week"
    )
    seasonal_weeks: int = Field(4, ge=1, description="most earlier weeks a seasonal baseline looks at")
    min_sigma_usd: float = Field(0.01, gt=0, description="spread floor in USD per hour")
    min_sigma_ratio: float = Field(0.1, ge=0, description="spread floor as a share of the baseline")
    by_feature: bool = Field(True, description="also score each tenant + feature, not only each tenant")
    check_interval_s: float = Field(300.0, gt=0, description="how often the server checks")

    @model_validator(mode="after")
    def _consistent(self) -> AnomalyConfig:
        if self.min_history_hours > self.window_hours:
            raise ValueError("min_history_hours must not exceed window_hours")
        if self.seasonal_weeks < self.seasonal_after_weeks:
            raise ValueError("seasonal_weeks must be at least seasonal_after_weeks")
        return self
