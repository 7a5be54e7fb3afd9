"""Cost-quality evaluation of the trained router against baselines, on held-out prompts only.

The classifier is evaluated through ``ClassifierPolicy`` over the ONNX model,
the code the server runs: one ``p_adequate`` per prompt, then ``decide`` for
every quality target. Baselines fit on the training split (kNN's k picked on
validation) and every router is scored on the test split's prompts that have
a score for every tier, at the recorded cost of each answer.

Two views:

- the tier set (every configured tier): each router's cost-quality curve,
  AIQ, and the cost to reach 90% / 95% of the strongest tier's mean quality,
  read off the evaluated split's curve (the test split's for results): the
  operating point that reaches it is found on the same prompts it is scored on,
  so that cost is a best case, and the report says which curve it came from;
- a strong/weak pair: APGR, CPT(50%) and CPT(80%) over the share of strong calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tierwise.classifier.model import ClassifierModel
from tierwise.classifier.neighbours import NeighbourVote
from tierwise.router.config import Config
from tierwise.router.policies.base import RoutingContext, TierOption
from tierwise.router.policies.baselines import LengthPolicy
from tierwise.router.policies.classifier import (
    RULES,
    Rule,
    cheapest_adequate,
    max_utility,
)
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.training.baselines import TaskPrior, fit_vote
from tierwise.training.dataset import RoutingData
from tierwise.training.metrics import CurvePoint, aiq, apgr, cost_to_reach, cpt
from tierwise.training.policy_sweeps import (
    COST_WEIGHTS,
    QUALITY_TARGETS,
    Choices,
    Sweep,
    classifier_sweeps,
    guard_summary,
    serving_guard,
)

FloatMatrix = npt.NDArray[np.float64]

SHARES: tuple[float, ...] = tuple(float(x) for x in np.linspace(0.0, 1.0, 21))
EvalSplit = Literal["validation", "test", "all"]
EVAL_SPLITS: tuple[EvalSplit, ...] = ("validation", "test", "all")
DEFAULT_PAIR_MODELS = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")


class Scorer:
    """Scores choice vectors on the evaluated prompts: mean quality, mean recorded cost, strong share."""

    def __init__(self, scores: FloatMatrix, costs: FloatMatrix, strongest: int) -> None:
        self.scores, self.costs, self.strongest = scores, costs, strongest
        self._rows = np.arange(scores.shape[0])

    def point(self, parameter: float, choices: Choices) -> CurvePoint:
        return CurvePoint(
            parameter=parameter,
            cost=float(self.costs[self._rows, choices].mean()),
            quality=float(self.scores[self._rows, choices].mean()),
            strong_share=float((choices == self.strongest).mean()),
        )

    def curve(self, sweep: Sweep) -> list[CurvePoint]:
        return [self.point(parameter, choices) for parameter, choices in sweep.runs]


def _options(data: RoutingData, config: Config, row: int, candidates: Sequence[int]) -> list[TierOption]:
    return [
        TierOption(
            config.tiers[j].name,
            config.tiers[j].model,
            Decimal(repr(float(data.expected_costs[row, j]))),
            config.tiers[j].max_output_tokens,
        )
        for j in candidates
    ]


def routing_contexts(data: RoutingData, config: Config, candidates: Sequence[int]) -> list[RoutingContext]:
    """What the pipeline would hand the policy for each prompt (one user turn, its embedding)."""
    return [
        RoutingContext(
            request=RequestSpec(tenant="evaluation", messages=(ChatMessage("user", data.texts[i]),)),
            input_tokens=int(data.input_tokens[i]),
            candidates=_options(data, config, i, candidates),
            quality_target=0.0,
            embedding=data.embeddings[i],
        )
        for i in range(len(data))
    ]


def by_target_curve(rule: Rule) -> str:
    """The report's curve whose points are keyed by quality target, as the server reaches them:
    the threshold rule's own; for the utility rule, its lambdas looked up in the calibration table."""
    return "classifier-threshold" if rule == "threshold" else "classifier-utility-by-target"


def probability_sweeps(
    name: str, probabilities: FloatMatrix, contexts: Sequence[RoutingContext], candidates: Sequence[int]
) -> list[Sweep]:
    """A baseline's estimates (columns = ``candidates``) through the classifier's two decision rules."""
    names = [option.name for option in contexts[0].candidates]
    back = {n: candidates[i] for i, n in enumerate(names)}
    rows = [dict(zip(names, (float(v) for v in row), strict=True)) for row in probabilities]

    def run(
        rule: Callable[[dict[str, float], Sequence[TierOption], float], tuple[str, str]], value: float
    ) -> Choices:
        chosen = [back[rule(p, c.candidates, value)[0]] for p, c in zip(rows, contexts, strict=True)]
        return np.array(chosen, dtype=np.int64)

    threshold = [(t, run(cheapest_adequate, t)) for t in QUALITY_TARGETS]
    utility = [(w, run(max_utility, w)) for w in COST_WEIGHTS]
    return [Sweep(f"{name}-threshold", threshold), Sweep(f"{name}-utility", utility)]


