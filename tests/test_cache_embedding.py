"""Micro-batched embedding and the clipped text an embedding is taken of (real all-MiniLM-L6-v2)."""

from __future__ import annotations

import ast
import asyncio
import csv
import functools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tierwise.cache.batching import (
    CLIP_SEPARATOR,
    BatchingEmbedder,
    EmbedderClosed,
    embedding_text,
    estimate_word_pieces,
)
from tierwise.cache.embedder import EmbedderInfo, Matrix, SentenceEmbedder


@functools.cache
def load_sentence_embedder() -> SentenceEmbedder:
    """One model per test process (loading takes seconds); other cache test modules import this."""
    import torch

    # Tests share a small machine with other work; torch's spinning intra-op threads then make a
    # one-sentence encode 25 times slower (measured 630 ms against 24 ms with one thread).
    torch.set_num_threads(1)
    return SentenceEmbedder(device="cpu")


@pytest.fixture(scope="session")
def sentence_embedder() -> SentenceEmbedder:
    return load_sentence_embedder()


def real_pieces(embedder: SentenceEmbedder, text: str) -> int:
    """Word pieces the model reads for ``text``, [CLS] and [SEP] included."""
    tokenizer: Any = embedder.tokenizer
    return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


class CountingEmbedder:
    """A TextEmbedder over the real model that records every encode() call."""

    def __init__(self, inner: SentenceEmbedder) -> None:
        self.inner = inner
        self.info = inner.info
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> Matrix:
        with self._lock:
            self.calls.append(len(texts))
        return self.inner.encode(texts)


class FailingEmbedder:
    info = EmbedderInfo("failing", 4)

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> Matrix:
        self.calls += 1
        raise RuntimeError("model crashed")


# -- embedding_text -------------------------------------------------------------------------------


def test_short_text_is_unchanged() -> None:
    assert embedding_text("How do I reset my password?") == "How do I reset my password?"
    assert embedding_text("") == ""


def test_long_text_keeps_head_and_question_and_fits_the_window(sentence_embedder: SentenceEmbedder) -> None:
    examples = "".join(
        f"Question {i}: which of these animals is a mammal? A) trout B) whale C) frog D) crow\nAnswer: B\n\n"
        for i in range(60)
    )
    question = "Final question: which gas do plants absorb from the air for photosynthesis?\nAnswer:"
    text = "Answer the following multiple choice questions.\n\n" + examples + question
    clipped = embedding_text(text)
    assert real_pieces(sentence_embedder, text) > sentence_embedder.max_seq_length
    assert clipped.startswith("Answer the following multiple choice questions.")
    assert clipped.endswith(question)
    assert CLIP_SEPARATOR in clipped
    assert real_pieces(sentence_embedder, clipped) <= sentence_embedder.max_seq_length
    # Most of the window is used, not thrown away.
    assert real_pieces(sentence_embedder, clipped) > 0.7 * sentence_embedder.max_seq_length


@pytest.mark.parametrize(
    "text",
    [
        "def f(x_1, y_2):\n    return {'k': [x_1 ** 2, y_2 // 3]}  # comment\n" * 40,
        "0x7f3a9c 1234567890 3.14159 2.71828 " * 60,
        "日本語のテキストは単語の間に空白がありません。" * 40,
        "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism " * 40,
        "A" * 3000 + " what is the answer?",
        "!?" * 900,
    ],
)
def test_clip_fits_the_real_tokenizer_on_awkward_text(sentence_embedder: SentenceEmbedder, text: str) -> None:
    clipped = embedding_text(text)
    assert real_pieces(sentence_embedder, clipped) <= sentence_embedder.max_seq_length
    assert clipped.rstrip().endswith(text.rstrip()[-5:])
    assert estimate_word_pieces(text) <= len(text)


