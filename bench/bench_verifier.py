"""What the cache verifier costs per candidate, against the embedding every lookup already pays.

Not part of the test suite. For each pair (a stored question, a new one) the guarded
verifier runs the cosine floor, the rules, the pair classifier and, when the model
ships one and its vote could still carry the pair, the cross-encoder. In one run:

* the embedding forward pass of one query (``SentenceEmbedder.encode``), the baseline;
* ``GuardedVerifier.verify`` with the shipped model, cross-encoder included;
* the same with the cross-encoder left out (classifier and rules only).

Each is printed as p50/p99 and as a ratio to the baseline's p50. Pairs are QQP validation
pairs when ../shared/data is present, else the hand-written traps.

    .venv/bin/python bench/bench_verifier.py --pairs 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierwise.cache.embedder import SentenceEmbedder
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.cache.verifier_model import DEFAULT_MODEL_DIR, VerifierModel
from tierwise.training.verifier_data import pairs_by_split, read_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import p50_p99, percentiles

ROOT = Path(__file__).resolve().parents[1]
QQP = ROOT.parent / "shared" / "data" / "qqp" / "pairs.jsonl.gz"
TRAPS = ROOT / "tests" / "data" / "cache_traps.jsonl"


def sample_pairs(count: int) -> list[tuple[str, str]]:
    if QQP.exists():
        pairs = pairs_by_split(read_pairs(QQP))["validation"]
        return [(pair.a, pair.b) for pair in pairs[:count]]
    rows = [json.loads(line) for line in TRAPS.read_text().splitlines() if line.strip()]
    return [(row["a"], row["b"]) for row in rows if isinstance(row["a"], str)][:count]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def summary(name: str, samples: list[float], baseline: float | None) -> str:
    p50, _ = p50_p99(samples)
    ratio = "" if baseline is None else f"  p50 / embedding p50 = {p50 / baseline:.3f}"
    return f"{name:36s} {percentiles(samples)}{ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="verifier model directory")
    args = parser.parse_args()

    pairs = sample_pairs(args.pairs)
    embedder = SentenceEmbedder(device=args.device)
    vectors = embedder.encode([text for pair in pairs for text in pair])
    model = VerifierModel(args.model)
    with_cross = GuardedVerifier(model)
    without = VerifierModel(args.model)
    without.cross_encoder = None
    # Same floor, rules and bar; only the cross-encoder's vote is missing.
    without.manifest = dataclasses.replace(without.manifest, cross_encoder=None)
    classifier_only = GuardedVerifier(without, threshold=with_cross.threshold)

    for text, _ in pairs[:20]:  # warm-up
        embedder.encode([text])
    embedding = [timed(lambda text=text: embedder.encode([text])) for text, _ in pairs]
    baseline = sorted(embedding)[len(embedding) // 2]
    print(f"{len(pairs)} pairs, model {model.directory}, cross-encoder: {model.cross_encoder is not None}")
    print(summary("embedding forward pass (1 query)", embedding, None))
    for name, verifier in (
        ("verify, cross-encoder included", with_cross),
        ("verify, classifier only", classifier_only),
    ):
        samples, asked = [], 0
        for index, (stored, query) in enumerate(pairs):
            left, right = vectors[2 * index + 1], vectors[2 * index]
            cosine = float(np.dot(left, right))
            started = time.perf_counter()
            reason = verifier.verify(query, stored, cosine, (left, right)).reason
            samples.append(time.perf_counter() - started)
            asked += "cross-encoder" in reason and "not asked" not in reason
        print(summary(name, samples, baseline) + f"  (cross-encoder asked for {asked} of {len(pairs)})")


if __name__ == "__main__":
    main()
