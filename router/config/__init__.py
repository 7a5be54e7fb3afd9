"""The service configuration: one YAML file, validated, with environment overrides.

Environment variables override the file: ``TIERWISE_SERVER__PORT=6000`` sets
``server.port``. Unknown keys are errors, so a typo never silently falls back
to a default. ``settings`` holds the whole document (``Config``) and loading;
the sections live in one module per axis (server, cache, observability,
resilience, ledger, learning, experiments); everything is importable from here.
"""

from tierwise.router.config.cache import (
    COSINE_ONLY_THRESHOLD,
    CacheConfig,
    StoreConfig,
)
from tierwise.router.config.experiments import (
    EXPERIMENT_NAME,
    ArmConfig,
    ArmName,
    ExperimentConfig,
    ExperimentName,
)
from tierwise.router.config.keys import KeysConfig
from tierwise.router.config.learning import (
    JudgeConfig,
    LearningConfig,
    RetrainConfig,
    SamplingConfig,
    TrafficConfig,
)
from tierwise.router.config.ledger import (
    AnomalyConfig,
    BudgetConfig,
    BudgetDegrade,
    BudgetStoreConfig,
    FeedbackConfig,
    LedgerConfig,
)
from tierwise.router.config.observability import (
    LoggingConfig,
    MetricLabel,
    MetricsConfig,
    TracingConfig,
)
from tierwise.router.config.rate_limits import RateLimit, RateLimitsConfig
from tierwise.router.config.resilience import (
    Backoff,
    BreakerConfig,
    LatencyWindowConfig,
    ResilienceConfig,
    RetryConfig,
)
from tierwise.router.config.server import (
    ApiKey,
    AuthConfig,
    AuthThrottleConfig,
    ClassifierConfig,
    HeaderFromEnv,
    LimitsConfig,
    PolicyName,
    Price,
    RoutingConfig,
    ServerConfig,
    TierConfig,
    TlsConfig,
)
from tierwise.router.config.settings import Config, ConfigError, load_config, parse_config
from tierwise.router.config.strict import (
    TIER_NAME,
)

__all__ = [
    "COSINE_ONLY_THRESHOLD",
    "EXPERIMENT_NAME",
    "TIER_NAME",
    "AnomalyConfig",
    "ApiKey",
    "ArmConfig",
    "ArmName",
    "AuthConfig",
    "AuthThrottleConfig",
    "Backoff",
    "BreakerConfig",
    "BudgetConfig",
    "BudgetDegrade",
    "BudgetStoreConfig",
    "CacheConfig",
    "ClassifierConfig",
    "Config",
    "ConfigError",
    "ExperimentConfig",
    "ExperimentName",
    "FeedbackConfig",
    "HeaderFromEnv",
    "JudgeConfig",
    "KeysConfig",
    "LatencyWindowConfig",
    "LearningConfig",
    "LedgerConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricLabel",
    "MetricsConfig",
    "PolicyName",
    "Price",
    "RateLimit",
    "RateLimitsConfig",
    "ResilienceConfig",
    "RetrainConfig",
    "RetryConfig",
    "RoutingConfig",
    "SamplingConfig",
    "ServerConfig",
    "StoreConfig",
    "TierConfig",
    "TlsConfig",
    "TracingConfig",
    "TrafficConfig",
    "load_config",
    "parse_config",
]
