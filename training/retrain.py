"""``tierwise router retrain``: base data + judged traffic -> a candidate version, promoted only if it is
at least as good as the serving one on held-out data.

Training rows are the base data's train split plus the judged requests of the
train split (by request-id hash), weighted by ``judgment_weight`` until there are enough of them
(``judged_min_rows``), then so that together they carry at least ``judged_share`` of the training
weight (``judged.judged_row_weight``); selection and
calibration use the validation splits of both. The gate scores the candidate
and the serving model on the same rows: the base data's validation split (by
sample id) plus the held-out judged requests, with the configured metric (APGR
of the strong/weak pair, or AIQ over every tier) under the configured decision
rule, and keeps the serving model only when paired resamples of those rows show
the candidate worse beyond the tolerance with the configured confidence
(``tierwise.training.gate``; ``gate: point`` compares the two values as they are).
The base test split is never read here: a model chosen on it would make its test
score (``router eval``, ``router simulate``) a selected number, not a held-out one.
Selection reads the base validation split too, so the gate compares two models
chosen on those rows: fair between them, not an unbiased estimate of either.
Judged rows are scored from the features the server stored, never recomputed.

Every run that trains writes ``retrain-report.json`` and ``retrain-report.png``
into the candidate's version directory; ``retrain-state.json`` in the registry
remembers up to when judgments were read, for "judgments since the last run".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from tierwise.classifier.manifest import write_json_atomic
from tierwise.classifier.model import ClassifierModel, load_model
from tierwise.classifier.registry import ModelRegistry
from tierwise.router.config import Config, RetrainConfig
from tierwise.router.policies.base import RoutingPolicy
from tierwise.router.policies.factory import cold_start_policy
from tierwise.training.baselines import fit_vote
from tierwise.training.cross_fit import out_of_fold_probabilities
from tierwise.training.dataset import RoutingData
from tierwise.training.evaluate import DEFAULT_PAIR_MODELS, probability_sweeps, routing_contexts, tier_index
from tierwise.training.figures import pyplot, save_figure
from tierwise.training.gate import Decisions, HeldOut, judge, tiers_alone
from tierwise.training.judged import JUDGED_TASK, concat, judged_row_weight, judged_rows, read_judgments
from tierwise.training.train import TrainingError, train

STATE_FILE = "retrain-state.json"
REPORT_NAME = "retrain-report"


@dataclass(frozen=True)
class RetrainOutcome:
    promoted: bool
    reason: str
    candidate: str | None
    serving: str | None
    report: dict[str, Any]


def pair_of(config: Config, settings: RetrainConfig) -> tuple[int, int]:
    """(weak, strong) tier indices for APGR."""
    strong = settings.strong or DEFAULT_PAIR_MODELS[0]
    weak = settings.weak or DEFAULT_PAIR_MODELS[1]
    return tier_index(config, weak), tier_index(config, strong)


def _compared(config: Config, settings: RetrainConfig) -> list[int]:
    return list(pair_of(config, settings)) if settings.metric == "apgr" else list(range(len(config.tiers)))


def scored_mask(rows: RoutingData, config: Config, settings: RetrainConfig) -> npt.NDArray[np.bool_]:
    """Which of ``rows`` the configured metric can score: those with a score for every compared tier."""
    candidates = _compared(config, settings)
    return np.asarray(~np.isnan(rows.scores[:, candidates]).any(axis=1), dtype=bool)


def scored_rows(rows: RoutingData, config: Config, settings: RetrainConfig) -> RoutingData:
    """The rows the configured metric can score (``scored_mask``)."""
    return rows.subset(scored_mask(rows, config, settings))


def held_out_rows(rows: RoutingData, config: Config, settings: RetrainConfig) -> tuple[RoutingData, HeldOut]:
    """``rows`` scored for the compared tiers, and the same rows as the gate scores decisions on them."""
    rows = scored_rows(rows, config, settings)
    return rows, HeldOut(rows.scores, rows.realized_costs(), _compared(config, settings), settings.metric)


def estimate_decisions(
    estimate: Callable[[RoutingData], npt.ArrayLike],
    rows: RoutingData,
    config: Config,
    settings: RetrainConfig,
) -> tuple[HeldOut, Decisions]:
    """Decisions under the serving rule on ``rows`` (those scored for the compared tiers) from
    ``estimate``'s P(adequate) of every tier for them, with the rows they are scored on."""
    rows, held_out = held_out_rows(rows, config, settings)
    if len(rows) == 0:
        return held_out, Decisions([])
    probabilities = np.asarray(estimate(rows), dtype=np.float64)
    return held_out, probability_decisions(probabilities, rows, config, list(held_out.candidates))


