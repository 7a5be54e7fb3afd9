"""The embedder backends side by side: sentence-transformers (torch) against the fp32 ONNX export.

Both run on the CPU with the same thread count and are timed in alternating rounds in one process,
so load from other work on the machine falls on both alike. Printed: encode p50/p99 of one short
text, one long text (past the model's 256-piece window) and a batch of 64 short texts, and
torch/onnx as a ratio (above 1: ONNX faster), plus the least cosine between the two backends' vectors.

    .venv/bin/python bench/bench_embedder.py [--threads 2] [--calls 200] [--export DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import p50_p99, percentiles
from tierwise.cache.embedder import Matrix, SentenceEmbedder
from tierwise.cache.onnx_embedder import OnnxEmbedder
from tierwise.training.embedder_export import export_embedder

SHORT = "How do I reset my password?"
LONG = " ".join(
    f"Example {i}: the invoice #{1000 + i} was paid late, so the customer asked for a refund."
    for i in range(40)
)
BATCH = [f"How do I configure feature number {i} of the product?" for i in range(64)]
CASES = {"short text": [SHORT], "long text (>256 pieces)": [LONG], "64 short texts": BATCH}


def timed(encode: Callable[[list[str]], Matrix], texts: list[str], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        encode(texts)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both backends")
    parser.add_argument("--calls", type=int, default=200, help="timed encode() calls per case and backend")
    parser.add_argument("--rounds", type=int, default=4, help="alternations between the backends")
    parser.add_argument("--export", type=Path, help="an existing export (default: export into a temp dir)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        export = args.export or Path(scratch) / "onnx-embedder"
        if args.export is None:
            export_embedder(export)
        backends = {
            "torch": SentenceEmbedder(device="cpu"),
            "onnx": OnnxEmbedder(export, "cpu", threads=args.threads),
        }
        texts = [SHORT, LONG, *BATCH]
        cosine = float((backends["torch"].encode(texts) * backends["onnx"].encode(texts)).sum(axis=1).min())
        print(f"== embedder backends on the CPU, {args.threads} threads each; least cosine {cosine:.6f}")
        for case, case_texts in CASES.items():
            samples: dict[str, list[float]] = {name: [] for name in backends}
            for backend in backends.values():
                timed(backend.encode, case_texts, 5)  # warm-up
            per_round = max(1, args.calls // args.rounds)
            for _ in range(args.rounds):
                for name, backend in backends.items():
                    samples[name] += timed(backend.encode, case_texts, per_round)
            for name in backends:
                print(f"  {case:26s} {name:5s} {percentiles(samples[name])}")
            ratio = p50_p99(samples["torch"])[0] / p50_p99(samples["onnx"])[0]
            print(f"  {case:26s} p50 torch/onnx {ratio:.2f}x")


if __name__ == "__main__":
    main()
