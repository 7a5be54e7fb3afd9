"""Config sections of learning from traffic: samples, judged sampling, the judge, retraining."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tierwise.router.config.strict import StrictSection


class TrafficConfig(StrictSection):
    """Per-request traffic samples (embedding, prompt statistics, tier, model version) for training
    and reports, written in batches off the request path to SQLite under store.path."""

    enabled: bool = True
    batch_size: int = Field(200, gt=0, description="most samples per store write")
    flush_interval_s: float = Field(1.0, gt=0, description="longest a sample waits before a store write")
    max_queued: int = Field(
        10_000, gt=0, description="samples held in memory; beyond it new ones are dropped"
    )
    retention_days: float | None = Field(
        30, gt=0, description="samples older than this are purged; null keeps all"
    )
    store_prompts_tenants: tuple[str, ...] = Field(
        (), description="tenants whose prompt text may be stored with their samples; others: never"
    )


class SamplingConfig(StrictSection):
    """Which served requests are judged after their response was returned, and what that may spend.

    The share is the arm's rate if ``rate_by_arm`` names the arm, else the tier's from
    ``rate_by_tier``, else ``rate``; the draw is a hash of the request id (reproducible).
    """

    rate: float = Field(0.0, ge=0, le=1, description="share of served requests judged (0: sampling off)")
    rate_by_tier: dict[str, float] = Field(default_factory=dict)
    rate_by_arm: dict[str, float] = Field(default_factory=dict)
    shadow: Literal["strongest", "stronger", "none"] = Field(
        "strongest",
        description="for a request served by a cheaper tier, also ask this tier (the counterfactual)",
    )
    shadow_cheapest_when_strongest: bool = Field(
        False,
        description="for a request served by the strongest tier, also ask the cheapest (was it needed?)",
    )
    budget_usd: Decimal = Field(Decimal(0), ge=0, description="most judge + shadow spend per window")
    window: Literal["day", "month"] = "day"
    feature: str = Field("tierwise-judge", min_length=1, description="the ledger feature of that spend")
    concurrency: int = Field(4, gt=0, description="judgments running at once")
    max_queued: int = Field(
        1000, gt=0, description="sampled requests waiting; beyond it new ones are skipped"
    )
    timeout_s: float = Field(60.0, gt=0, description="deadline of each shadow or judge call")
    active_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="beside the uniform draw, the share of informative requests judged (unfamiliar to the "
        "classifier, or its P(adequate) for the served tier within uncertain_margin of 0.5): active learning",
    )
    uncertain_margin: float = Field(0.1, ge=0, le=0.5, description="|P(adequate) - 0.5| counted uncertain")
    uniform_budget_share: float = Field(
        0.25, ge=0, le=1, description="share of budget_usd active draws may not take (the uniform sample's)"
    )

    @field_validator("rate_by_tier", "rate_by_arm")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not 0.0 <= v <= 1.0)
        if bad:
            raise ValueError(f"rates must be in [0, 1]: {bad}")
        return value


class JudgeConfig(StrictSection):
    """Who scores sampled answers: an LLM through a configured tier, or a judge a package registers.

    ``kind`` is ``llm`` or the name of a ``tierwise.judges`` entry point; tierwise's own
    training package registers ``replay`` (recorded RouterBench scores, for simulations).
    """

    kind: str = Field("llm", min_length=1)
    tier: str | None = Field(None, description="llm: the tier that judges; default the strongest")
    prompt_version: str = Field("v1", description="llm: the versioned judging prompt")
    replay_data: Path | None = Field(None, description="replay: RouterBench CSV folder with recorded scores")
    max_output_tokens: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _replay_needs_data(self) -> JudgeConfig:
        if self.kind == "replay" and self.replay_data is None:
            raise ValueError("judge.kind 'replay' needs judge.replay_data")
        return self


class RetrainConfig(StrictSection):
    """``tierwise retrain``: base data plus recent judgments, evaluated against the serving model."""

    data: Path | None = Field(None, description="base data (RouterBench CSVs); default: no base rows")
    metric: Literal["apgr", "aiq"] = "apgr"
    tolerance: float = Field(0.0, ge=0, description="a candidate trailing by at most this is not worse")
    gate: Literal["bootstrap", "point"] = Field(
        "bootstrap",
        description=(
            "bootstrap: keep the serving model when, over paired resamples of the held-out rows, the "
            "candidate trails by more than the tolerance with probability >= confidence; point: promote "
            "when candidate >= serving - tolerance on the rows as they are"
        ),
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="bootstrap gate: how sure 'worse' must be")
    bootstrap_samples: int = Field(1000, ge=100, le=100_000, description="bootstrap gate: paired resamples")
    judgment_weight: float = Field(1.0, gt=0, description="training weight of a judged row (base rows: 1)")
    judged_share: float | None = Field(
        0.5,
        gt=0,
        lt=1,
        description="once judged_min_rows judged prompts train, their rows together carry at least this share "
        "of the training weight (each judged row's weight raised above judgment_weight as needed): the "
        "deployment's own traffic outweighs base data it does not resemble; null: judgment_weight alone",
    )
    judged_min_rows: int = Field(
        200,
        ge=1,
        description="judged training prompts before judged_share applies (fewer: too noisy to lean on)",
    )
    judged_validation: float = Field(
        0.15,
        ge=0,
        lt=1,
        description="share of judged prompts kept for selection and calibration (0: the base data's "
        "validation split alone, which then must exist)",
    )
    judged_held_out: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="share of judged prompts held out for the gate, with the base validation split (never the test split)",
    )
    quality_bar: float = Field(0.5, ge=0, le=1, description="a score at or above it is adequate")
    cold_start_folds: int = Field(
        5,
        ge=0,
        le=20,
        description="from zero (routing.classifier.cold_start): the first model's gate scores every judged "
        "prompt, each by a model trained without its fold (cross-fitting over this many folds), against the "
        "cold-start policy; 0 or 1: the held-out share alone",
    )
    cold_start_confidence: float = Field(
        0.8,
        gt=0.5,
        lt=1,
        description="from zero: how sure 'better than the cold-start policy' must be for the first model "
        "(its better share of paired resamples). Lower than confidence: it replaces a policy with no skill, "
        "so a wrong promotion costs little, and the next candidate replaces it unless clearly worse",
    )
    window_days: float | None = Field(
        None, gt=0, description="judgments of the last N days train (null: every retained one)"
    )
    strong: str | None = Field(
        None, description="apgr: strong tier (name or model); default gpt-4 if configured"
    )
    weak: str | None = Field(None, description="apgr: weak tier; default mixtral-8x7b if configured")
    interval_s: float = Field(3600.0, gt=0, description="--watch: time between runs")
    min_new_judgments: int = Field(1, ge=0, description="fewer judgments since the last run: no retraining")
    seed: int = 0

    @model_validator(mode="after")
    def _judged_shares(self) -> RetrainConfig:
        if self.judged_validation + self.judged_held_out >= 1:
            raise ValueError(
                "judged_validation + judged_held_out must leave a share of judged prompts to train on"
            )
        return self

    def judged_fractions(self) -> tuple[float, float, float]:
        """(train, validation, held out) shares of judged prompts."""
        return (
            1.0 - self.judged_validation - self.judged_held_out,
            self.judged_validation,
            self.judged_held_out,
        )


class LearningConfig(StrictSection):
    traffic: TrafficConfig = TrafficConfig()
    sampling: SamplingConfig = SamplingConfig()
    judge: JudgeConfig = JudgeConfig()
    retrain: RetrainConfig = RetrainConfig()
