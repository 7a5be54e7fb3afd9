"""Prometheus metrics: the OpenTelemetry GenAI instruments, and tierwise's own cost series.

GenAI names follow the semantic conventions translated to Prometheus
(``gen_ai.client.token.usage`` -> ``gen_ai_client_token_usage``), with the
spec's bucket boundaries. tierwise's series carry the labels named in
``metrics.labels`` only; a label left out aggregates over its values, which is
how an operator bounds cardinality. Labels come from a fixed list of record
fields, so prompt text and end-user ids can never become a label; the one a
caller chooses, ``feature``, keeps a bounded set of values (``label_values``).

Each ``Metrics`` owns its ``CollectorRegistry``: tests and several servers in
one process do not collide. The registry holds prometheus_client's own series,
which are safe to read from any thread; the watched collectors read state the
event loop owns, so ``watched()`` runs on the loop and ``view`` hands both to an
encoder that may run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Protocol, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tierwise.router.config import MetricLabel, MetricsConfig
from tierwise.router.ledger.record import CACHE_RESULTS, SpendRecord
from tierwise.router.ledger.spend_ledger import LedgerStats, SpendLedger
from tierwise.router.observability.label_values import BoundedLabelValues

OPERATION = "chat"
ALLOWED_LABELS: tuple[str, ...] = get_args(MetricLabel)
DEFAULT_LABELS = ("tenant", "feature", "tier", "model", "arm")

# Bucket boundaries from the GenAI semantic conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# tierwise's own work per request: sub-millisecond to a second.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


def _reason_label(reason: str) -> str:
    # Reasons are short codes ("cheapest", "fallback"); keep any detail after one out of the label.
    return reason.split(":", 1)[0].strip()[:64]


class _LedgerCollector(Collector):
    def __init__(self, ledger: SpendLedger) -> None:
        self._ledger = ledger

    def collect(self) -> list[Metric]:
        stats: LedgerStats = self._ledger.stats()
        gauges = [
            (
                "tierwise_ledger_backlog_records",
                "Spend records journalled and not yet stored.",
                stats.backlog,
            ),
            ("tierwise_ledger_journal_bytes", "Size of the spend journal file.", stats.journal_bytes),
            ("tierwise_ledger_store_up", "1 when the last spend store call succeeded.", int(stats.store_ok)),
        ]
        counters = [
            ("tierwise_ledger_written_records", "Spend records stored.", stats.written),
            ("tierwise_ledger_write_failures", "Failed spend store writes (retried).", stats.write_failures),
            ("tierwise_ledger_journal_errors", "Journal appends that failed.", stats.journal_errors),
            ("tierwise_ledger_rejected_lines", "Unreadable journal lines set aside.", stats.rejected_lines),
        ]
        out: list[Metric] = [GaugeMetricFamily(n, h, value=v) for n, h, v in gauges]
        out += [CounterMetricFamily(n, h, value=v) for n, h, v in counters]
        return out


class SamplingCounts(Protocol):
    """What the sampler (``tierwise.router.learning.sampling.Sampler``) keeps, read at each scrape."""

    @property
    def counts(self) -> Mapping[str, int]: ...

    @property
    def spent_usd(self) -> Mapping[str, Decimal]: ...


# (sampler count key, series name, help)
SAMPLING_COUNTERS = (
    ("sampled", "tierwise_sampling_sampled", "Served requests drawn for judging."),
    ("judgments", "tierwise_sampling_judgments", "Scores stored by the judge (served and shadow answers)."),
    ("judge_failures", "tierwise_sampling_judge_failures", "Judge calls that gave no usable score."),
    ("skipped_budget", "tierwise_sampling_skipped_budget", "Shadow or judge calls skipped: over the budget."),
    ("skipped_queue_full", "tierwise_sampling_skipped_queue_full", "Drawn requests dropped: queue full."),
    (
        "skipped_tools",
        "tierwise_sampling_skipped_tools",
        "Drawn requests not judged: tools, a response format or images.",
    ),
    ("shadow_calls", "tierwise_sampling_shadow_calls", "Shadow calls to a stronger tier that answered."),
    ("shadow_failures", "tierwise_sampling_shadow_failures", "Shadow calls that failed."),
)


class _SamplingCollector(Collector):
    def __init__(self, sampler: SamplingCounts) -> None:
        self._sampler = sampler

    def collect(self) -> list[Metric]:
        counts = self._sampler.counts
        out: list[Metric] = [
            CounterMetricFamily(n, h, value=counts.get(k, 0)) for k, n, h in SAMPLING_COUNTERS
        ]
        spend = CounterMetricFamily(
            "tierwise_sampling_spend_usd", "Shadow and judge spend in USD (since start).", labels=["kind"]
        )
        for kind, usd in sorted(self._sampler.spent_usd.items()):
            spend.add_metric([kind], float(usd))
        out.append(spend)
        return out


class FeedbackCounts(Protocol):
    """What the shared-mode feedback store (``tierwise.router.feedback.redis_store``) counts, read at each scrape."""

    fallbacks: int
    landed: int


class _FeedbackCollector(Collector):
    def __init__(self, store: FeedbackCounts) -> None:
        self._store = store

    def collect(self) -> list[Metric]:
        return [
            CounterMetricFamily(
                "tierwise_feedback_fallback",
                "Judgments written to the store directly because the Redis stream was unreachable.",
                value=self._store.fallbacks,
            ),
            CounterMetricFamily(
                "tierwise_feedback_landed",
                "Judgments this replica's stream consumer wrote to the store (redeliveries not counted).",
                value=self._store.landed,
            ),
        ]


FamilyFilter = Callable[[Iterable[Metric]], Iterable[Metric]]


class _Families(Collector):
    """Families already read, handed to an encoder as a registry's one collector."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class Metrics:
    def __init__(
        self,
        labels: Sequence[str] = DEFAULT_LABELS,
        *,
        features: BoundedLabelValues | None = None,
        api_keys: BoundedLabelValues | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        unknown = sorted(set(labels) - set(ALLOWED_LABELS))
        if unknown:
            raise ValueError(f"metric labels {unknown} are not allowed; choose from {list(ALLOWED_LABELS)}")
        self.labels = tuple(dict.fromkeys(labels))
        # Label values callers choose, bounded; the others come from the API key or from config.
        self.features = BoundedLabelValues() if features is None else features
        self._bounded = {
            "feature": self.features,
            "api_key": BoundedLabelValues(max_values=100) if api_keys is None else api_keys,
        }
        self._watched: list[Collector] = []
        self.registry = CollectorRegistry() if registry is None else registry
        r, spend = self.registry, self.labels

        def genai(name: str, doc: str, buckets: Sequence[float], *extra: str) -> Histogram:
            return Histogram(name, doc, [*_GENAI, *extra], buckets=buckets, registry=r)

        self.token_usage = genai(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used.",
            TOKEN_BUCKETS,
            "gen_ai_token_type",
        )
        self.operation_duration = genai(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration (upstream time of a request, fallbacks included).",
            DURATION_BUCKETS,
            "error_type",
        )
        self.time_to_first_token = genai(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to generate the first token, for successful responses.",
            TTFT_BUCKETS,
        )
        self.time_per_output_token = genai(
            "gen_ai_server_time_per_output_token_seconds",
            "Time per output token after the first, for successful streamed responses.",
            TPOT_BUCKETS,
        )
        self.cost = Counter("tierwise_cost_usd", "Upstream spend in USD.", spend, registry=r)
        self.saved = Counter(
            "tierwise_saved_cost_usd",
            "USD saved: cache hits (their tier's cost) and routing (versus the strongest tier).",
            spend,
            registry=r,
        )
        self.router_cost = Counter(
            "tierwise_router_cost_usd", "tierwise's own compute cost in USD.", spend, registry=r
        )
        self.requests = Counter(
            "tierwise_requests", "Finished requests.", [*spend, "status", "cache_result"], registry=r
        )
        self.fallbacks = Counter(
            "tierwise_fallbacks",
            "Requests answered by a later tier of the fallback chain.",
            spend,
            registry=r,
        )
        self.cache_lookups = Counter(
            "tierwise_cache_lookups", "Cache lookups by result.", ["result"], registry=r
        )
        self.route_decisions = Counter(
            "tierwise_route_decisions",
            "Routing decisions by tier and reason.",
            ["tier", "reason"],
            registry=r,
        )
        self.budget_used = Gauge("tierwise_budget_used_usd", "Budget spent in USD.", ["budget"], registry=r)
        self.budget_remaining = Gauge(
            "tierwise_budget_remaining_usd", "Budget left in USD.", ["budget"], registry=r
        )
        self.budget_store_errors = Counter(
            "tierwise_budget_store_errors",
            "Budget store calls that failed, or were skipped while it was backing off, by operation.",
            ["operation"],
            registry=r,
        )
        self.budget_fail_mode = Counter(
            "tierwise_budget_fail_mode",
            "Requests the budget fail mode decided while the store was down: admitted unmetered or refused.",
            ["decision"],
            registry=r,
        )
        self.budget_duplicates = Counter(
            "tierwise_budget_duplicate_finishes",
            "Budget settles or releases the store ignored: their reservation was finished before.",
            ["operation"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "tierwise_circuit_state",
            "Circuit breaker per tier: 0 closed, 1 half-open, 2 open.",
            ["tier"],
            registry=r,
        )
        self.overhead = Histogram(
            "tierwise_request_overhead_seconds",
            "Time tierwise added to a request (total minus upstream).",
            ["cache_result"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self._anomaly_labels = tuple(name for name in ("tenant", "feature") if name in self.labels)
        self.cost_anomalies = Counter(
            "tierwise_cost_anomalies",
            "Hours whose spend was flagged as anomalous (feature '*': the tenant's total).",
            self._anomaly_labels,
            registry=r,
        )

    @classmethod
    def from_config(cls, config: MetricsConfig) -> Metrics:
        return cls(
            config.labels,
            features=BoundedLabelValues(config.features, config.max_features),
            api_keys=BoundedLabelValues(max_values=config.max_api_keys),
        )

    # -- what the pipeline calls ----------------------------------------------

    def _label_value(self, name: str, value: str) -> str:
        bound = self._bounded.get(name)
        return value if bound is None else bound(value)

    def observe_spend(self, rec: SpendRecord) -> None:
        """One finished request (answered, cached or failed): tokens, durations, money, fallbacks."""
        values = [self._label_value(name, str(getattr(rec, name))) for name in self.labels]
        self.cost.labels(*values).inc(float(rec.cost_usd))
        self.saved.labels(*values).inc(float(rec.saved_usd))
        self.router_cost.labels(*values).inc(float(rec.router_cost_usd))
        self.requests.labels(*values, rec.status, rec.cache_result).inc()
        if rec.fallback:
            self.fallbacks.labels(*values).inc()
        self.overhead.labels(rec.cache_result).observe(rec.overhead_ms / 1000)
        if rec.upstream_ms <= 0:
            return  # no upstream call: a cache hit, or refused (budget, open circuits) before one
        genai = (OPERATION, rec.provider, rec.model)
        self.operation_duration.labels(*genai, "" if rec.ok else rec.error_type).observe(
            rec.upstream_ms / 1000
        )
        if not rec.ok:
            return
        self.token_usage.labels(*genai, "input").observe(rec.input_tokens)
        self.token_usage.labels(*genai, "output").observe(rec.output_tokens)
        self.time_to_first_token.labels(*genai).observe(rec.ttft_ms / 1000)
        if rec.output_tokens > 1 and rec.total_ms > rec.ttft_ms:  # streamed: tokens arrived over time
            per_token_ms = (rec.total_ms - rec.ttft_ms) / (rec.output_tokens - 1)
            self.time_per_output_token.labels(*genai).observe(per_token_ms / 1000)

    def observe_decision(self, tier: str, reason: str) -> None:
        self.route_decisions.labels(tier, _reason_label(reason)).inc()

    def observe_cache(self, result: str) -> None:
        if result not in CACHE_RESULTS:
            raise ValueError(f"cache result must be one of {CACHE_RESULTS}, got {result!r}")
        self.cache_lookups.labels(result).inc()

    def set_circuit_state(self, tier: str, state: str) -> None:
        key = state.replace("-", "_").lower()
        if key not in CIRCUIT_STATES:
            raise ValueError(f"circuit state must be one of {list(CIRCUIT_STATES)}, got {state!r}")
        self.circuit_state.labels(tier).set(CIRCUIT_STATES[key])

    def set_budget(self, name: str, used: Decimal | float, remaining: Decimal | float) -> None:
        self.budget_used.labels(name).set(float(used))
        self.budget_remaining.labels(name).set(float(remaining))

    def observe_budget_store_error(self, operation: str) -> None:
        self.budget_store_errors.labels(operation).inc()

    def observe_budget_fail_mode(self, decision: str) -> None:
        self.budget_fail_mode.labels(decision).inc()

    def observe_anomaly(self, tenant: str, feature: str | None) -> None:
        """One flagged hour; ``feature`` None is the tenant's total."""
        values = {"tenant": tenant, "feature": "*" if feature is None else self.features(feature)}
        if self._anomaly_labels:
            self.cost_anomalies.labels(*(values[name] for name in self._anomaly_labels)).inc()
        else:
            self.cost_anomalies.inc()

    def watch_ledger(self, ledger: SpendLedger) -> None:
        """Export the ledger's backlog and store health, read at each scrape."""
        self._watched.append(_LedgerCollector(ledger))

    def watch_sampling(self, sampler: SamplingCounts) -> None:
        """Export the sampler's counts (sampled, judged, failures, skipped for budget) and spend."""
        self._watched.append(_SamplingCollector(sampler))

    def watch_feedback(self, store: FeedbackCounts) -> None:
        """Export the shared-mode feedback store's fallback and landed counts."""
        self._watched.append(_FeedbackCollector(store))

    # -- what a scrape reads ----------------------------------------------------

    def watched(self) -> list[Metric]:
        """The watched collectors' families, read now; on the thread that owns their state (the loop)."""
        return [family for collector in self._watched for family in collector.collect()]

    def view(self, watched: Iterable[Metric], keep: FamilyFilter | None = None) -> CollectorRegistry:
        """A registry to encode: this one's series and ``watched``, through ``keep`` if given.

        Safe in a worker thread: prometheus_client copies its series under their locks.
        """
        families = [*self.registry.collect(), *watched]
        view = CollectorRegistry()
        view.register(_Families(families if keep is None else keep(families)))
        return view

    def exposition(self) -> bytes:
        return generate_latest(self.view(self.watched()))


AUTH_FAILURE_REASONS = (
    "missing",
    "malformed",
    "duplicate",
    "unknown_key",
    "revoked",
    "expired",
    "store_down",
    "throttled",
)


class AuthFailureCounter:
    """``tierwise_auth_failures_total`` by reason. No tenant or address label: a failed call has
    no tenant, and addresses are unbounded (the log names them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counter = Counter(
            "tierwise_auth_failures",
            "Calls refused for their credentials, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in AUTH_FAILURE_REASONS:  # every series exists from the start, at 0
            self._counter.labels(reason)

    def count(self, reason: str) -> None:
        self._counter.labels(reason if reason in AUTH_FAILURE_REASONS else "malformed").inc()