def tier_set_aiq(probabilities: FloatMatrix, rows: RoutingData, config: Config) -> dict[str, float]:
    """AIQ over every configured tier of both decision rules applied to ``probabilities``
    (one column per configured tier) on ``rows`` (all tiers scored)."""
    candidates = list(range(len(config.tiers)))
    scorer = Scorer(rows.scores, rows.realized_costs(), candidates[-1])
    contexts = routing_contexts(rows, config, candidates)
    singles = [scorer.point(0.0, np.full(len(rows), j, dtype=np.int64)) for j in candidates]
    low, high = min(p.cost for p in singles), max(p.cost for p in singles)
    out = {}
    for sweep in probability_sweeps("p", probabilities, contexts, candidates):
        points = [(p.cost, p.quality) for p in [singles[0], *scorer.curve(sweep)]]
        out[sweep.name.removeprefix("p-")] = aiq(points, low, high)
    return out


def random_points(scorer: Scorer, cheapest: int, strongest: int, rows: int) -> list[CurvePoint]:
    """Each prompt to the strongest tier with probability s, else the cheapest: the expected curve, the
    chord between the two tiers alone (APGR 0.5 exactly). A draw of it is that chord plus noise, and the
    noise is large where the two tiers differ little: the mean of ten seeded draws read 0.528 APGR on ARC,
    whose tiers differ on a few percent of prompts."""
    weak = scorer.point(0.0, np.full(rows, cheapest, dtype=np.int64))
    strong = scorer.point(1.0, np.full(rows, strongest, dtype=np.int64))
    return [
        CurvePoint(
            share,
            (1 - share) * weak.cost + share * strong.cost,
            (1 - share) * weak.quality + share * strong.quality,
            (1 - share) * weak.strong_share + share * strong.strong_share,
        )
        for share in SHARES
    ]


def length_sweep(
    contexts: Sequence[RoutingContext], candidates: Sequence[int], train_tokens: npt.NDArray[np.int64]
) -> Sweep:
    """``LengthPolicy``: prompts up to the threshold to the cheapest tier, longer ones to the strongest."""
    names = [o.name for o in contexts[0].candidates]
    back = {n: candidates[i] for i, n in enumerate(names)}
    thresholds = sorted({-1, *(int(np.quantile(train_tokens, q)) for q in SHARES)})
    runs = []
    for limit in thresholds:
        policy = LengthPolicy({name: limit for name in names[:-1]})
        choices = np.array([back[policy.choose(c).tier] for c in contexts], dtype=np.int64)
        runs.append((float(limit), choices))
    return Sweep("length", runs)


def oracle_choices(scores: FloatMatrix, candidates: Sequence[int]) -> Choices:
    """Per prompt, the best-scoring candidate, the cheapest among equals."""
    sub = scores[:, candidates]
    best = np.argmax(sub >= sub.max(axis=1, keepdims=True), axis=1)
    chosen: Choices = np.asarray(candidates, dtype=np.int64)[best]
    return chosen


def oracle_pair_points(scorer: Scorer, weak: int, strong: int) -> list[CurvePoint]:
    """The oracle's pair curve: strong calls go first where they gain most."""
    gain = scorer.scores[:, strong] - scorer.scores[:, weak]
    order = np.argsort(-gain, kind="stable")
    points = []
    for k in range(len(order) + 1):
        choices = np.full(len(order), weak, dtype=np.int64)
        choices[order[:k]] = strong
        points.append(scorer.point(float(k), choices))
    return points


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)


def tier_set_report(
    curves: Mapping[str, list[CurvePoint]],
    singles: Mapping[str, CurvePoint],
    strongest: str,
    cheapest: str,
    split: str,
) -> dict[str, Any]:
    """AIQ and the cost to reach 90 % / 95 % of the strongest tier's quality per router; both costs are
    read off ``split``'s curve, which found the operating point on the prompts it is scored on."""
    single_costs = [p.cost for p in singles.values()]
    low, high = min(single_costs), max(single_costs)
    strong_point = singles[strongest]
    cheap = singles[cheapest]
    routers: dict[str, Any] = {}
    for name, points in curves.items():
        entry: dict[str, Any] = {
            "aiq": round(aiq([(p.cost, p.quality) for p in [cheap, *points]], low, high), 6),
            "points": [asdict(p) for p in points],
        }
        for share in (0.90, 0.95):
            reached = cost_to_reach(points, share * strong_point.quality)
            entry[f"cost_to_{round(share * 100)}pct"] = (
                None
                if reached is None
                else {
                    "usd_per_prompt": _rounded(reached.cost, 9),
                    "share_of_strongest_cost": _rounded(reached.cost / strong_point.cost),
                    "quality": _rounded(reached.quality),
                    "parameter": reached.parameter,
                    "read_off": f"{split} curve",
                }
            )
        routers[name] = entry
    return {
        "strongest": strongest,
        "strongest_quality": round(strong_point.quality, 6),
        "strongest_cost": round(strong_point.cost, 9),
        "cost_range": [low, high],
        "routers": routers,
    }