def held_out_decisions(
    model: ClassifierModel, rows: RoutingData, config: Config, settings: RetrainConfig
) -> tuple[HeldOut, Decisions]:
    """``model``'s decisions on ``rows`` (``estimate_decisions``)."""
    return estimate_decisions(lambda scored: model.predict_matrix(scored.features), rows, config, settings)


def probability_decisions(
    probabilities: npt.NDArray[np.float64], rows: RoutingData, config: Config, candidates: list[int]
) -> Decisions:
    """Decisions on ``rows`` from estimates of P(adequate) (one column per tier) under the serving rule."""
    rule = config.routing.classifier.rule
    contexts = routing_contexts(rows, config, candidates)
    sweeps = probability_sweeps("p", probabilities[:, candidates], contexts, candidates)
    (sweep,) = [s for s in sweeps if s.name == f"p-{rule}"]
    return Decisions([choices for _, choices in sweep.runs])


def vote_value(judged: RoutingData, rows: RoutingData, config: Config, settings: RetrainConfig) -> float:
    """The gate's metric on ``rows`` of the kNN vote fit on ``judged``'s train split (k on its
    validation split, else on the train split): the baseline an adapted model must beat."""
    train_rows = judged.split("train")
    validation = judged.split("validation")
    vote = fit_vote(train_rows, validation if len(validation) else train_rows, settings.quality_bar)
    held_out, decisions = estimate_decisions(
        lambda scored: vote.predict(scored.embeddings), rows, config, settings
    )
    return held_out.value(decisions)


def cold_start_decisions(
    policy: RoutingPolicy, rows: RoutingData, config: Config, settings: RetrainConfig
) -> tuple[HeldOut, Decisions]:
    """What the cold-start policy chooses on ``rows`` scored for the compared tiers: its one operating point;
    for the random policy its expectation, the chord from every compared tier alone to the next (a
    random draw on a few dozen held-out rows is luck: it scored 0.55-0.78 APGR there, 0.5 expected)."""
    rows, held_out = held_out_rows(rows, config, settings)
    if policy.name == "random":
        return held_out, tiers_alone(held_out)
    return held_out, Decisions([policy_choices(policy, rows, config, list(held_out.candidates))])


def cross_fitted_comparison(
    judged: RoutingData, policy: RoutingPolicy, config: Config, settings: RetrainConfig
) -> tuple[HeldOut, Decisions, Decisions] | str:
    """From zero: every judged prompt scored for the compared tiers, the training procedure's decisions
    on it by a model that never saw it (``tierwise.training.cross_fit``) and the cold-start policy's;
    why not, when a fold cannot train."""
    candidates = _compared(config, settings)
    try:
        probabilities = out_of_fold_probabilities(
            judged,
            config,
            folds=settings.cold_start_folds,
            quality_bar=settings.quality_bar,
            seed=settings.seed,
        )
    except TrainingError as exc:
        return f"cross-fitting over {settings.cold_start_folds} folds could not train ({exc})"
    complete = scored_mask(judged, config, settings)
    rows = judged.subset(complete)
    held_out, serving = cold_start_decisions(policy, rows, config, settings)
    return held_out, probability_decisions(probabilities[complete], rows, config, candidates), serving


def policy_choices(
    policy: RoutingPolicy, rows: RoutingData, config: Config, candidates: list[int]
) -> npt.NDArray[np.int64]:
    """The tier index ``policy`` picks for each of ``rows`` among the ``candidates``."""
    tiers = config.tier_names
    contexts = routing_contexts(rows, config, candidates)
    return np.array([tiers.index(policy.choose(c).tier) for c in contexts], dtype=np.int64)


def metric_value(
    model: ClassifierModel, rows: RoutingData, config: Config, settings: RetrainConfig
) -> tuple[float, int, list[tuple[float, float]]]:
    """The configured metric of ``model`` on ``rows`` (those scored for the tiers it compares),
    with how many rows counted and the curve it is the area of."""
    held_out, decisions = held_out_decisions(model, rows, config, settings)
    if len(held_out.scores) == 0:
        return float("nan"), 0, []
    return held_out.value(decisions), len(held_out.scores), held_out.curve(decisions)


def gate_rows(rows: RoutingData) -> np.ndarray:
    """The rows the gate compares the two models on: the base data's validation split and the judged
    requests held out of training (their hash split's third share, named ``test``). Never the base
    test split: that one is only reported, by ``router eval`` and ``router simulate``."""
    judged = np.array([t == JUDGED_TASK for t in rows.tasks], dtype=bool)
    return np.asarray(
        (~judged & (rows.splits == "validation")) | (judged & (rows.splits == "test")), dtype=bool
    )


