"""``Config``: the whole YAML document, its cross-section checks, and loading it (with environment overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tierwise.router.config.cache import (
    CacheConfig,
    StoreConfig,
)
from tierwise.router.config.experiments import (
    ExperimentConfig,
)
from tierwise.router.config.keys import KeysConfig
from tierwise.router.config.learning import (
    LearningConfig,
)
from tierwise.router.config.ledger import (
    AnomalyConfig,
    BudgetConfig,
    BudgetStoreConfig,
    FeedbackConfig,
    LedgerConfig,
)
from tierwise.router.config.observability import (
    LoggingConfig,
    MetricsConfig,
    TracingConfig,
)
from tierwise.router.config.rate_limits import RateLimitsConfig
from tierwise.router.config.resilience import (
    ResilienceConfig,
)
from tierwise.router.config.server import (
    AuthConfig,
    LimitsConfig,
    RoutingConfig,
    ServerConfig,
    TierConfig,
)
from tierwise.router.config.strict import duplicate_names


class ConfigError(ValueError):
    """The configuration file is missing, unreadable, or invalid; the message names the key."""


class Config(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIERWISE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        # A rejected value may be a secret (a tier header, a key): errors name the key, not the value.
        hide_input_in_errors=True,
    )

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    tiers: tuple[TierConfig, ...] = Field(min_length=1, description="cheapest first")
    routing: RoutingConfig = RoutingConfig()
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    cache: CacheConfig = CacheConfig()
    logging: LoggingConfig = LoggingConfig()
    ledger: LedgerConfig = LedgerConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    budgets: tuple[BudgetConfig, ...] = ()
    budget_store: BudgetStoreConfig = BudgetStoreConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    learning: LearningConfig = LearningConfig()
    experiments: tuple[ExperimentConfig, ...] = ()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    keys: KeysConfig = KeysConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (which arrives as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _tiers_consistent(self) -> Config:
        names = [t.name for t in self.tiers]
        duplicates = duplicate_names(names)
        if duplicates:
            raise ValueError(f"tiers: duplicate tier names {duplicates}")
        unknown = sorted(set(self.routing.length_thresholds) - set(names))
        if unknown:
            raise ValueError(f"routing.length_thresholds: unknown tiers {unknown}; configured: {names}")
        return self

    @model_validator(mode="after")
    def _budgets_consistent(self) -> Config:
        seen: set[str] = set()
        for index, budget in enumerate(self.budgets):
            if budget.name in seen:
                raise ValueError(f"budgets[{index}]: a second budget for {budget.name}")
            seen.add(budget.name)
            if budget.key is not None:
                self._budget_key(index, budget)
            if budget.degrade.max_tier is not None and budget.degrade.max_tier not in self.tier_names:
                raise ValueError(
                    f"budgets[{index}].degrade.max_tier: unknown tier {budget.degrade.max_tier!r}; "
                    f"configured: {list(self.tier_names)}"
                )
        return self

    def _budget_key(self, index: int, budget: BudgetConfig) -> None:
        tenants = {k.name: k.tenant for k in self.auth.api_keys if k.name is not None}
        if budget.key not in tenants:
            raise ValueError(
                f"budgets[{index}].key: no API key named {budget.key!r} in auth.api_keys; "
                f"named keys: {sorted(tenants)}"
            )
        if tenants[budget.key] != budget.tenant:
            raise ValueError(
                f"budgets[{index}].key: API key {budget.key!r} belongs to tenant "
                f"{tenants[budget.key]!r}, not to the budget's tenant {budget.tenant!r}"
            )

    @model_validator(mode="after")
    def _learning_tiers(self) -> Config:
        names = set(self.tier_names)
        sampling, judge = self.learning.sampling, self.learning.judge
        unknown = sorted(set(sampling.rate_by_tier) - names)
        if unknown:
            raise ValueError(f"learning.sampling.rate_by_tier: unknown tiers {unknown}")
        if judge.tier is not None and judge.tier not in names:
            raise ValueError(f"learning.judge.tier: unknown tier {judge.tier!r}; configured: {sorted(names)}")
        return self

    @model_validator(mode="after")
    def _experiments_consistent(self) -> Config:
        duplicates = duplicate_names([e.name for e in self.experiments])
        if duplicates:
            raise ValueError(f"experiments: duplicate experiment names {duplicates}")
        for i, experiment in enumerate(self.experiments):
            for j, arm in enumerate(experiment.arms):
                where = f"experiments[{i}].arms[{j}]"
                policy = arm.policy or self.routing.policy
                if arm.model_version is not None and policy != "classifier":
                    raise ValueError(
                        f"{where}.model_version: needs policy classifier (the arm's is {policy!r})"
                    )
                if arm.cache and not self.cache.enabled:
                    raise ValueError(f"{where}.cache: the cache is off (cache.enabled: false)")
        return self

    def tier(self, name: str) -> TierConfig:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any]) -> Config:
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_describe(exc)}") from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping")
    return parse_config(raw)
