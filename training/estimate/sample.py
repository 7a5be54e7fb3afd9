"""A sample of real prompts routed by the serving classifier: tier choices, token counts, recorded scores.

The classifier's choices come from ``tierwise.training.evaluate`` (``routing_contexts`` and
``classifier_sweeps``: ``ClassifierPolicy`` over the ONNX model, the code
``tierwise router eval`` and the server run), on the rows of one split that are
scored for every tier, as eval-router's rows are. Per row and tier the profile
keeps the prompt's tokens as the pipeline counts them, the output tokens of the
tier's recorded answer (capped at the tier's ``max_output_tokens``; the
router's assumed output length where no answer was recorded), the recorded
score, and whether the same prompt (after the exact cache's normalisation)
appeared earlier in the sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from tierwise.cache.partition import normalise_text
from tierwise.classifier.model import ClassifierModel
from tierwise.router.config import Config
from tierwise.router.policies.classifier import Rule
from tierwise.router.tokens import TokenCounter
from tierwise.training.dataset import RoutingData, prompt_tokens_by_tier
from tierwise.training.evaluate import routing_contexts
from tierwise.training.policy_sweeps import classifier_sweeps
from tierwise.training.routerbench import RouterBenchRow

IntMatrix = npt.NDArray[np.int64]
FloatMatrix = npt.NDArray[np.float64]
SampleSplit = Literal["train", "validation", "test", "all"]


@dataclass(frozen=True)
class SampleProfile:
    split: SampleSplit
    dropped: int  # rows of the split without a score for every tier
    input_tokens: IntMatrix  # (rows, tiers)
    output_tokens: IntMatrix
    recorded_outputs: int  # (row, tier) cells whose output count is a recorded answer's
    scores: FloatMatrix
    recorded_costs: FloatMatrix  # the dataset's recorded cost per call (the router's estimate where none)
    duplicates: npt.NDArray[np.bool_]  # the prompt appeared earlier in the sample: an exact cache hit
    model_version: str | None
    rule: Rule | None
    classifier_choices: dict[float, IntMatrix]  # quality target -> chosen tier index per row

    @property
    def rows(self) -> int:
        return int(self.scores.shape[0])

    def tier_choices(self, tier: int) -> IntMatrix:
        return np.full(self.rows, tier, dtype=np.int64)


def held_out_rows(data: RoutingData, split: SampleSplit) -> tuple[RoutingData, int]:
    """The split's rows scored for every tier, and how many of the split's rows were not."""
    chosen = data if split == "all" else data.split(split)
    complete = chosen.subset(chosen.complete())
    if len(complete) == 0:
        raise ValueError(f"--sample: no row of the {split} split has a score for every tier")
    return complete, len(chosen) - len(complete)


def _output_tokens(
    config: Config, rows: RoutingData, answers: Mapping[str, RouterBenchRow], tokens: TokenCounter
) -> tuple[IntMatrix, int]:
    counts = np.zeros((len(rows), len(config.tiers)), dtype=np.int64)
    recorded = 0
    for j, tier in enumerate(config.tiers):
        encoding = tier.encoding or tokens.encoding_for_model(tier.model)
        assumed = min(tier.max_output_tokens, config.routing.expected_output_tokens)
        for i, sample_id in enumerate(rows.sample_ids):
            answer = answers[sample_id].responses.get(tier.name)
            if answer is None:
                counts[i, j] = assumed
            else:
                counts[i, j] = min(tier.max_output_tokens, tokens.count_text(answer, encoding=encoding))
                recorded += 1
    return counts, recorded


def exact_repeats(texts: Sequence[str]) -> npt.NDArray[np.bool_]:
    seen: set[str] = set()
    flags = []
    for text in texts:
        key = normalise_text(text)
        flags.append(key in seen)
        seen.add(key)
    return np.array(flags, dtype=np.bool_)


def sample_profile(
    data: RoutingData,
    answers: Sequence[RouterBenchRow],
    config: Config,
    split: SampleSplit,
    model: ClassifierModel | None,
    rule: Rule,
    targets: Sequence[float],
) -> SampleProfile:
    """Profile ``split`` of ``data``; ``answers`` are the same files' rows read with the tiers' column map
    (their recorded answers, keyed by tier name). ``model`` may be None only when ``targets`` is empty."""
    rows, dropped = held_out_rows(data, split)
    by_id = {row.sample_id: row for row in answers}
    tokens = TokenCounter()
    outputs, recorded = _output_tokens(config, rows, by_id, tokens)
    choices: dict[float, IntMatrix] = {}
    if targets:
        if model is None:
            raise ValueError("a classifier policy needs the serving model")
        contexts = routing_contexts(rows, config, list(range(len(config.tiers))))
        (sweep,) = classifier_sweeps(
            model, contexts, config.tier_names, rules=(rule,), targets=targets, via_calibration=True
        )
        choices = dict(sweep.runs)
    return SampleProfile(
        split=split,
        dropped=dropped,
        input_tokens=prompt_tokens_by_tier(config, rows.texts, tokens),
        output_tokens=outputs,
        recorded_outputs=recorded,
        scores=rows.scores,
        recorded_costs=rows.realized_costs(),
        duplicates=exact_repeats(rows.texts),
        model_version=None if model is None else model.version,
        rule=rule if targets else None,
        classifier_choices=choices,
    )
