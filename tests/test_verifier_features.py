"""The verifier's feature function is one function: training rows equal serving rows."""

from __future__ import annotations

import numpy as np
import pytest

from cache.embedder import EmbedderInfo, Matrix
from cache.verifier_features import FEATURE_NAMES, FeatureAssetError, FeatureAssets, pair_features
from cache.verifier_rules import RuleVerifier
from training.verifier import fit_feature_assets, pair_block
from training.verifier_data import QuestionPair

PAIRS = [
    QuestionPair("How do I cancel my Netflix subscription?", "How can I cancel my Netflix subscription?", 1),
    QuestionPair("cancel my subscription", "don't cancel my subscription", 0),
    QuestionPair("Flights from Paris to Berlin on Monday", "Flights from Berlin to Paris on Friday", 0),
    QuestionPair("What is 5 + 5?", "what is five plus five", 1),
    QuestionPair("", "?", 0),
]


class HashEmbedder:
    """Deterministic unit vectors from a text hash: stands in for the model where only plumbing is tested."""

    info = EmbedderInfo("test/hash", 16)

    def encode(self, texts: list[str]) -> Matrix:
        rows = []
        for text in texts:
            seed = int.from_bytes(text.encode("utf-8")[:8].ljust(8, b"\0"), "little") ^ len(text)
            vector = np.random.default_rng(seed).normal(size=self.info.dim)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.info.dim)


ASSETS = fit_feature_assets(PAIRS * 2)


def test_row_has_one_value_per_named_feature() -> None:
    row = pair_features(PAIRS[0].a, PAIRS[0].b, 0.97, ASSETS)
    assert row.shape == (len(FEATURE_NAMES),)
    assert row.dtype == np.float32
    assert np.all(np.isfinite(row))
    assert row[FEATURE_NAMES.index("cosine")] == pytest.approx(0.97)


def test_features_are_symmetric() -> None:
    for pair in PAIRS:
        np.testing.assert_array_equal(
            pair_features(pair.a, pair.b, 0.9, ASSETS), pair_features(pair.b, pair.a, 0.9, ASSETS)
        )


def test_training_rows_equal_serving_rows() -> None:
    embedder = HashEmbedder()
    texts = [text for pair in PAIRS for text in (pair.a, pair.b)]
    vectors = dict(zip(texts, embedder.encode(texts), strict=True))
    block = pair_block(PAIRS, vectors, RuleVerifier(), ASSETS)
    for index, pair in enumerate(PAIRS):
        cosine = float(np.dot(vectors[pair.a], vectors[pair.b]))
        assert block.cosines[index] == pytest.approx(cosine, abs=1e-6)
        # The serving path computes the row from the texts and the cosine the index returned.
        served = pair_features(pair.a, pair.b, float(block.cosines[index]), ASSETS)
        np.testing.assert_array_equal(block.features[index], served)
    assert block.labels.tolist() == [pair.label for pair in PAIRS]
    assert block.rules_pass.tolist() == [True, False, False, True, True]


def test_rule_counts_reach_the_features() -> None:
    row = pair_features("cancel my subscription", "don't cancel my subscription", 0.95, ASSETS)
    assert row[FEATURE_NAMES.index("rule_negation")] == 1
    assert row[FEATURE_NAMES.index("rule_number")] == 0


def test_rare_differing_words_weigh_more() -> None:
    assets = FeatureAssets(100, {"how": 90, "do": 80, "i": 85, "learn": 20, "python": 5})
    common = pair_features("how do i learn python", "how do i learn python do", 0.99, assets)
    rare = pair_features("how do i learn python", "how do i learn python zebra", 0.99, assets)
    column = FEATURE_NAMES.index("idf_only_max_word")
    assert rare[column] > common[column]
    assert assets.idf("zebra") == pytest.approx(np.log(101))


def test_assets_round_trip_byte_for_byte() -> None:
    payload = ASSETS.to_bytes()
    again = FeatureAssets.from_bytes(payload)
    assert again == ASSETS
    assert again.to_bytes() == payload


@pytest.mark.parametrize("payload", [b"", b"not gzip", b"\x1f\x8b\x08\x00garbage"])
def test_malformed_assets_are_refused(payload: bytes) -> None:
    with pytest.raises(FeatureAssetError):
        FeatureAssets.from_bytes(payload)
