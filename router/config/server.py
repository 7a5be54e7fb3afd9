"""Config sections of the serving front: server and TLS, API-key auth, tiers and their prices, routing, limits."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from tierwise.router.config.strict import TIER_NAME, StrictSection, duplicate_names, sha256_digest
from tierwise.router.config.unfamiliar import UnfamiliarConfig

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
AZURE_API_VERSION = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$")


class TlsConfig(StrictSection):
    """gRPC over TLS; with ``client_ca_file`` clients must present a certificate it signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ServerConfig(StrictSection):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 turns /metrics off")
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="the OpenAI-compatible HTTP front (POST /v1/chat/completions, GET /v1/models); unset: off",
    )
    grace_period_s: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    log_prompts: bool = False
    default_timeout_s: float = Field(60.0, gt=0, description="upstream deadline when the caller sets none")
    max_prompt_tokens: int = Field(
        1_000_000,
        gt=0,
        description="prompts over this many tokens (under any tier's encoding) are refused with"
        " INVALID_ARGUMENT before a model reads them; the default refuses none the limits admit",
    )
    work_threads: int = Field(
        2, ge=1, le=256, description="threads for each request's CPU-bound steps, off the event loop"
    )
    work_queue: int = Field(
        128,
        ge=1,
        description="requests waiting for those threads; past it a request is refused with"
        " RESOURCE_EXHAUSTED and a retry hint",
    )
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _own_http_port(self) -> ServerConfig:
        if self.http_port:  # 0 (a free port, in tests) cannot clash
            for name in ("port", "metrics_port"):
                if self.http_port == getattr(self, name):
                    raise ValueError(
                        f"http_port: {self.http_port} is also server.{name}; give it its own port"
                    )
        return self


class ApiKey(StrictSection):
    key_sha256: str
    tenant: str = Field(min_length=1, max_length=128)
    admin: bool = Field(False, description="may use the Admin service across tenants")
    name: str | None = Field(
        None,
        pattern=TIER_NAME.pattern,
        description="names the key in metrics and logs (else its digest prefix)",
    )
    rpm: int | None = Field(None, gt=0, description="this key's requests per minute (rate_limits)")
    tpm: int | None = Field(None, gt=0, description="this key's tokens per minute (rate_limits)")

    @property
    def label(self) -> str:
        """What identifies the key outside the config: its name, else its digest's first 12 digits."""
        return self.name or self.key_sha256[:12]

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        return sha256_digest(value)


class AuthThrottleConfig(StrictSection):
    """Failed authentications per source address: after ``max_failures`` within ``window_s`` of
    the first, the source is refused without a key check until that window ends."""

    max_failures: int = Field(10, ge=0, description="0 turns throttling off")
    window_s: float = Field(60.0, gt=0)
    max_sources: int = Field(
        10_000, gt=0, description="addresses tracked at once; the least recently failed is forgotten first"
    )


class AuthConfig(StrictSection):
    mode: Literal["api_key", "none"] = "api_key"
    tenant: str | None = Field(None, description="the tenant every request gets when mode is none")
    api_keys: tuple[ApiKey, ...] = ()
    throttle: AuthThrottleConfig = AuthThrottleConfig()

    @model_validator(mode="after")
    def _mode_needs(self) -> AuthConfig:
        if self.mode == "none" and not self.tenant:
            raise ValueError("auth.mode 'none' needs auth.tenant")
        duplicates = duplicate_names([k.label for k in self.api_keys])
        if duplicates:
            raise ValueError(f"auth.api_keys: names (or digest prefixes) {duplicates} name two keys")
        return self


