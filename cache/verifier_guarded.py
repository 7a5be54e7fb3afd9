"""The default cache verifier: a cosine floor, then the rules, then the learned classifier.

Cheapest first: most bad candidates fall to the cosine floor or a rule in a few
microseconds, only survivors pay for feature extraction and one ONNX call, and the
cross-encoder (milliseconds) is asked only when its vote could still carry the pair.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tierwise.cache.verification import PairVectors, VerifierVerdict
from tierwise.cache.verifier_cross import mixed_probability
from tierwise.cache.verifier_model import DEFAULT_MODEL_DIR, VerifierModel
from tierwise.cache.verifier_rules import RULES_BY_NAME, PairRule, RuleVerifier


class GuardedVerifier:
    """CandidateVerifier: accept when cosine ≥ ``min_cosine``, no hard rule fires and P ≥ the bar.

    P is the pair classifier's probability or, when the model ships a cross-encoder,
    ``(1 − w) · P_classifier + w · P_cross`` with the weight ``w`` its manifest records.
    The bar is ``threshold``, raised to ``soft_rule_threshold`` when a soft rule sees a
    difference (a named entity or a number that differs may still be the same question).

    The model reads both embeddings: a call without ``vectors`` is rejected.

    Every setting defaults to what the model's manifest records (chosen on the validation
    split when it was trained); ``rules`` and ``soft_rules`` replace the hard and soft rule sets.
    """

    def __init__(
        self,
        model: VerifierModel,
        *,
        threshold: float | None = None,
        min_cosine: float | None = None,
        rules: Iterable[PairRule] | None = None,
        soft_rules: Iterable[PairRule] | None = None,
    ) -> None:
        manifest = model.manifest
        self.model = model
        self.threshold = manifest.threshold if threshold is None else threshold
        self.min_cosine = manifest.min_cosine if min_cosine is None else min_cosine
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        self.soft_rule_threshold = max(self.threshold, manifest.soft_rule_threshold)
        self.rules = RuleVerifier(_named_rules(manifest.hard_rules) if rules is None else rules)
        self.soft_rules = RuleVerifier(
            _named_rules(manifest.soft_rules) if soft_rules is None else soft_rules
        )

    @classmethod
    def load(
        cls, directory: Path = DEFAULT_MODEL_DIR, expected_embedder_key: str | None = None
    ) -> GuardedVerifier:
        """The verifier of a model directory (the shipped one by default) at its manifest's settings."""
        return cls(VerifierModel(directory, expected_embedder_key))

    def verify(
        self, query_text: str, candidate_text: str, cosine: float, vectors: PairVectors | None = None
    ) -> VerifierVerdict:
        if cosine < self.min_cosine:
            return VerifierVerdict(False, 0.0, f"cosine {cosine:.4f} < {self.min_cosine:.4f}")
        difference = self.rules.first_difference(query_text, candidate_text)
        if difference is not None:
            return VerifierVerdict(False, 0.0, f"rule {difference}")
        if vectors is None:
            # The model reads the embeddings; without them it cannot judge, so nothing is served.
            return VerifierVerdict(False, 0.0, "no embeddings to compare")
        soft = self.soft_rules.first_difference(query_text, candidate_text)
        bar = self.threshold if soft is None else self.soft_rule_threshold
        notes = []
        probability = self.model.probability(query_text, candidate_text, cosine, vectors)
        cross = self.model.cross_encoder
        if cross is not None:
            weight = cross.spec.weight
            if mixed_probability(weight, probability, 1.0) < bar:
                # Even a certain "same" from the cross-encoder could not lift the pair: spare its
                # milliseconds, and score the pair as if it had said "different".
                notes.append(f"classifier {probability:.3f}; cross-encoder not asked")
                probability = mixed_probability(weight, probability, 0.0)
            else:
                crossed = cross.probability(query_text, candidate_text)
                notes.append(f"classifier {probability:.3f}, cross-encoder {crossed:.3f}")
                probability = mixed_probability(weight, probability, crossed)
        if soft is not None:
            notes.append(f"soft rule {soft}")
        detail = f" ({'; '.join(notes)})" if notes else ""
        accept = probability >= bar
        relation = ">=" if accept else "<"
        return VerifierVerdict(
            accept, probability, f"P(same answer) {probability:.3f} {relation} {bar:.3f}{detail}"
        )


def _named_rules(names: Iterable[str]) -> list[PairRule]:
    unknown = [name for name in names if name not in RULES_BY_NAME]
    if unknown:
        raise ValueError(f"manifest names unknown rules {unknown}; known: {sorted(RULES_BY_NAME)}")
    return [RULES_BY_NAME[name] for name in names]