def test_clip_fits_real_routerbench_prompts(sentence_embedder: SentenceEmbedder, shared_data: Path) -> None:
    csv.field_size_limit(1 << 30)
    over_window = 0
    for name in ("arc_challenge_train.csv", "mbpp_train.csv", "winograde_train.csv"):
        with (shared_data / "routerbench" / name).open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        # Every 4th prompt: the set is large, and the tokenizer is the slow part of this test.
        for row in rows[::4]:
            prompt = ast.literal_eval(row["prompt"])[0]
            clipped = embedding_text(prompt)
            assert real_pieces(sentence_embedder, clipped) <= sentence_embedder.max_seq_length, row[
                "sample_id"
            ]
            assert clipped.endswith(prompt.rstrip()[-20:])
            over_window += real_pieces(sentence_embedder, prompt) > sentence_embedder.max_seq_length
    assert over_window > 0  # the test did exercise clipping


# -- BatchingEmbedder -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_calls_are_batched_and_match_direct_encode(
    sentence_embedder: SentenceEmbedder,
) -> None:
    counting = CountingEmbedder(sentence_embedder)
    batcher = BatchingEmbedder(counting, max_batch=8, max_wait_us=50_000)
    texts = [f"How do I configure feature number {i} of the product?" for i in range(20)]
    vectors = await asyncio.gather(*(batcher.embed(text) for text in texts))
    await batcher.aclose()
    assert len(counting.calls) < len(texts)
    assert max(counting.calls) <= 8
    assert sum(counting.calls) == len(texts)
    direct = sentence_embedder.encode(texts)
    for vector, expected in zip(vectors, direct, strict=True):
        assert vector.dtype == np.float32 and vector.shape == (sentence_embedder.info.dim,)
        np.testing.assert_allclose(vector, expected, atol=1e-5)


@pytest.mark.asyncio
async def test_encode_failure_reaches_every_waiter_of_the_batch() -> None:
    failing = FailingEmbedder()
    batcher = BatchingEmbedder(failing, max_batch=8, max_wait_us=50_000)
    results = await asyncio.gather(*(batcher.embed(f"t{i}") for i in range(8)), return_exceptions=True)
    assert failing.calls == 1
    assert all(isinstance(result, RuntimeError) and "model crashed" in str(result) for result in results)
    # The batcher keeps serving after a failed batch.
    with pytest.raises(RuntimeError, match="model crashed"):
        await batcher.embed("again")
    await batcher.aclose()


@pytest.mark.asyncio
async def test_aclose_drains_queued_requests_then_refuses(sentence_embedder: SentenceEmbedder) -> None:
    counting = CountingEmbedder(sentence_embedder)
    # A long wait: without the drain these requests would sit for a whole second.
    batcher = BatchingEmbedder(counting, max_batch=64, max_wait_us=1_000_000)
    pending = [asyncio.ensure_future(batcher.embed(f"question {i}")) for i in range(5)]
    await asyncio.sleep(0)  # let the requests enqueue
    await asyncio.wait_for(batcher.aclose(), timeout=30)
    assert all(task.done() and task.result().shape == (sentence_embedder.info.dim,) for task in pending)
    assert counting.calls == [5]
    with pytest.raises(EmbedderClosed):
        await batcher.embed("late")


@pytest.mark.asyncio
async def test_a_cancelled_caller_does_not_break_its_batch(sentence_embedder: SentenceEmbedder) -> None:
    batcher = BatchingEmbedder(CountingEmbedder(sentence_embedder), max_batch=4, max_wait_us=200_000)
    doomed = asyncio.ensure_future(batcher.embed("cancel me"))
    kept = asyncio.ensure_future(batcher.embed("keep me"))
    await asyncio.sleep(0)
    doomed.cancel()
    vector = await asyncio.wait_for(kept, timeout=30)
    np.testing.assert_allclose(vector, sentence_embedder.encode(["keep me"])[0], atol=1e-5)
    await batcher.aclose()


def test_invalid_settings_are_refused(sentence_embedder: SentenceEmbedder) -> None:
    with pytest.raises(ValueError):
        BatchingEmbedder(sentence_embedder, max_batch=0)
    with pytest.raises(ValueError):
        BatchingEmbedder(sentence_embedder, max_wait_us=-1)
    with pytest.raises(ValueError):
        embedding_text("x" * 1000, head_pieces=500)