def _report_entry(
    version: str, rows: HeldOut, decisions: Decisions, base_positions: npt.NDArray[np.intp] | None = None
) -> dict[str, Any]:
    """One model's line in the report: its metric on the gate's rows, and on the base validation rows
    among them (``base_positions``)."""
    empty = len(rows.scores) == 0
    on_base = base_positions is not None and len(base_positions) > 0
    return {
        "version": version,
        "value": float("nan") if empty else rows.value(decisions),
        "rows": len(rows.scores),
        "base_validation_value": rows.value(decisions, base_positions) if on_base else float("nan"),
        "curve": [] if empty else rows.curve(decisions),
    }


def _verdict(
    rows: HeldOut,
    decisions: dict[str, Decisions],
    settings: RetrainConfig,
    gate: dict[str, Any],
    cold_start: RoutingPolicy | None,
    cross_fit_note: str,
) -> tuple[bool, str]:
    """Whether the candidate may serve, and why; the verdict's numbers go into ``gate``. From zero the
    first model must beat the cold-start policy; later ones must not be worse than the serving model."""
    confidence = settings.confidence if cold_start is None else settings.cold_start_confidence
    verdict = judge(
        rows,
        decisions["candidate"],
        decisions["serving"],
        rule=settings.gate,
        tolerance=0.0 if cold_start is not None else settings.tolerance,
        confidence=confidence,
        samples=settings.bootstrap_samples,
        seed=settings.seed,
    )
    gate |= {"confidence": confidence} | verdict.summary()
    if cold_start is None:
        return verdict.promote, f"{settings.metric}: {verdict.explanation}"
    promoted = verdict.candidate > verdict.serving and (
        settings.gate == "point" or verdict.p_worse <= 1 - confidence
    )
    compared = (
        f"out-of-fold on {len(rows.scores)} judged prompts"
        if "cross_fitted_rows" in gate
        else "held-out judged prompts"
    )
    detail = (
        verdict.explanation
        if np.isnan(verdict.p_worse)
        else f"{settings.metric}: candidate {verdict.candidate:.4f} vs {verdict.serving:.4f}, worse in "
        f"{verdict.p_worse:.0%} of paired resamples (at most {1 - confidence:.0%} promotes)"
    )
    return promoted, f"first model against cold-start:{cold_start.name}, {compared}{cross_fit_note}, {detail}"


