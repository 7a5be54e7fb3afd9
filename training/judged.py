"""Judged traffic as training rows: feedback scores joined with the traffic samples that hold the
request's features (embedding + prompt statistics, as the server computed them).

A row is one request; each tier column holds the mean score of that tier's
judgments (the served answer's, and the shadow tier's), NaN where no one judged
it. Feedback from apps and humans names no tier: it scores the served one.
Requests are split by a hash of their prompt key (a keyed hash of the prompt
text; the request id for samples without one), as the base data is by sample
id: every request of one prompt is on the same side, so a held-out judged
prompt was never trained on under another request id. The shares are
``learning.retrain.judged_validation`` and ``judged_held_out`` (15 % each by
default, as the base data's splits).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from tierwise.classifier.features import EMBEDDING_DIM
from tierwise.router.config import Config, RetrainConfig
from tierwise.router.feedback.factory import open_feedback_table
from tierwise.router.feedback.store import FeedbackRecord
from tierwise.router.learning.traffic_sqlite import SqliteTrafficStore
from tierwise.router.pricing import expected_cost_usd
from tierwise.training.dataset import RoutingData
from tierwise.training.routerbench import split_of

JUDGED_TASK = "judged-traffic"


@dataclass(frozen=True)
class Judgments:
    records: list[FeedbackRecord]
    newest: float  # created_at of the newest record (0 when none)


def read_judgments(config: Config, since: float, until: float) -> Judgments:
    store = open_feedback_table(config)
    try:
        records = store.select_between(since, until)
    finally:
        store.close()
    return Judgments(records, max((r.created_at for r in records), default=0.0))


def _expected_costs(config: Config, input_tokens: int) -> list[float]:
    costs = []
    for tier in config.tiers:
        output = min(tier.max_output_tokens, config.routing.expected_output_tokens)
        costs.append(float(expected_cost_usd(tier.price, input_tokens, Decimal(output))))
    return costs


def judged_rows(config: Config, records: Sequence[FeedbackRecord], weight: float) -> RoutingData | None:
    """Training rows for the judged requests that have a traffic sample with features; None if none."""
    tiers = config.tier_names
    index = {name: j for j, name in enumerate(tiers)}
    fractions = config.learning.retrain.judged_fractions()
    traffic = SqliteTrafficStore(config.store.path / "traffic.sqlite3")
    try:
        samples = traffic.get_many(sorted({r.request_id for r in records}))
    finally:
        traffic.close()
    scores: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        sample = samples.get(record.request_id)
        if sample is None or sample.tenant != record.tenant:
            continue
        tier = record.metadata.get("tier", sample.tier)
        if tier in index:
            scores[record.request_id][index[tier]].append(record.score)
    # Ordered by prompt key, then id: the same judged prompts give the same rows in the same order.
    ids = sorted(
        (rid for rid in scores if samples[rid].features() is not None),
        key=lambda rid: (samples[rid].prompt_key, rid),
    )
    if not ids:
        return None
    features = np.stack([samples[rid].features() for rid in ids]).astype(np.float32)  # type: ignore[misc]
    matrix = np.full((len(ids), len(tiers)), np.nan)
    for i, rid in enumerate(ids):
        for j, values in scores[rid].items():
            matrix[i, j] = float(np.mean(values))
    tokens = np.array([samples[rid].input_tokens for rid in ids], dtype=np.int64)
    digest = hashlib.sha256()
    for rid, row in zip(ids, matrix, strict=True):
        digest.update(rid.encode() + row.tobytes())
    return RoutingData(
        tiers=tiers,
        sample_ids=tuple(ids),
        texts=tuple(samples[rid].prompt or "" for rid in ids),
        tasks=(JUDGED_TASK,) * len(ids),
        splits=np.array([split_of(samples[rid].prompt_key or rid, fractions=fractions) for rid in ids]),
        scores=matrix,
        costs=np.full(matrix.shape, np.nan),
        expected_costs=np.array([_expected_costs(config, int(t)) for t in tokens], dtype=np.float64),
        input_tokens=tokens,
        embeddings=features[:, :EMBEDDING_DIM].copy(),
        features=features,
        data_hash=digest.hexdigest(),
        weights=np.full(len(ids), weight),
        prompt_keys=tuple(samples[rid].prompt_key or rid for rid in ids),
    )


def judged_row_weight(settings: RetrainConfig, base_train_rows: int, judged_train_rows: int) -> float:
    """The training weight of one judged row: ``judgment_weight``, raised so that judged rows carry
    ``judged_share`` of the training weight once at least ``judged_min_rows`` of them train."""
    weight = settings.judgment_weight
    share = settings.judged_share
    if share is None or base_train_rows == 0 or judged_train_rows < settings.judged_min_rows:
        return weight
    return max(weight, share / (1.0 - share) * base_train_rows / judged_train_rows)


def concat(parts: Sequence[RoutingData]) -> RoutingData:
    """Rows of several datasets over the same tiers, in order; weights default to 1."""
    if not parts:
        raise ValueError("nothing to concatenate")
    tiers = parts[0].tiers
    if any(p.tiers != tiers for p in parts):
        raise ValueError("datasets over different tiers cannot be combined")
    digest = hashlib.sha256("".join(p.data_hash for p in parts).encode()).hexdigest()
    return RoutingData(
        tiers=tiers,
        sample_ids=tuple(s for p in parts for s in p.sample_ids),
        texts=tuple(t for p in parts for t in p.texts),
        tasks=tuple(t for p in parts for t in p.tasks),
        splits=np.concatenate([p.splits for p in parts]),
        scores=np.vstack([p.scores for p in parts]),
        costs=np.vstack([p.costs for p in parts]),
        expected_costs=np.vstack([p.expected_costs for p in parts]),
        input_tokens=np.concatenate([p.input_tokens for p in parts]),
        embeddings=np.vstack([p.embeddings for p in parts]),
        features=np.vstack([p.features for p in parts]),
        data_hash=digest,
        weights=np.concatenate([p.weights if p.weights is not None else np.ones(len(p)) for p in parts]),
        prompt_keys=tuple(k for p in parts for k in p.prompts()),
    )
