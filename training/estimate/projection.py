"""What a planned workload will cost per month, per routing policy, and how that moves (sensitivity).

The workload is a token volume (``volume``), a sample of real prompts
(``sample``), or both: then the volume sets the tokens and the sample
the tier mix each policy chooses and the quality it reaches. A policy's cost is
linear in its tier mix, so with a mix of shares s_j the cost is
``sum_j s_j * C_j`` where C_j is the whole volume on tier j. The classifier's mix
is only known from prompts: without a sample it is not estimated.

A cache hit costs nothing upstream: at a given hit rate r the upstream cost is
``(1 - r)`` of it; measured on a sample, the rows whose prompt repeats an
earlier one exactly are hits (with a sample alone they are left out row by row).

Money is Decimal: exact, except where a mean over a sample or a per-request
figure needs a division that does not come out exact; that is rounded to 1e-12 USD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Context, Decimal, Inexact, InvalidOperation
from fractions import Fraction
from typing import Literal

import numpy as np

from tierwise.router.config import Config, Price
from tierwise.router.pricing import cost_usd, scale_usd, total_usd
from tierwise.router.types import TokenUsage
from tierwise.training.estimate.sample import IntMatrix, SampleProfile
from tierwise.training.estimate.volume import EstimateInputError, VolumeSpec, monthly_tokens

DEFAULT_TARGETS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
SAMPLE_DAYS_PER_MONTH = 30
NEEDS_SAMPLE = "needs --sample"  # the classifier's tier mix depends on the prompts
USD_STEP = Decimal("1e-12")  # where a division is inexact, the quotient is rounded to this


def divide_usd(amount: Decimal, divisor: Decimal | int) -> Decimal:
    """``amount / divisor``: exact where it can be, else rounded half-even to ``USD_STEP``."""
    context = Context(prec=60)
    quotient = context.divide(amount, Decimal(divisor))
    return quotient.quantize(USD_STEP, context=context) if context.flags[Inexact] else quotient


def _scaled_count(total: int, numerator: int, denominator: int) -> int:
    """``total * numerator / denominator`` rounded half-even, in integers."""
    return round(Fraction(total * numerator, denominator))


PolicyKind = Literal["strongest", "cheapest", "classifier"]


@dataclass(frozen=True)
class PolicySpec:
    kind: PolicyKind
    target: float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.target is None else f"{self.kind}@{self.target:g}"


@dataclass(frozen=True)
class Workload:
    volume: VolumeSpec | None
    sample: SampleProfile | None
    requests_per_day: int | None  # a sample alone: its traffic (default: the sample is one day's)
    cache_hit_rate: Decimal | None  # given; None: measured on the sample, or no cache


@dataclass(frozen=True)
class CacheRate:
    kept: Decimal  # numerator of the share of requests that reach a tier …
    out_of: int  # … over this denominator
    source: str

    @property
    def hit_rate(self) -> float:
        return float((self.out_of - self.kept) / self.out_of)


@dataclass(frozen=True)
class PolicyEstimate:
    policy: str
    quality_target: float | None
    tier_mix: dict[str, float] | None  # share of requests per tier
    requests: int  # per month
    input_tokens: int | None  # per month, before the cache
    output_tokens: int | None
    monthly_usd: Decimal | None  # upstream, after the cache
    usd_per_request: Decimal | None
    expected_quality: float | None  # mean recorded score of the chosen answers
    recorded_usd_per_request: float | None  # the dataset's recorded cost of the chosen answers, no cache
    note: str = ""


def parse_policies(items: Sequence[str], default_target: float) -> list[PolicySpec]:
    """``strongest``, ``cheapest``, ``classifier`` (several targets) or ``classifier@T``; none: all."""
    targets = sorted({*DEFAULT_TARGETS, default_target})
    spread = [PolicySpec("classifier", t) for t in targets]
    if not items:
        return [PolicySpec("strongest"), PolicySpec("cheapest"), *spread]
    chosen: list[PolicySpec] = []
    for item in items:
        kind, sep, raw = item.strip().partition("@")
        if kind == "strongest" and not sep:
            chosen.append(PolicySpec("strongest"))
        elif kind == "cheapest" and not sep:
            chosen.append(PolicySpec("cheapest"))
        elif kind == "classifier" and not sep:
            chosen.extend(spread)
        elif kind == "classifier":
            try:
                target = float(raw)
            except ValueError:
                target = -1.0
            if not 0.0 <= target <= 1.0:
                raise EstimateInputError(f"--policy: the quality target must be in [0, 1], got {raw!r}")
            chosen.append(PolicySpec("classifier", target))
        else:
            raise EstimateInputError(
                f"--policy: unknown policy {item!r}; use strongest, cheapest, classifier or classifier@TARGET"
            )
    return list(dict.fromkeys(chosen))


def _decimal(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise EstimateInputError(f"{option}: not a number: {text!r}") from None
    if not value.is_finite():
        raise EstimateInputError(f"{option}: not a finite number: {text!r}")
    return value


def parse_hit_rate(text: str | None) -> Decimal | None:
    if text is None:
        return None
    rate = _decimal(text, "--cache-hit-rate")
    if not 0 <= rate <= 1:
        raise EstimateInputError(f"--cache-hit-rate: must be in [0, 1], got {text}")
    return rate


def parse_price_changes(items: Sequence[str], config: Config) -> dict[str, Decimal]:
    """``TIER=+20%`` (or ``all=-10%``) as {tier: price multiplier}."""
    changes: dict[str, Decimal] = {}
    for item in items:
        tier, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not raw.endswith("%"):
            raise EstimateInputError(f"--price-change: expected TIER=+N% or TIER=-N%, got {item!r}")
        if tier != "all" and tier not in config.tier_names:
            raise EstimateInputError(
                f"--price-change: unknown tier {tier!r}; configured: {', '.join(config.tier_names)}, or all"
            )
        factor = 1 + _decimal(raw[:-1], "--price-change") / 100
        if factor < 0:
            raise EstimateInputError(f"--price-change: a price cannot fall below zero ({item!r})")
        for name in config.tier_names if tier == "all" else [tier]:
            changes[name] = scale_usd(changes.get(name, Decimal(1)), factor)
    return changes


def with_prices(config: Config, multipliers: Mapping[str, Decimal]) -> Config:
    """``config`` with each named tier's prices (input, output, cached input) multiplied."""

    def scaled(price: Price, factor: Decimal) -> Price:
        cached = price.cached_input_per_mtok
        return price.model_copy(
            update={
                "input_per_mtok": scale_usd(price.input_per_mtok, factor),
                "output_per_mtok": scale_usd(price.output_per_mtok, factor),
                "cached_input_per_mtok": None if cached is None else scale_usd(cached, factor),
            }
        )

    tiers = tuple(
        t.model_copy(update={"price": scaled(t.price, multipliers[t.name])}) if t.name in multipliers else t
        for t in config.tiers
    )
    return config.model_copy(update={"tiers": tiers})