def pair_report(
    curves: Mapping[str, list[CurvePoint]], weak_point: CurvePoint, strong_point: CurvePoint
) -> dict[str, Any]:
    routers: dict[str, Any] = {}
    for name, points in curves.items():
        shares = [(p.strong_share, p.quality) for p in points]
        routers[name] = {
            "apgr": round(apgr(shares, weak_point.quality, strong_point.quality), 6),
            "cpt50": round(cpt(shares, weak_point.quality, strong_point.quality, 0.5), 6),
            "cpt80": round(cpt(shares, weak_point.quality, strong_point.quality, 0.8), 6),
            "points": [asdict(p) for p in points],
        }
    return {
        "weak_quality": round(weak_point.quality, 6),
        "strong_quality": round(strong_point.quality, 6),
        "routers": routers,
    }


@dataclass(frozen=True)
class Baselines:
    task_prior: TaskPrior
    knn: NeighbourVote


def fit_baselines(data: RoutingData, quality_bar: float) -> Baselines:
    train, validation = data.split("train"), data.split("validation")
    return Baselines(
        TaskPrior(train.tasks, train.adequate(quality_bar)), fit_vote(train, validation, quality_bar)
    )


def evaluate_view(
    model: ClassifierModel,
    data: RoutingData,
    held_out: RoutingData,
    config: Config,
    candidates: Sequence[int],
    baselines: Baselines,
    quality_bar: float,
) -> tuple[dict[str, list[CurvePoint]], dict[str, CurvePoint], Scorer]:
    """Every router's curve over the given candidate tiers (indices into the configured tiers)."""
    strongest, cheapest = candidates[-1], candidates[0]
    scorer = Scorer(held_out.scores, held_out.realized_costs(), strongest)
    contexts = routing_contexts(held_out, config, candidates)
    tier_names = config.tier_names
    guard = serving_guard(model, config)
    sweeps = classifier_sweeps(model, contexts, tier_names, unfamiliar=guard)
    (by_target,) = classifier_sweeps(
        model, contexts, tier_names, rules=("utility",), via_calibration=True, unfamiliar=guard
    )
    sweeps.append(replace(by_target, name=by_target_curve("utility")))
    columns = list(candidates)
    sweeps += probability_sweeps(
        "knn", baselines.knn.predict(held_out.embeddings)[:, columns], contexts, candidates
    )
    sweeps += probability_sweeps(
        "task-prior", baselines.task_prior.predict(held_out.tasks)[:, columns], contexts, candidates
    )
    sweeps.append(length_sweep(contexts, candidates, data.split("train").input_tokens))
    curves = {sweep.name: scorer.curve(sweep) for sweep in sweeps}
    rows = len(held_out)
    curves["random"] = random_points(scorer, cheapest, strongest, rows)
    singles = {tier_names[j]: scorer.point(float(j), np.full(rows, j, dtype=np.int64)) for j in candidates}
    curves["cheapest"] = [singles[tier_names[cheapest]]]
    curves["strongest"] = [singles[tier_names[strongest]]]
    curves["oracle"] = [scorer.point(0.0, oracle_choices(held_out.scores, candidates))]
    return curves, singles, scorer


def tier_index(config: Config, name_or_model: str) -> int:
    for i, tier in enumerate(config.tiers):
        if name_or_model in (tier.name, tier.model):
            return i
    raise ValueError(f"no configured tier is named or serves {name_or_model!r}; tiers: {config.tier_names}")


