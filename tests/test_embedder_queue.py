"""The embedding queue is bounded, and requests cancelled while queued are never encoded."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.gated_embedder import GatedEmbedder
from tests.harness import build_config, config_dict
from tests.test_cache_embedding import load_sentence_embedder
from tierwise.cache.batching import BatchingEmbedder, EmbedderBusy, EmbedderClosed
from tierwise.cache.embedder import Matrix, TextEmbedder
from tierwise.cache.onnx_embedder import shared_onnx_embedder
from tierwise.router.config import ConfigError
from tierwise.router.errors import EmbedderOverloaded
from tierwise.router.service import ServingEmbedder


async def _one_encoding(batcher: BatchingEmbedder, gated: GatedEmbedder) -> asyncio.Future[object]:
    """Start a request and wait until its batch is held inside encode(): later requests queue."""
    first: asyncio.Future[object] = asyncio.ensure_future(batcher.embed("held in the encoder"))
    await gated.wait_until_encoding()
    return first


@pytest.mark.asyncio
async def test_past_capacity_a_new_request_fails_at_once_with_a_retry_hint() -> None:
    gated = GatedEmbedder(load_sentence_embedder())
    batcher = BatchingEmbedder(gated, max_batch=1, max_wait_us=0, max_queue=2)
    first = await _one_encoding(batcher, gated)
    queued = [asyncio.ensure_future(batcher.embed(f"queued {i}")) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(EmbedderBusy, match=r"queue is full \(2 requests waiting\); retry in") as refused:
        await batcher.embed("one too many")
    assert refused.value.retry_after_s > 0
    gated.release()
    await asyncio.wait_for(asyncio.gather(first, *queued), timeout=60)
    assert "one too many" not in gated.encoded
    # Once the queue drained, requests are accepted again.
    assert (await batcher.embed("later")).shape == (gated.info.dim,)
    await batcher.aclose()


@pytest.mark.asyncio
async def test_a_request_cancelled_while_queued_is_not_encoded() -> None:
    gated = GatedEmbedder(load_sentence_embedder())
    batcher = BatchingEmbedder(gated, max_batch=4, max_wait_us=0, max_queue=16)
    first = await _one_encoding(batcher, gated)
    doomed = asyncio.ensure_future(batcher.embed("cancel me"))
    kept = asyncio.ensure_future(batcher.embed("keep me"))
    await asyncio.sleep(0)
    doomed.cancel()
    gated.release()
    await asyncio.wait_for(asyncio.gather(first, kept), timeout=60)
    await batcher.aclose()
    assert doomed.cancelled()
    assert gated.encoded == ["held in the encoder", "keep me"]
    assert batcher.dropped == 1


@pytest.mark.asyncio
async def test_a_request_cancelled_while_queued_frees_its_place() -> None:
    gated = GatedEmbedder(load_sentence_embedder())
    batcher = BatchingEmbedder(gated, max_batch=4, max_wait_us=0, max_queue=2)
    first = await _one_encoding(batcher, gated)
    doomed = asyncio.ensure_future(batcher.embed("cancel me"))
    kept = asyncio.ensure_future(batcher.embed("keep me"))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.sleep(0)
    # The queue is at capacity, but one place belongs to a cancelled caller: it is given up.
    late = asyncio.ensure_future(batcher.embed("arrived late"))
    gated.release()
    await asyncio.wait_for(asyncio.gather(first, kept, late), timeout=60)
    await batcher.aclose()
    assert sorted(gated.encoded) == ["arrived late", "held in the encoder", "keep me"]


@pytest.mark.asyncio
async def test_the_serving_batcher_refuses_with_resource_exhausted() -> None:
    gated = GatedEmbedder(load_sentence_embedder())
    batcher = ServingEmbedder(gated, max_batch=1, max_wait_us=0, max_queue=1)
    first = await _one_encoding(batcher, gated)
    queued = asyncio.ensure_future(batcher.embed("queued"))
    await asyncio.sleep(0)
    with pytest.raises(EmbedderOverloaded, match="retry in") as refused:
        await batcher.embed("one too many")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    gated.release()
    await asyncio.wait_for(asyncio.gather(first, queued), timeout=60)
    await batcher.aclose()


class FakeClock:
    """The batcher's clock, moved by the test: an encode() takes as long as the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _three_at_once_after_a_30_ms_text(delay_bound_s: float) -> tuple[BatchingEmbedder, list[object]]:
    """One text timed at 30 ms, then three requests arriving together (queued before any is encoded)."""
    clock = FakeClock()
    gated = GatedEmbedder(load_sentence_embedder())
    batcher = BatchingEmbedder(
        gated, max_batch=4, max_wait_us=0, max_queue=16, max_queue_delay_s=delay_bound_s, clock=clock
    )
    assert batcher.expected_wait_s() == 0.0  # nothing timed yet: only max_queue bounds the queue
    first = await _one_encoding(batcher, gated)
    clock.now = 0.030
    gated.release()
    await asyncio.wait_for(first, timeout=60)
    arriving = [asyncio.ensure_future(batcher.embed(f"arriving {i}")) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*arriving, return_exceptions=True), timeout=60)
    await batcher.aclose()
    return batcher, results


@pytest.mark.asyncio
async def test_past_the_delay_bound_a_new_request_is_refused_with_the_wait_as_hint() -> None:
    # 0 and 1 text ahead (0 and 30 ms) fit in 35 ms; the third would wait 2 x 30 ms.
    batcher, results = await _three_at_once_after_a_30_ms_text(0.035)
    assert [isinstance(r, np.ndarray) for r in results] == [True, True, False]
    refused = results[2]
    assert isinstance(refused, EmbedderBusy)
    assert re.search(r"would delay it 60 ms, over 35 ms \(2 requests waiting\)", str(refused))
    assert refused.retry_after_s == pytest.approx(0.060)
    assert batcher.delayed == 1