class Price(StrictSection):
    """USD per million tokens; cached input defaults to the input price."""

    input_per_mtok: Decimal = Field(Decimal(0), ge=0)
    output_per_mtok: Decimal = Field(Decimal(0), ge=0)
    cached_input_per_mtok: Decimal | None = Field(None, ge=0)

    @property
    def cached_input(self) -> Decimal:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot go out as a header value, in words that never quote it (it may be a
    secret, and the HTTP client's own refusal would repeat it in an error that reaches callers)."""
    if not value.isascii() or not value.isprintable():
        return "holds a character other than printable ASCII (a line break?)"
    if value != value.strip():
        return "has leading or trailing whitespace"
    return None


class HeaderFromEnv(StrictSection):
    """A header value read from an environment variable at start, so a secret stays out of the file."""

    env: str = Field(pattern=ENV_NAME.pattern)


def _header_kind(value: object) -> str:
    return "from_env" if isinstance(value, dict | HeaderFromEnv) else "plain"


# Chosen by shape, so a bad value gets one error (its own kind's), not one per kind it is not.
HeaderValue = Annotated[
    Annotated[SecretStr, Tag("plain")] | Annotated[HeaderFromEnv, Tag("from_env")],
    Discriminator(_header_kind),
]


class TierConfig(StrictSection):
    # A rejected value stays out of the error's text: header values may be secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    provider: Literal["openai", "anthropic", "azure_openai"]
    base_url: str = Field(description="azure_openai: the resource endpoint, https://NAME.openai.azure.com")
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    deployment: str | None = Field(
        None, pattern=TIER_NAME.pattern, description="azure_openai: the deployment (default: the model)"
    )
    api_version: str | None = Field(
        None, pattern=AZURE_API_VERSION.pattern, description="azure_openai (required): YYYY-MM-DD[-preview]"
    )
    price: Price = Price()
    max_output_tokens: int = Field(
        1024, gt=0, description="sent upstream as max_tokens when the caller sets none: every call is bounded"
    )
    timeout_s: float = Field(
        30.0, gt=0, description="the most one try may wait; every try's timeout while the tier has no history"
    )
    adaptive_timeout: bool = Field(
        True,
        description="with a latency history, a try waits timeout_p99_factor x the recent p99 of the tier's"
        " calls projected to the try's output bound (resilience/timeouts.py), instead of timeout_s",
    )
    timeout_p99_factor: float = Field(3.0, ge=1, description="adaptive timeout: this many times the p99")
    min_timeout_s: float = Field(
        2.0, gt=0, description="adaptive timeout: never less than this (nor more than timeout_s)"
    )
    latency_slo_ms: float | None = Field(
        None, gt=0, description="calls slower than this count as slow for the circuit breaker"
    )
    encoding: str | None = Field(None, description="tiktoken encoding; chosen by model family when unset")
    images: bool = Field(
        True, description="the model reads images in user turns; false routes requests with images elsewhere"
    )
    # SecretStr: a plain value may be a secret too; repr and dumps show it masked.
    headers: dict[str, HeaderValue] = Field(
        default_factory=dict, description="sent on every call; a value {env: VAR} is read from VAR at start"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not TIER_NAME.match(value):
            raise ValueError("tier names are 1-64 characters: letters, digits, '_', '.', '-'")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
        for name, header in value.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a header name (letters, digits, and !#$%&'*+.^_`|~-)")
            problem = (
                header_value_problem(header.get_secret_value()) if isinstance(header, SecretStr) else None
            )
            if problem:
                raise ValueError(f"the value of {name} {problem}")
        duplicates = duplicate_names([name.lower() for name in value])
        if duplicates:
            raise ValueError(f"header names are case-insensitive: {duplicates} appear twice")
        return value

    @model_validator(mode="after")
    def _azure_fields(self) -> TierConfig:
        if self.provider != "azure_openai":
            for field in ("deployment", "api_version"):
                if getattr(self, field) is not None:
                    raise ValueError(
                        f"{field}: only provider azure_openai takes it (this is {self.provider})"
                    )
            return self
        if self.api_version is None:
            raise ValueError("api_version: provider azure_openai needs it (YYYY-MM-DD[-preview])")
        if not TIER_NAME.fullmatch(self.azure_deployment):
            raise ValueError(
                f"deployment: the model {self.model!r} cannot name a deployment (letters, digits, "
                "'_', '.', '-'); set deployment"
            )
        return self

    @property
    def azure_deployment(self) -> str:
        """The Azure OpenAI deployment a call goes to: ``deployment``, else the model's name."""
        return self.deployment or self.model


PolicyName = Literal["cheapest", "strongest", "random", "length", "classifier"]


class ClassifierConfig(StrictSection):
    """The trained router: model versions in a registry directory, the serving one named by its pointer."""

    registry: Path = Field(Path("./models/router"), description="model registry directory")
    rule: Literal["threshold", "utility"] = Field(
        "utility",
        description="threshold: cheapest tier with P(adequate) >= the quality target; "
        "utility: max P(adequate) - lambda * expected cost, lambda calibrated from the target (the default: "
        "on the held-out RouterBench split it beat threshold, APGR 0.551 vs 0.475, AIQ 0.790 vs 0.774)",
    )
    watch_interval_s: float = Field(
        2.0, ge=0, description="how often the registry pointer is checked for a promoted version (0: never)"
    )
    unfamiliar: UnfamiliarConfig = UnfamiliarConfig()
    cold_start: Literal["cheapest", "strongest", "random", "length"] | None = Field(
        None,
        description="the policy that serves while the registry has no serving version (a deployment starting "
        "from zero: its first model trains on judged traffic and serves once the retrain gate shows it beats "
        "this policy); null: no model refuses the start",
    )


class RoutingConfig(StrictSection):
    policy: PolicyName = "cheapest"
    classifier: ClassifierConfig = ClassifierConfig()
    seed: int = 0
    default_quality_target: float = Field(0.8, ge=0, le=1)
    expected_output_tokens: int = Field(256, gt=0, description="output length assumed for cost estimates")
    fallback: bool = Field(True, description="on a retryable failure, try the next stronger tier")
    length_thresholds: dict[str, int] = Field(
        default_factory=dict,
        description="length policy: tier -> the largest input token count it takes; tiers without one take any",
    )


class LimitsConfig(StrictSection):
    max_messages: int = Field(256, gt=0)
    max_content_chars: int = Field(200_000, gt=0)
    max_total_chars: int = Field(1_000_000, gt=0)
    max_metadata_entries: int = Field(64, ge=0)
    max_metadata_chars: int = Field(256, gt=0)
    max_field_chars: int = Field(256, gt=0, description="feature, user, tier names")
    max_stop_sequences: int = Field(8, ge=0)
    max_tools_chars: int = Field(100_000, ge=0)
    max_tools_depth: int = Field(
        32, ge=1, le=200, description="how deeply tools_json may nest arrays and objects"
    )
    max_images: int = Field(8, ge=0, description="images in one request, all turns together")
    max_image_bytes: int = Field(
        # Its base64 text (4/3 of it) must fit server.max_message_bytes (4 MiB) with the rest of the request.
        3_000_000,
        gt=0,
        description="decoded size of one data: URI image (https images are fetched upstream)",
    )
    max_image_url_chars: int = Field(2048, gt=0, description="length of one https image URL")
