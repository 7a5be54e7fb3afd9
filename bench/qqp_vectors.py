"""Real question embeddings for the index benchmark: Quora questions and their paraphrases.

Synthetic vectors (``bench_cache.py --vectors clustered|uniform``) reach any size; these reach
only as far as the QQP file's distinct questions (about 100k), but they sit as a cache's real
question embeddings do. Queries are the ``b`` side of duplicate pairs, their targets the ``a`` side;
the query texts are kept out of the stored rows, so a query's exact top-1 is a real neighbour,
not itself. Vectors come from the embedding disk cache shared with ``tierwise cache eval`` and
``tierwise cache train-verifier`` (embedding all questions once takes about 8 minutes on two cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tierwise.cache.embedder import Matrix, SentenceEmbedder
from tierwise.training.verifier_data import EmbeddingDiskCache, default_cache_dir, embed_cached, read_pairs

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp" / "pairs.jsonl.gz"


def qqp_workload(
    rng: np.random.Generator, size: int, query_count: int, pairs_path: Path = DEFAULT_PAIRS
) -> tuple[Matrix, Matrix, np.ndarray]:
    """``size`` stored question vectors, ``query_count`` paraphrase queries, and each query's paraphrase row."""
    if not pairs_path.exists():
        raise SystemExit(f"--vectors qqp needs {pairs_path} (the shared QQP pairs); it is not there")
    pairs = read_pairs(pairs_path)
    duplicates = [pairs[i] for i in rng.permutation(len(pairs)) if pairs[i].label == 1]
    query_texts: dict[str, str] = {}  # query -> its paraphrase, each text used once on either side
    taken: set[str] = set()
    for pair in duplicates:
        if len(query_texts) == query_count:
            break
        if pair.a != pair.b and not {pair.a, pair.b} & taken:
            query_texts[pair.b] = pair.a
            taken |= {pair.a, pair.b}
    targets = list(query_texts.values())
    others = list(dict.fromkeys(t for p in pairs for t in (p.a, p.b) if t not in taken))
    if size > len(targets) + len(others):
        raise SystemExit(
            f"--vectors qqp holds {len(targets) + len(others):,} distinct questions; size {size:,} is too many"
        )
    rng.shuffle(others)
    stored = targets + others[: size - len(targets)]
    order = rng.permutation(len(stored))
    stored = [stored[i] for i in order]
    row_of = {text: row for row, text in enumerate(stored)}

    embedder = SentenceEmbedder()
    cache = EmbeddingDiskCache(default_cache_dir(), embedder.info)
    try:
        vectors = embed_cached(
            embedder,
            stored + list(query_texts),
            cache,
            on_progress=lambda done, total: print(f"    embedded {done:,}/{total:,}", flush=True),
        )
    finally:
        cache.close()
    base = np.stack([vectors[t] for t in stored]).astype(np.float32)
    queries = np.stack([vectors[q] for q in query_texts]).astype(np.float32)
    sources = np.array([row_of[t] for t in targets], dtype=np.int64)
    return base, queries, sources