def cache_rate(workload: Workload) -> CacheRate:
    if workload.cache_hit_rate is not None:
        return CacheRate(1 - workload.cache_hit_rate, 1, "given")
    if workload.sample is not None:
        hits = int(workload.sample.duplicates.sum())
        rows = workload.sample.rows
        return CacheRate(
            Decimal(rows - hits), rows, f"measured: {hits} of {rows} sample prompts repeat exactly"
        )
    return CacheRate(Decimal(1), 1, "none")


def _choices(spec: PolicySpec, sample: SampleProfile, tiers: int) -> IntMatrix:
    if spec.kind == "strongest":
        return sample.tier_choices(tiers - 1)
    if spec.kind == "cheapest":
        return sample.tier_choices(0)
    assert spec.target is not None
    return sample.classifier_choices[spec.target]


def _tier_sums(config: Config, sample: SampleProfile, choices: IntMatrix, rows: IntMatrix) -> list[Decimal]:
    """Per tier, what the listed ``rows`` cost at the tier where ``choices`` sends them."""
    costs = []
    for j, tier in enumerate(config.tiers):
        mine = rows[choices[rows] == j]
        usage = TokenUsage(int(sample.input_tokens[mine, j].sum()), int(sample.output_tokens[mine, j].sum()))
        costs.append(cost_usd(tier.price, usage))
    return costs


