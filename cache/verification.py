"""The last check before a semantic neighbour is served: is it really the same question?

The semantic cache finds candidates by cosine similarity; a verifier decides,
pair by pair, whether the stored answer may serve the new query. The cache calls
verifiers on one of its worker threads (a cross-encoder takes milliseconds), so
they must be thread-safe, and they should be fast: every lookup with a candidate
waits for them. A verifier that raises is treated by the cache as a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tierwise.cache.embedder import Vector

# The query's and the candidate's embeddings (normalised, of one embedder), when the caller has them.
PairVectors = tuple[Vector, Vector]


@dataclass(frozen=True, slots=True)
class VerifierVerdict:
    """``score`` is the verifier's confidence in [0, 1] that the pair is equivalent."""

    accept: bool
    score: float
    reason: str


class CandidateVerifier(Protocol):
    def verify(
        self, query_text: str, candidate_text: str, cosine: float, vectors: PairVectors | None = None
    ) -> VerifierVerdict:
        """Judge whether ``candidate_text``'s stored answer serves ``query_text``."""
        ...


class CosineOnlyVerifier:
    """The baseline: accept exactly when the cosine similarity reaches the threshold."""

    def __init__(self, threshold: float) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [-1, 1], got {threshold}")
        self.threshold = threshold

    def verify(
        self, query_text: str, candidate_text: str, cosine: float, vectors: PairVectors | None = None
    ) -> VerifierVerdict:
        accept = cosine >= self.threshold
        relation = ">=" if accept else "<"
        score = min(1.0, max(0.0, cosine))
        return VerifierVerdict(accept, score, f"cosine {cosine:.4f} {relation} {self.threshold:.4f}")
