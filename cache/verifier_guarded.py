"""The default cache verifier: a cosine floor, then the rules, then the learned classifier.

Cheapest first: most bad candidates fall to the cosine floor or a rule in a few
microseconds, and only survivors pay for feature extraction and one ONNX call.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cache.verification import PairVectors, VerifierVerdict
from cache.verifier_model import DEFAULT_MODEL_DIR, VerifierModel
from cache.verifier_rules import RULES_BY_NAME, PairRule, RuleVerifier


class GuardedVerifier:
    """CandidateVerifier: accept when cosine ≥ ``min_cosine``, no hard rule fires and P ≥ ``threshold``.

    The model reads both embeddings: a call without ``vectors`` is rejected.

    ``threshold``, ``min_cosine`` and the hard rules default to the values the model's
    manifest records (chosen on the validation split when it was trained).
    """

    def __init__(
        self,
        model: VerifierModel,
        *,
        threshold: float | None = None,
        min_cosine: float | None = None,
        rules: Iterable[PairRule] | None = None,
    ) -> None:
        manifest = model.manifest
        self.model = model
        self.threshold = manifest.threshold if threshold is None else threshold
        self.min_cosine = manifest.min_cosine if min_cosine is None else min_cosine
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if rules is None:
            unknown = [name for name in manifest.hard_rules if name not in RULES_BY_NAME]
            if unknown:
                raise ValueError(f"manifest names unknown rules {unknown}; known: {sorted(RULES_BY_NAME)}")
            rules = [RULES_BY_NAME[name] for name in manifest.hard_rules]
        self.rules = RuleVerifier(rules)

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
        probability = self.model.probability(query_text, candidate_text, cosine, vectors)
        accept = probability >= self.threshold
        relation = ">=" if accept else "<"
        return VerifierVerdict(
            accept, probability, f"P(same answer) {probability:.3f} {relation} {self.threshold:.3f}"
        )