def _sample_only(
    config: Config, workload: Workload, sample: SampleProfile, choices: IntMatrix, cache: CacheRate
) -> tuple[int, int, int, Decimal]:
    """Monthly requests, input and output tokens, and upstream USD of a sample alone."""
    n = sample.rows
    per_day = workload.requests_per_day or n
    requests = per_day * SAMPLE_DAYS_PER_MONTH
    everything = np.arange(n, dtype=np.int64)
    if cache.source == "given":
        upstream = scale_usd(total_usd(_tier_sums(config, sample, choices, everything)), cache.kept)
    else:  # measured: the repeated prompts are hits, the rest reach their tier
        kept = everything[~sample.duplicates]
        upstream = total_usd(_tier_sums(config, sample, choices, kept))
    chosen_in = int(sample.input_tokens[everything, choices].sum())
    chosen_out = int(sample.output_tokens[everything, choices].sum())
    monthly = divide_usd(scale_usd(upstream, requests), n)
    return requests, _scaled_count(chosen_in, requests, n), _scaled_count(chosen_out, requests, n), monthly


def estimate_policy(config: Config, workload: Workload, spec: PolicySpec) -> PolicyEstimate:
    sample, volume = workload.sample, workload.volume
    names = config.tier_names
    cache = cache_rate(workload)
    if spec.kind == "classifier" and sample is None:
        planned = monthly_tokens(volume) if volume is not None else None
        return PolicyEstimate(
            spec.name, spec.target, None, planned.requests if planned else 0,
            planned.input_tokens if planned else None, planned.output_tokens if planned else None,
            None, None, None, None,
            note=NEEDS_SAMPLE,
        )  # fmt: skip
    if sample is None:
        assert volume is not None
        tier = 0 if spec.kind == "cheapest" else len(names) - 1
        counts = np.zeros(len(names), dtype=np.int64)
        counts[tier] = 1
        quality = recorded = None
    else:
        choices = _choices(spec, sample, len(names))
        counts = np.bincount(choices, minlength=len(names)).astype(np.int64)
        rows = np.arange(sample.rows)
        quality = float(sample.scores[rows, choices].mean())
        recorded = float(sample.recorded_costs[rows, choices].mean())
    mix = {name: float(counts[j] / counts.sum()) for j, name in enumerate(names)}
    if volume is not None:
        tokens = monthly_tokens(volume)
        usage = TokenUsage(tokens.input_tokens, tokens.output_tokens)
        weighted = total_usd(
            scale_usd(cost_usd(t.price, usage), int(counts[j])) for j, t in enumerate(config.tiers)
        )
        monthly = divide_usd(scale_usd(weighted, cache.kept), int(counts.sum()) * cache.out_of)
        requests, input_tokens, output_tokens = tokens.requests, tokens.input_tokens, tokens.output_tokens
    else:
        assert sample is not None
        requests, input_tokens, output_tokens, monthly = _sample_only(
            config, workload, sample, choices, cache
        )
    return PolicyEstimate(
        spec.name, spec.target, mix, requests, input_tokens, output_tokens,
        monthly, divide_usd(monthly, requests), quality, recorded,
    )  # fmt: skip


def estimate(config: Config, workload: Workload, policies: Sequence[PolicySpec]) -> list[PolicyEstimate]:
    if workload.volume is None and workload.sample is None:
        raise EstimateInputError("give --volume, --sample or both")
    return [estimate_policy(config, workload, spec) for spec in policies]


@dataclass(frozen=True)
class Scenario:
    name: str
    monthly_usd: dict[str, Decimal | None]  # policy -> cost; None where not estimable
    note: str = ""


def sensitivity(
    config: Config, workload: Workload, policies: Sequence[PolicySpec], price_changes: Mapping[str, Decimal]
) -> list[Scenario]:
    """Base, conversations twice as long, ten times the traffic, and the price change."""

    def run(label: str, cfg: Config, load: Workload, note: str = "") -> Scenario:
        costs = {e.policy: e.monthly_usd for e in estimate(cfg, load, policies)}
        return Scenario(label, costs, note)

    volume = workload.volume
    scenarios = [run("base", config, workload)]
    if volume is not None:
        scenarios.append(
            run("conversation length x2", config, replace(workload, volume=volume.scaled(messages=2)))
        )
        scenarios.append(run("traffic x10", config, replace(workload, volume=volume.scaled(traffic=10))))
    else:
        assert workload.sample is not None
        scenarios.append(
            Scenario("conversation length x2", {p.name: None for p in policies}, "needs --volume")
        )
        per_day = (workload.requests_per_day or workload.sample.rows) * 10
        scenarios.append(run("traffic x10", config, replace(workload, requests_per_day=per_day)))
    label = "price " + ", ".join(f"{t} x{m.normalize():f}" for t, m in price_changes.items())
    note = "the classifier's tier mix is held fixed" if workload.sample is not None else ""
    scenarios.append(run(label, with_prices(config, price_changes), workload, note))
    return scenarios
