"""Features: one function for training and serving, over the text the cache embeds too."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from tests.recording_embedder import RecordingEmbedder
from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import EmbedderInfo
from tierwise.classifier import FEATURE_SPEC, FeatureSpec, embedding_input, prompt_features
from tierwise.classifier.features import STATISTIC_NAMES, final_block, prompt_statistics
from tierwise.router.config import parse_config
from tierwise.router.policies.base import RoutingContext, TierOption
from tierwise.router.policies.classifier import context_features
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.training.dataset import load_routing_data

FEW_SHOT = (
    "\n\n".join(f"Which planet is number {i} from the sun?\nA) Mars\nB) Venus\nAnswer:\nA" for i in range(60))
    + "\n\nWhich gas do plants absorb?\nA) Oxygen\nB) Carbon dioxide\nAnswer:"
)

PROMPTS = [
    FEW_SHOT,
    "Write a python function to reverse a linked list. It must run in O(n) and should not use recursion.",
    "Calculate 17 * 23 + 4 and explain each step.",
    "Is the sky blue?",
    "Translate 'good morning' into French, German and Japanese.\n- keep it short\n- no romanisation",
]


class HashEmbedder(RecordingEmbedder):
    """Deterministic unit vectors from a text's hash; remembers what it was asked to embed."""

    info = EmbedderInfo("sentence-transformers/all-MiniLM-L6-v2", 384)

    def vector(self, text: str) -> NDArray[np.float32]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        vector = np.random.default_rng(seed).normal(size=self.info.dim).astype(np.float32)
        unit: NDArray[np.float32] = vector / np.linalg.norm(vector)
        return unit


def config() -> object:
    return parse_config(
        {
            "tiers": [
                {"name": "small", "provider": "openai", "base_url": "http://x", "model": "m-small"},
                {"name": "large", "provider": "openai", "base_url": "http://x", "model": "m-large"},
            ]
        }
    )


def write_wide(path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "task", "m-small", "m-large"])
        for i, prompt in enumerate(PROMPTS):
            writer.writerow([f"q{i}", prompt, "demo", "0" if i % 2 else "1", "1"])


def test_training_and_serving_build_identical_vectors(tmp_path: Path) -> None:
    settings = config()
    write_wide(tmp_path / "data.csv")
    trainer_embedder = HashEmbedder()
    data = load_routing_data(
        tmp_path / "data.csv",
        settings,  # type: ignore[arg-type]
        lambda: trainer_embedder,
        "sentence-transformers/all-MiniLM-L6-v2@384",
        tmp_path / "cache",
        format="wide",
    )
    # What the server does per request: count tokens as the pipeline does, embed the clipped prompt once.
    server_embedder = HashEmbedder()
    tokens = TokenCounter()
    for i, prompt in enumerate(PROMPTS):
        request = RequestSpec(
            tenant="t", messages=(ChatMessage("system", "be nice"), ChatMessage("user", prompt))
        )
        vector = server_embedder.encode([embedding_text(request.prompt_text)])[0]
        input_tokens = tokens.count_messages([ChatMessage("user", prompt)], "m-small")
        options = [TierOption("small", "m-small", 0, 16), TierOption("large", "m-large", 1, 16)]  # type: ignore[arg-type]
        served = context_features(RoutingContext(request, input_tokens, options, 0.5, vector))
        assert served is not None and served.dtype == np.float32
        np.testing.assert_array_equal(served, data.features[i])
    assert sorted(trainer_embedder.seen) == sorted(set(server_embedder.seen))
    # the long few-shot prompt is clipped to head + tail, and the question at its end survives
    assert embedding_input(FEW_SHOT) != FEW_SHOT and embedding_input(FEW_SHOT).endswith("Answer:")
    assert "Carbon dioxide" in embedding_input(FEW_SHOT)


def test_a_second_load_reads_the_embedding_cache(tmp_path: Path) -> None:
    settings = config()
    write_wide(tmp_path / "data.csv")

    def load(factory: object) -> np.ndarray:
        data = load_routing_data(
            tmp_path / "data.csv",
            settings,  # type: ignore[arg-type]
            factory,  # type: ignore[arg-type]
            "sentence-transformers/all-MiniLM-L6-v2@384",
            tmp_path / "cache",
            format="wide",
        )
        return data.embeddings

    first = load(HashEmbedder)

    def must_not_load() -> HashEmbedder:
        raise AssertionError("everything is cached: the embedder must not be loaded")

    np.testing.assert_array_equal(load(must_not_load), first)


def test_statistics_read_the_final_question_of_a_few_shot_prompt() -> None:
    assert final_block(FEW_SHOT).startswith("Which gas do plants absorb?")
    stats = dict(zip(STATISTIC_NAMES, prompt_statistics(FEW_SHOT, 900, 1), strict=True))
    assert stats["final_option_lines"] == 2 and stats["option_lines"] == 122
    assert stats["shot_markers"] == 61 and stats["blocks"] == 61
    assert stats["repeated_line_share"] > 0.5
    assert 0 < stats["final_share_of_prompt"] < 0.05
    assert stats["final_wh_question"] == 1.0 and stats["final_example_overlap"] > 0.0
    code = dict(zip(STATISTIC_NAMES, prompt_statistics(PROMPTS[1], 25, 1), strict=True))
    assert code["code_words"] >= 2 and code["constraint_words"] >= 2 and code["final_imperative"] == 1.0
    math = dict(zip(STATISTIC_NAMES, prompt_statistics(PROMPTS[2], 20, 1), strict=True))
    assert math["math_words"] >= 1 and math["digit_rate"] > 0 and math["math_symbol_rate"] > 0
    yes_no = dict(zip(STATISTIC_NAMES, prompt_statistics(PROMPTS[3], 8, 3), strict=True))
    assert yes_no["final_yes_no_question"] == 1.0 and yes_no["turns"] == 3.0 and yes_no["question_marks"] == 1
    lists = dict(zip(STATISTIC_NAMES, prompt_statistics(PROMPTS[4], 30, 1), strict=True))
    assert lists["list_lines"] == 2


def test_feature_vector_layout_and_checks() -> None:
    vector = prompt_features(np.zeros(384, dtype=np.float32), "hello", 3, 1)
    assert vector.shape == (FEATURE_SPEC.size,) and vector.dtype == np.float32
    assert FEATURE_SPEC.size == 384 + len(STATISTIC_NAMES)
    assert np.isfinite(prompt_features(np.zeros(384, dtype=np.float32), "", 0, 0)).all()
    with pytest.raises(ValueError, match="384"):
        prompt_features(np.zeros(10, dtype=np.float32), "hello", 3, 1)
    assert FeatureSpec.from_json(FEATURE_SPEC.to_json()) == FEATURE_SPEC
    with pytest.raises(ValueError, match="needs"):
        FeatureSpec.from_json({"version": 1})
