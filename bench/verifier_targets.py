"""Issue 19's two targets for the shipped verifier defaults, through the real cache path.

Not part of the test suite (QQP's test split takes minutes to embed on two cores the first time;
the vectors are then kept in the embedding disk cache under ~/.cache/tierwise):

* independent traps (``training/traps_independent.py``), one half: near-misses served ≤ 5 %,
  paraphrases served ≥ 55 %;
* QQP (../shared/data/qqp/pairs.jsonl.gz), the same split of the group split by question:
  precision ≥ 0.91 at recall ≥ 0.50.

Settings are chosen on ``--split validation``; quote ``--split test`` (the default).

    .venv/bin/python bench/verifier_targets.py --split test
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierwise.cache.embedder import SentenceEmbedder
from tierwise.cache.verifier_guarded import GuardedVerifier
from tierwise.cache.verifier_model import DEFAULT_MODEL_DIR
from tierwise.training.eval_cache import evaluate_cache, read_eval_pairs, select_pairs
from tierwise.training.eval_traps import evaluate_traps, format_report, independent_pairs
from tierwise.training.verifier_data import DiskCachedEmbedder, EmbeddingDiskCache, default_cache_dir

QQP = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp" / "pairs.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", choices=("validation", "test"), default="test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="verifier model directory")
    args = parser.parse_args()

    inner = SentenceEmbedder(device=args.device)
    embedder = DiskCachedEmbedder(inner, EmbeddingDiskCache(default_cache_dir(), inner.info))
    verifier = GuardedVerifier.load(args.model)
    traps = evaluate_traps({f"independent {args.split}": independent_pairs(args.split)}, embedder, verifier)
    print(format_report(traps))
    rates = traps[f"independent {args.split}"]
    met = rates["traps_served"] <= 0.05 and rates["paraphrases_served"] >= 0.55
    print(
        f"independent {args.split}: near-misses served {rates['traps_served']:.1%} (target ≤ 5%),"
        f" paraphrases served {rates['paraphrases_served']:.1%} (target ≥ 55%): {'met' if met else 'NOT met'}"
    )
    if not QQP.exists():
        print(f"QQP: {QQP} is not there (../shared/data); skipped")
        return
    pairs = select_pairs(read_eval_pairs(QQP), args.split)
    run = asyncio.run(evaluate_cache(pairs, embedder, {"guarded": lambda _: verifier}, [verifier.min_cosine]))
    qqp = run["thresholds"][0]["guarded"]
    met = qqp["precision"] >= 0.91 and qqp["recall"] >= 0.50
    print(
        f"QQP {args.split} ({len(pairs)} pairs): precision {qqp['precision']:.3f} (target ≥ 0.91),"
        f" recall {qqp['recall']:.3f} (target ≥ 0.50), wrong-serve {qqp['wrong_serve_rate']:.2%}:"
        f" {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
