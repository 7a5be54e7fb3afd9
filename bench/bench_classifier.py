"""Classifier inference cost per request, against the embedding it rides on.

Not part of the test suite. For RouterBench-like prompts, single-row p50 of:

* features: ``prompt_features`` (statistics of the text + the given embedding);
* ONNX: the trees' graph alone (``ClassifierModel.tree_matrix``; goal: at most 0.1 ms);
* model: ``ClassifierModel.predict``, the trees blended with the kNN vote over the memory;
* the embedding forward pass of the same prompt (``SentenceEmbedder.encode`` of its clip),
  the baseline: the classifier should cost a small fraction of it.

    .venv/bin/python bench/bench_classifier.py                    # a production-sized model on synthetic labels
    .venv/bin/python bench/bench_classifier.py --model var/models/versions/<version>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierwise.cache.embedder import SentenceEmbedder
from tierwise.classifier import FEATURE_SPEC, ClassifierModel, embedding_input, load_model, prompt_features
from tierwise.classifier.neighbours import NeighbourSpec, NeighbourVote
from tierwise.training.fit import DEFAULT_GRID, fit_candidate
from tierwise.training.train import DEFAULT_NEIGHBOUR_WEIGHT, Neighbours, write_version

ROUTERBENCH_TIERS = [
    "mistral-7b",
    "wizardlm-13b",
    "mixtral-8x7b",
    "code-llama-34b",
    "yi-34b",
    "llama-2-70b",
    "claude-instant",
    "gpt-3.5-turbo",
    "claude-v1",
    "claude-v2",
    "gpt-4",
]
FEW_SHOT = (
    "\n\n".join(
        f"Which of these is example {i}?\nA) one\nB) two\nC) three\nD) four\n"
        'Print only a single choice from "A" or "B" or "C" or "D" without explanation.\nAnswer:\nB'
        for i in range(5)
    )
    + "\n\nA rubber duck travelled 300 meters in 10 minutes. What was its average speed?\n"
    "A) 1.0 m/s\nB) 30 m/s\nC) 7.5 m/s\nD) 0.5 m/s\nAnswer:"
)
PROMPTS = {
    "few-shot multiple choice": FEW_SHOT,
    "short coding task": "Write a python function to count inversions in an array.",
}


def production_sized_model(directory: Path) -> ClassifierModel:
    """The default candidate (per-tier trees over a 16-d projection) fitted on synthetic labels, with a
    kNN memory of its 1,200 training rows (RouterBench's training split holds about 1,500 prompts)."""
    rng = np.random.default_rng(0)
    rows = 1500
    embeddings = rng.normal(size=(rows, FEATURE_SPEC.embedding_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    statistics_ = rng.normal(size=(rows, FEATURE_SPEC.size - FEATURE_SPEC.embedding_dim)).astype(np.float32)
    features = np.hstack([embeddings, statistics_])
    signal = features @ rng.normal(size=FEATURE_SPEC.size).astype(np.float32)
    labels = np.column_stack(
        [
            (signal + rng.normal(size=rows) * 3 + k > 0).astype(np.float64)
            for k in range(len(ROUTERBENCH_TIERS))
        ]
    )
    fitted = fit_candidate(
        DEFAULT_GRID[0],
        FEATURE_SPEC,
        ROUTERBENCH_TIERS,
        features[:1200],
        labels[:1200],
        features[1200:],
        labels[1200:],
    )
    vote = NeighbourVote(embeddings[:1200], labels[:1200], k=20)
    neighbours = Neighbours(vote, NeighbourSpec(vote.k, DEFAULT_NEIGHBOUR_WEIGHT, vote.size))
    write_version(
        directory,
        fitted,
        "bench",
        "sentence-transformers/all-MiniLM-L6-v2@384",
        "synthetic",
        0.5,
        neighbours=neighbours,
    )
    return load_model(directory, ROUTERBENCH_TIERS, device="cpu")


def classify(model: ClassifierModel, embedding: np.ndarray, prompt: str) -> dict[str, float]:
    """What the policy does per request once the embedding is there."""
    return model.predict(prompt_features(embedding, prompt, 600, 1))


def p50_us(action: Callable[[], object], repeats: int) -> float:
    for _ in range(min(50, repeats)):
        action()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="a model version directory (default: a synthetic one)")
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--device", default="cpu", help="embedding and ONNX device: cpu, cuda or auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.model is not None:
            model = load_model(args.model, device=args.device)
        else:
            model = production_sized_model(Path(scratch) / "bench")
            if args.device != "cpu":
                model = load_model(Path(scratch) / "bench", ROUTERBENCH_TIERS, device=args.device)
        embedder = SentenceEmbedder(device=args.device)
        print(
            f"model {model.version}: {len(model.tiers)} tiers, onnxruntime providers {list(model.providers)}"
        )
        print(
            f"{'prompt':26s} {'features':>10s} {'ONNX':>10s} {'model':>10s} {'all':>10s} "
            f"{'embedding':>11s} {'all/emb':>9s}"
        )
        for name, prompt in PROMPTS.items():
            clipped = embedding_input(prompt)
            embedding = embedder.encode([clipped])[0]
            features = prompt_features(embedding, prompt, 600, 1)
            t_features = p50_us(partial(prompt_features, embedding, prompt, 600, 1), args.repeats)
            t_onnx = p50_us(partial(model.tree_matrix, features), args.repeats)
            t_model = p50_us(partial(model.predict, features), args.repeats)
            t_all = p50_us(partial(classify, model, embedding, prompt), args.repeats)
            t_embed = p50_us(partial(embedder.encode, [clipped]), max(20, args.repeats // 50))
            print(
                f"{name:26s} {t_features:8.1f}us {t_onnx:8.1f}us {t_model:8.1f}us {t_all:8.1f}us "
                f"{t_embed / 1000:9.2f}ms {t_all / t_embed:9.4f}"
            )
        print(
            "goal: ONNX p50 <= 100us; features + model (trees and kNN vote) a small fraction of the "
            "embedding forward pass"
        )


if __name__ == "__main__":
    main()
