"""The verifier's feature function is one function: training rows equal serving rows."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tierwise.cache.embedder import EmbedderInfo, Matrix
from tierwise.cache.verifier_features import (
    EMBEDDING_COMPONENTS,
    FEATURE_NAMES,
    EmbeddingProjection,
    FeatureAssetError,
    FeatureAssets,
    pair_features,
)
from tierwise.cache.verifier_rules import RuleVerifier
from tierwise.training.verifier import fit_embedding_projection, fit_feature_assets, pair_block
from tierwise.training.verifier_data import QuestionPair

PAIRS = [
    QuestionPair("How do I cancel my Netflix subscription?", "How can I cancel my Netflix subscription?", 1),
    QuestionPair("cancel my subscription", "don't cancel my subscription", 0),
    QuestionPair("Flights from Paris to Berlin on Monday", "Flights from Berlin to Paris on Friday", 0),
    QuestionPair("What is 5 + 5?", "what is five plus five", 1),
    QuestionPair("", "?", 0),
]


class HashEmbedder:
    """Deterministic unit vectors from a text hash: stands in for the model where only plumbing is tested."""

    info = EmbedderInfo("test/hash", 48)

    def encode(self, texts: list[str]) -> Matrix:
        rows = []
        for text in texts:
            seed = int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little") ^ len(text)
            vector = np.random.default_rng(seed).normal(size=self.info.dim)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.info.dim)


ASSETS = fit_feature_assets(PAIRS * 2)
# The projection is fitted on more pairs than PAIRS: it needs at least EMBEDDING_COMPONENTS of them.
FIT_PAIRS = PAIRS + [QuestionPair(f"question {i}", f"question {i}, asked again", i % 2) for i in range(40)]
_FIT_TEXTS = [text for pair in FIT_PAIRS for text in (pair.a, pair.b)]
VECTORS = dict(zip(_FIT_TEXTS, HashEmbedder().encode(_FIT_TEXTS), strict=True))
PROJECTION = fit_embedding_projection(FIT_PAIRS, VECTORS)


def _row(query: str, candidate: str, cosine: float, assets: FeatureAssets = ASSETS) -> np.ndarray:
    return pair_features(
        query, candidate, cosine, (VECTORS[PAIRS[0].a], VECTORS[PAIRS[0].b]), assets, PROJECTION
    )


def test_row_has_one_value_per_named_feature() -> None:
    row = _row(PAIRS[0].a, PAIRS[0].b, 0.97)
    assert row.shape == (len(FEATURE_NAMES),)
    assert row.dtype == np.float32
    assert np.all(np.isfinite(row))
    assert row[FEATURE_NAMES.index("cosine")] == pytest.approx(0.97)


def test_features_are_symmetric() -> None:
    for pair in PAIRS:
        u, v = VECTORS[pair.a], VECTORS[pair.b]
        np.testing.assert_array_equal(
            pair_features(pair.a, pair.b, 0.9, (u, v), ASSETS, PROJECTION),
            pair_features(pair.b, pair.a, 0.9, (v, u), ASSETS, PROJECTION),
        )


def test_embedding_features_see_the_vectors() -> None:
    u, v = VECTORS[PAIRS[0].a], VECTORS[PAIRS[0].b]
    first = FEATURE_NAMES.index("embedding_diff_0")
    assert len(FEATURE_NAMES) - first == 2 * EMBEDDING_COMPONENTS
    same = pair_features("x", "x", 1.0, (u, u), ASSETS, PROJECTION)
    other = pair_features("x", "x", 1.0, (u, v), ASSETS, PROJECTION)
    np.testing.assert_array_equal(same[:first], other[:first])
    assert not np.array_equal(same[first:], other[first:])
    with pytest.raises(ValueError, match="expected"):
        PROJECTION.project(u[:10], v[:10])


def test_training_rows_equal_serving_rows() -> None:
    block = pair_block(PAIRS, VECTORS, RuleVerifier(), ASSETS, PROJECTION)
    for index, pair in enumerate(PAIRS):
        cosine = float(np.dot(VECTORS[pair.a], VECTORS[pair.b]))
        assert block.cosines[index] == pytest.approx(cosine, abs=1e-6)
        # The serving path computes the row from the texts, both vectors and the cosine the index returned.
        vectors = (VECTORS[pair.a], VECTORS[pair.b])
        served = pair_features(pair.a, pair.b, float(block.cosines[index]), vectors, ASSETS, PROJECTION)
        np.testing.assert_array_equal(block.features[index], served)
    assert block.labels.tolist() == [pair.label for pair in PAIRS]
    assert block.rules_pass.tolist() == [True, False, False, True, True]


def test_rule_counts_reach_the_features() -> None:
    row = _row("cancel my subscription", "don't cancel my subscription", 0.95)
    assert row[FEATURE_NAMES.index("rule_negation")] == 1
    assert row[FEATURE_NAMES.index("rule_number")] == 0


def test_rare_differing_words_weigh_more() -> None:
    assets = FeatureAssets(100, {"how": 90, "do": 80, "i": 85, "learn": 20, "python": 5})
    common = _row("how do i learn python", "how do i learn python do", 0.99, assets)
    rare = _row("how do i learn python", "how do i learn python zebra", 0.99, assets)
    column = FEATURE_NAMES.index("idf_only_max_word")
    assert rare[column] > common[column]
    assert assets.idf("zebra") == pytest.approx(np.log(101))


def test_assets_round_trip_byte_for_byte() -> None:
    payload = ASSETS.to_bytes()
    again = FeatureAssets.from_bytes(payload)
    assert again == ASSETS
    assert again.to_bytes() == payload


def test_projection_round_trips_byte_for_byte() -> None:
    payload = PROJECTION.to_bytes()
    again = EmbeddingProjection.from_bytes(payload)
    for name in ("diff_mean", "diff_components", "product_mean", "product_components"):
        np.testing.assert_array_equal(getattr(again, name), getattr(PROJECTION, name))
    assert again.to_bytes() == payload


@pytest.mark.parametrize("payload", [b"", b"not gzip", b"\x1f\x8b\x08\x00garbage"])
@pytest.mark.parametrize(
    "load", [FeatureAssets.from_bytes, EmbeddingProjection.from_bytes], ids=["assets", "projection"]
)
def test_malformed_assets_and_projection_are_refused(
    load: Callable[[bytes], FeatureAssets | EmbeddingProjection], payload: bytes
) -> None:
    with pytest.raises(FeatureAssetError):
        load(payload)


def test_projection_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(FeatureAssetError, match="diff_components"):
        EmbeddingProjection(
            PROJECTION.diff_mean,
            PROJECTION.diff_components[:3],
            PROJECTION.product_mean,
            PROJECTION.product_components,
        )