def evaluate(
    model: ClassifierModel,
    data: RoutingData,
    config: Config,
    strong: str | None = None,
    weak: str | None = None,
    quality_bar: float | None = None,
    split: EvalSplit = "test",
    fit_on: RoutingData | None = None,
) -> dict[str, Any]:
    """The full report (JSON-ready) for one held-out split of ``data``: ``test`` for results,
    ``validation`` while tuning (the classifier chose among its candidates there, so it is not a result),
    ``all`` for every row of a set the model never saw. The baselines fit on ``fit_on``'s train split
    (kNN's k on its validation split), ``data``'s by default; ``all`` needs another set to fit them on."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"evaluate on one of {EVAL_SPLITS}, not {split!r}")
    if split == "all" and fit_on is None:
        raise ValueError("scoring every row needs another data set to fit the baselines on (fit_on)")
    bar = model.manifest.quality_bar if quality_bar is None else quality_bar
    held_out = data if split == "all" else data.split(split)
    held_out = held_out.subset(held_out.complete())
    if len(held_out) == 0:
        raise ValueError(f"the {split} split has no prompt scored for every tier")
    fit_rows = data if fit_on is None else fit_on
    baselines = fit_baselines(fit_rows, bar)
    all_tiers = list(range(len(config.tiers)))
    names = config.tier_names
    curves, singles, _ = evaluate_view(model, fit_rows, held_out, config, all_tiers, baselines, bar)
    report: dict[str, Any] = {
        "model_version": model.version,
        "data_hash": data.data_hash,
        "split": split,
        "baselines_fit_on": {"data_hash": fit_rows.data_hash, "split": "train"},
        "prompts": len(held_out),
        "quality_bar": bar,
        "knn_k": baselines.knn.k,
        "unfamiliar": guard_summary(model, config, held_out.features),
        "tiers": {
            name: {"quality": round(p.quality, 6), "cost": round(p.cost, 9)} for name, p in singles.items()
        },
        "tier_set": tier_set_report(curves, singles, names[-1], names[0], split),
    }
    pair = _pair(config, strong, weak)
    if pair is not None:
        weak_index, strong_index = pair
        pair_curves, pair_singles, scorer = evaluate_view(
            model, fit_rows, held_out, config, [weak_index, strong_index], baselines, bar
        )
        pair_curves["oracle"] = oracle_pair_points(scorer, weak_index, strong_index)
        report["pair"] = {
            "weak": names[weak_index],
            "strong": names[strong_index],
            **pair_report(pair_curves, pair_singles[names[weak_index]], pair_singles[names[strong_index]]),
        }
    report["rules"] = compare_rules(report)
    return report


def _pair(config: Config, strong: str | None, weak: str | None) -> tuple[int, int] | None:
    if strong is None and weak is None:
        try:
            strong_index, weak_index = (tier_index(config, m) for m in DEFAULT_PAIR_MODELS)
        except ValueError:
            return None
    else:
        if strong is None or weak is None:
            raise ValueError("name both the strong and the weak tier, or neither")
        strong_index, weak_index = tier_index(config, strong), tier_index(config, weak)
    if strong_index == weak_index:
        raise ValueError("the strong and the weak tier must differ")
    if weak_index > strong_index:
        raise ValueError("tiers are configured cheapest first: the weak tier must come before the strong one")
    return weak_index, strong_index


def compare_rules(report: Mapping[str, Any]) -> dict[str, Any]:
    """Threshold vs utility on each view's headline metric."""
    out: dict[str, Any] = {}
    views = [("tier_set", "aiq")] + ([("pair", "apgr")] if "pair" in report else [])
    for view, metric in views:
        routers = report[view]["routers"]
        values = {rule: routers[f"classifier-{rule}"][metric] for rule in RULES}
        out[view] = {metric: values, "better": max(values, key=lambda rule: values[rule])}
    return out


def summary_table(report: Mapping[str, Any]) -> str:
    """The headline numbers of a report, one router per line."""
    tier_set = report["tier_set"]
    lines = [
        f"model {report['model_version']}, {report['split']} split, {report['prompts']} prompts; "
        f"strongest tier {tier_set['strongest']} (mean score {tier_set['strongest_quality']:.3f})",
        f"{'router':28s} {'AIQ':>7s} {'cost@90%':>9s} {'cost@95%':>9s}"
        + (f" {'APGR':>7s} {'CPT50':>7s} {'CPT80':>7s}" if "pair" in report else ""),
    ]
    pair_routers = report["pair"]["routers"] if "pair" in report else {}
    for name, entry in tier_set["routers"].items():

        def share(key: str, entry: Mapping[str, Any] = entry) -> str:
            reached = entry[key]
            return "   n/a" if reached is None else f"{reached['share_of_strongest_cost']:.3f}"

        line = f"{name:28s} {entry['aiq']:7.4f} {share('cost_to_90pct'):>9s} {share('cost_to_95pct'):>9s}"
        if name in pair_routers:
            pair = pair_routers[name]
            line += f" {pair['apgr']:7.4f} {pair['cpt50']:7.3f} {pair['cpt80']:7.3f}"
        lines.append(line)
    if "pair" in report:
        lines.append(f"pair: {report['pair']['weak']} (weak) vs {report['pair']['strong']} (strong)")
    lines.append(
        "cost@x% = cost to reach x% of the strongest tier's mean score, as a share of its cost, read off the "
        f"{report['split']} curve (the operating point is picked on these same prompts: a best case)"
    )
    return "\n".join(lines)