@pytest.mark.asyncio
async def test_without_a_delay_bound_the_queue_length_alone_bounds_it() -> None:
    batcher, results = await _three_at_once_after_a_30_ms_text(0.0)
    assert all(isinstance(r, np.ndarray) for r in results)
    assert batcher.delayed == 0


def test_a_queue_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        BatchingEmbedder(load_sentence_embedder(), max_queue=0)
    with pytest.raises(ValueError, match="long_text_chars"):
        BatchingEmbedder(load_sentence_embedder(), long_text_chars=-1)


@pytest.mark.parametrize(
    ("cache", "named"),
    [
        ({"embedder": "tensorflow"}, "cache.embedder"),
        ({"max_queue": 0}, "cache.max_queue"),
        ({"max_queue_delay_ms": -1}, "cache.max_queue_delay_ms"),
        ({"long_text_chars": -1}, "cache.long_text_chars"),
        ({"onnx_embedder_dir": 3.5}, "cache.onnx_embedder_dir"),
    ],
)
def test_bad_embedder_settings_name_their_key(cache: dict[str, object], named: str) -> None:
    data = config_dict(Path("var"), "http://127.0.0.1:9/v1", "http://127.0.0.1:9")
    data["cache"] = cache
    with pytest.raises(ConfigError, match=re.escape(named)):
        build_config(data)


@pytest.mark.asyncio
async def test_short_texts_batched_with_a_long_one_are_answered_before_it_is_encoded() -> None:
    gated = GatedEmbedder(load_sentence_embedder())
    batcher = BatchingEmbedder(gated, max_batch=8, max_wait_us=0, max_queue=16)
    first = await _one_encoding(batcher, gated)
    long = asyncio.ensure_future(batcher.embed("a clipped long prompt " * 60))
    shorts = [asyncio.ensure_future(batcher.embed(f"short question {i}")) for i in range(3)]
    await asyncio.sleep(0)
    gated.release()
    await asyncio.wait_for(asyncio.gather(first, long, *shorts), timeout=60)
    await batcher.aclose()
    # One batch of four, encoded as two passes: the short texts first, then the long one alone.
    assert gated.encoded[1:] == [f"short question {i}" for i in range(3)] + ["a clipped long prompt " * 60]
    assert batcher.batches == 3


class LongTextsHeld:
    """Encodes with ``inner``; a batch holding a text over ``chars`` waits at a gate first. Records the
    thread that encoded each text."""

    def __init__(self, inner: TextEmbedder, chars: int) -> None:
        self.inner, self.info, self.chars = inner, inner.info, chars
        self.entered, self.gate = threading.Event(), threading.Event()
        self.threads: dict[str, str] = {}

    def encode(self, texts: list[str]) -> Matrix:
        if any(len(text) > self.chars for text in texts):
            self.entered.set()
            assert self.gate.wait(60), "the long text was never let through"
        self.threads.update((text, threading.current_thread().name) for text in texts)
        return self.inner.encode(texts)


LONG_TEXT = "a clipped long prompt " * 20


@pytest.mark.asyncio
async def test_a_short_text_is_encoded_while_a_long_ones_encode_is_held(onnx_embedder_export: Path) -> None:
    inner = shared_onnx_embedder(onnx_embedder_export, "cpu", 1)
    held = LongTextsHeld(inner, 100)
    batcher = BatchingEmbedder(held, max_wait_us=0, long_text_chars=100)
    long = asyncio.ensure_future(batcher.embed(LONG_TEXT))
    assert await asyncio.to_thread(held.entered.wait, 60)
    # With one queue the short text would wait for the gate, which only the test opens: it would time out.
    short = await asyncio.wait_for(batcher.embed("where is my order?"), 20)
    assert not long.done()
    held.gate.set()
    vectors = inner.encode(["where is my order?", LONG_TEXT])
    np.testing.assert_allclose(short, vectors[0], atol=1e-5)
    np.testing.assert_allclose(await asyncio.wait_for(long, 60), vectors[1], atol=1e-5)
    assert held.threads["where is my order?"].startswith("tierwise-embed_")
    assert held.threads[LONG_TEXT].startswith("tierwise-embed-long_")
    await batcher.aclose()
    with pytest.raises(EmbedderClosed):
        await batcher.embed(LONG_TEXT)


@pytest.mark.asyncio
async def test_the_long_lane_has_its_own_bound_and_refuses_with_resource_exhausted(
    onnx_embedder_export: Path,
) -> None:
    held = LongTextsHeld(shared_onnx_embedder(onnx_embedder_export, "cpu", 1), 100)
    batcher = ServingEmbedder(held, max_batch=1, max_wait_us=0, max_queue=1, long_text_chars=100)
    first = asyncio.ensure_future(batcher.embed(LONG_TEXT))
    assert await asyncio.to_thread(held.entered.wait, 60)
    queued = asyncio.ensure_future(batcher.embed(LONG_TEXT + "again"))
    await asyncio.sleep(0)
    with pytest.raises(EmbedderOverloaded, match="retry in") as refused:
        await batcher.embed(LONG_TEXT + "one too many")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await asyncio.wait_for(batcher.embed("short"), 20)).shape == (held.info.dim,)  # the other lane
    held.gate.set()
    await asyncio.wait_for(asyncio.gather(first, queued), timeout=60)
    await batcher.aclose()
    assert LONG_TEXT + "one too many" not in held.threads