def _read_state(registry: ModelRegistry) -> dict[str, Any]:
    try:
        data = json.loads((registry.root / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def plot_retrain(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(7, 5))
    for name in ("candidate", "serving"):
        entry = report["models"].get(name)
        if entry and entry["curve"]:
            xs, ys = zip(*sorted(entry["curve"]), strict=True)
            axis.plot(
                xs,
                ys,
                marker=".",
                label=f"{name} {entry['version']} ({report['metric']} {entry['value']:.4f})",
            )
    axis.set_xlabel("strong-tier share" if report["metric"] == "apgr" else "cost per prompt (USD)")
    axis.set_ylabel("mean score")
    verdict = "promoted" if report["promoted"] else "kept serving model"
    axis.set_title(f"retrain: {verdict} — gate rows {report['gate_rows']}")
    axis.legend(fontsize=8)
    save_figure(figure, path)


def retrain(
    config: Config,
    *,
    base: RoutingData | None = None,
    now: float | None = None,
    console: Console | None = None,
    force: bool = False,
) -> RetrainOutcome:
    """One run: read judgments, train a candidate, gate it against the serving model, maybe promote.

    ``base`` is the base data already loaded (``learning.retrain.data`` is read otherwise).
    """
    console = console or Console(stderr=True)
    settings = config.learning.retrain
    registry = ModelRegistry(config.routing.classifier.registry)
    now = time.time() if now is None else now
    state = _read_state(registry)
    since = now - settings.window_days * 86400 if settings.window_days is not None else 0.0
    judgments = read_judgments(config, since, now)
    new = sum(1 for r in judgments.records if r.created_at > float(state.get("judgments_until", 0.0)))
    serving_version = registry.serving_version()
    if not force and new < settings.min_new_judgments:
        reason = (
            f"{new} new judgments since the last run, fewer than {settings.min_new_judgments}: not retraining"
        )
        return RetrainOutcome(False, reason, None, serving_version, {})
    if base is None and settings.data is not None:
        from tierwise.classifier.model import DEFAULT_EMBEDDER_KEY
        from tierwise.training.train import load_data
        from tierwise.training.verifier_data import default_cache_dir

        base = load_data(
            settings.data,
            config,
            default_cache_dir(),
            "routerbench",
            None,
            None,
            DEFAULT_EMBEDDER_KEY,
            console,
        )
    judged = judged_rows(config, judgments.records, settings.judgment_weight)
    base_train = 0 if base is None else int((base.splits == "train").sum())
    judged_train = 0 if judged is None else int((judged.splits == "train").sum())
    judged_weight = judged_row_weight(settings, base_train, judged_train)
    if judged is not None:
        judged = replace(judged, weights=np.full(len(judged), judged_weight))
    parts = [p for p in (base, judged) if p is not None]
    if not parts:
        return RetrainOutcome(
            False,
            "no base data and no judged traffic with features: nothing to train on",
            None,
            serving_version,
            {},
        )
    everything = concat(parts)
    is_judged = np.array([t == JUDGED_TASK for t in everything.tasks], dtype=bool)
    gate_set = everything.subset(gate_rows(everything))
    # Judged held-out rows stay out of training's own test metrics: they have no prompt text to re-featurise.
    trainable = everything.subset(~(is_judged & (everything.splits == "test")))
    result = train(
        [],
        config,
        registry.root,
        quality_bar=settings.quality_bar,
        seed=settings.seed,
        console=console,
        prepared=trainable,
    )
    models = {"candidate": load_model(result.directory, config.tier_names, device="cpu")}
    if serving_version is not None:
        models["serving"] = load_model(registry.version_dir(serving_version), config.tier_names, device="cpu")
    gate_base = np.array([t != JUDGED_TASK for t in gate_set.tasks], dtype=bool)
    scored_gate_set = scored_rows(gate_set, config, settings)
    # The base validation rows among them: their value comes from the same decisions (each is per row).
    base_positions = np.flatnonzero([t != JUDGED_TASK for t in scored_gate_set.tasks])
    scored: dict[str, Any] = {}
    decisions: dict[str, Decisions] = {}
    rows: HeldOut | None = None
    for name, model in models.items():
        rows, decisions[name] = held_out_decisions(model, scored_gate_set, config, settings)
        scored[name] = _report_entry(model.version, rows, decisions[name], base_positions)
    cold_start = cold_start_policy(config.routing) if serving_version is None else None
    if cold_start is not None and rows is not None:
        # From zero: the first model must beat the policy serving meanwhile on the held-out judged rows.
        _, decisions["serving"] = cold_start_decisions(cold_start, scored_gate_set, config, settings)
        scored["serving"] = _report_entry(f"cold-start:{cold_start.name}", rows, decisions["serving"])
    gate: dict[str, Any] = {"rule": settings.gate, "confidence": settings.confidence}
    cross_fit_note = ""
    if cold_start is not None and settings.cold_start_folds >= 2:
        # Few held-out judged prompts cannot show a gain: every judged prompt is compared instead.
        comparison = cross_fitted_comparison(everything.subset(is_judged), cold_start, config, settings)
        if isinstance(comparison, str):
            cross_fit_note = f"; {comparison}: held-out judged prompts alone"
        elif len(comparison[0].scores):
            rows, decisions["candidate"], decisions["serving"] = comparison
            version = f"out-of-fold ({settings.cold_start_folds} folds)"
            scored["cross_fitted"] = _report_entry(version, rows, decisions["candidate"])
            gate["cross_fitted_rows"] = len(rows.scores)
    if "serving" not in scored:
        promoted, reason = True, "no model was serving"
    elif rows is None or len(rows.scores) == 0:
        promoted, reason = False, "no gate row is scored for the compared tiers"
    else:
        promoted, reason = _verdict(rows, decisions, settings, gate, cold_start, cross_fit_note)
        if not promoted:
            reason += f": keeping {scored['serving']['version']}"
    if promoted:
        # The comparison above is the gate (same rows, same metric); the registry's own gate compares
        # test-split AIQ only on identical data, which judged traffic never is.
        registry.promote(result.version, force=True, expected_tiers=config.tier_names)
    judged_held_out = int((~gate_base).sum())
    report: dict[str, Any] = {
        "candidate": result.version,
        "serving_before": serving_version,
        "promoted": promoted,
        "reason": reason,
        "metric": settings.metric,
        "rule": config.routing.classifier.rule,
        "tolerance": settings.tolerance,
        "gate": gate,
        "gate_rows": {"base_validation": len(gate_set) - judged_held_out, "judged_held_out": judged_held_out},
        "judgments": {"read": len(judgments.records), "new": new, "since": since, "until": now},
        "training_rows": {
            "base": base_train,
            "judged": judged_train,
            "judgment_weight": settings.judgment_weight,
            "judged_row_weight": judged_weight,
        },
        "models": scored,
    }
    directory = result.directory
    write_json_atomic(directory / f"{REPORT_NAME}.json", report)
    plot_retrain(report, directory / f"{REPORT_NAME}.png")
    write_json_atomic(
        registry.root / STATE_FILE, {"judgments_until": judgments.newest or state.get("judgments_until", 0.0)}
    )
    return RetrainOutcome(promoted, reason, result.version, serving_version, report)
