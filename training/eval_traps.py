"""The cache's trap sets side by side, through the real cache path, at the verifier's shipped defaults.

* ``make_traps``: ``tests/data/cache_traps.jsonl``, written with the rules' own words
  (``training/make_traps.py``): the rules catch its near-misses by construction.
* ``independent validation`` / ``independent test``: the two halves of
  ``training/traps_independent.py``, whose words the rules do not know. Settings are tuned on the
  validation half only; the test half is the one to quote.

For each: the share of near-misses served (label 0: must not be), the share of paraphrases served
(label 1: should be), and both per category. ``python -m tierwise.training.eval_traps`` prints them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tierwise.cache.embedder import TextEmbedder
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.training.eval_cache import EvalPair, evaluate_cache, read_eval_pairs
from tierwise.training.make_traps import DEFAULT_OUTPUT as MAKE_TRAPS_FILE
from tierwise.training.traps_independent import TrapSplit, generate


def independent_pairs(split: TrapSplit) -> list[EvalPair]:
    return [
        EvalPair((("user", row.a),), (("user", row.b),), row.label, row.category)
        for row in generate()
        if row.split == split
    ]


def trap_sets(make_traps_file: Path = MAKE_TRAPS_FILE) -> dict[str, list[EvalPair]]:
    return {
        "make_traps": read_eval_pairs(make_traps_file),
        "independent validation": independent_pairs("validation"),
        "independent test": independent_pairs("test"),
    }


def _rates(metrics: dict[str, Any]) -> dict[str, Any]:
    """Near-misses served / near-misses, paraphrases served / paraphrases (``ServeMetrics`` JSON in)."""
    return {
        "traps_served": metrics["wrong_serve_rate"],
        "traps": metrics["negatives"],
        "paraphrases_served": metrics["recall"],
        "paraphrases": metrics["positives"],
    }


def evaluate_traps(
    sets: Mapping[str, Sequence[EvalPair]], embedder: TextEmbedder, verifier: GuardedVerifier
) -> dict[str, dict[str, Any]]:
    """Per set: the rates at the verifier's defaults (cosine floor = the cache's threshold), and by category."""
    report = {}
    for name, pairs in sets.items():
        run = asyncio.run(
            evaluate_cache(pairs, embedder, {"guarded": lambda _: verifier}, [verifier.min_cosine])
        )
        guarded = run["thresholds"][0]["guarded"]
        report[name] = {
            **_rates(guarded),
            "by_category": {kind: _rates(metrics) for kind, metrics in guarded.get("by_kind", {}).items()},
        }
    return report


def format_report(report: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'set':28s} {'near-misses served':>20s} {'paraphrases served':>20s}"]
    for name, row in report.items():
        lines.append(
            f"{name:28s} {row['traps_served']:>13.1%} of {row['traps']:<4d}"
            f" {row['paraphrases_served']:>13.1%} of {row['paraphrases']:<4d}"
        )
        for kind, rates in row["by_category"].items():
            lines.append(
                f"  {kind:26s} {rates['traps_served']:>13.1%} of {rates['traps']:<4d}"
                f" {rates['paraphrases_served']:>13.1%} of {rates['paraphrases']:<4d}"
            )
    return "\n".join(lines)


def main() -> None:
    from tierwise.cache.embedder import SentenceEmbedder

    print(format_report(evaluate_traps(trap_sets(), SentenceEmbedder(), GuardedVerifier.load())))


if __name__ == "__main__":
    main()
