"""Micro-batched embedding for concurrent requests, and the text an embedding is taken of.

Encoding 64 texts in one forward pass costs far less than 64 passes, so
concurrent ``embed()`` calls are queued and encoded together: a batch leaves
when it is full or when its oldest request has waited ``max_wait_us``. While one
batch is encoding (in a worker thread, never on the event loop) the next one
fills, so batches grow with load. An ``encode()`` failure is raised in every
request of that batch. The queue is bounded (``max_queue``): past it ``embed()`` fails at once
with :class:`EmbedderBusy`, and requests cancelled while queued are dropped before encoding. With
``max_queue_delay_s`` a request is also refused when the texts ahead of it would take longer than that
to encode (at the recent time per text): under overload the admitted keep a short wait, however
large the queue bound. With ``long_text_chars``, longer texts queue apart and are encoded by a
thread of their own: a short text never waits behind a long one's encode (a window-long text takes
about eight times a short one's), which on a shared CPU costs the short encodes a share of a core
instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tierwise.cache.backoff import RetryHint, retry_after_s
from tierwise.cache.embedder import EmbedderInfo, Matrix, TextEmbedder, Vector, length_groups

MODEL_WINDOW_PIECES = 256
"""Word pieces all-MiniLM-L6-v2 reads (``SentenceEmbedder.max_seq_length``), [CLS] and [SEP] included."""

ESTIMATE_SAFETY = 1.15
"""Largest real/estimated word-piece ratio seen over 200-piece windows of the RouterBench prompts and
answers (1.146); the estimate is held below the window by this factor so the clipped text fits."""

DEFAULT_HEAD_PIECES = 40
CLIP_SEPARATOR = "\n...\n"
_SEPARATOR_PIECES = 3
# ASCII words, and every other non-space character on its own (BERT splits punctuation and CJK
# characters into single tokens, and a single character never becomes more than one token).
_PIECE = re.compile(r"[A-Za-z0-9]+|\S")


def _estimate_pieces(piece: str) -> int:
    length = len(piece)
    if length == 1 or not piece.isalnum():
        return 1
    if piece.isalpha():
        # Most words up to 7 letters are one vocabulary entry; longer ones split about every 3 letters.
        return 1 if length <= 7 else 1 + math.ceil((length - 7) / 3)
    if piece.isdigit():
        return math.ceil(length * 0.6)  # long numbers split into pieces of 1-3 digits
    return length  # letters mixed with digits (hex, ids) split almost character by character


def estimate_word_pieces(text: str) -> int:
    """A cheap estimate of the word pieces of ``text`` (without [CLS]/[SEP]); never above ``len(text)``."""
    return sum(_estimate_pieces(match.group()) for match in _PIECE.finditer(text))


def _take(text: str, spans: list[tuple[int, int, int]], budget: int, from_end: bool) -> tuple[int, int]:
    """How far a head (or tail) of ``budget`` estimated pieces reaches: ``(char position, pieces used)``."""
    used = 0
    ordered = reversed(spans) if from_end else iter(spans)
    position = len(text) if from_end else 0
    for start, end, cost in ordered:
        if used + cost > budget:
            # A piece too long for what is left contributes a character slice (one piece per char at most).
            room = budget - used
            if room > 0:
                position = end - room if from_end else start + room
                used = budget
            break
        used += cost
        position = start if from_end else end
    return position, used


FIRST_WINDOW_CHARS = 4096
"""A long text's head and tail are looked for in windows of this many characters at its ends first
(4x larger each time they fall short), so clipping a 1M-character prompt reads a few thousand."""


def embedding_text(
    text: str, max_pieces: int = MODEL_WINDOW_PIECES, head_pieces: int = DEFAULT_HEAD_PIECES
) -> str:
    """The text to embed for ``text``: unchanged when it fits the model's window, else a head and a tail.

    Long prompts (few-shot examples) put the actual question at the end, and the model would
    silently drop everything past its window, so the middle is cut instead: the first
    ``head_pieces`` and as many trailing pieces as fit, joined by ``CLIP_SEPARATOR``. Sizes use
    :func:`estimate_word_pieces`, scaled by ``ESTIMATE_SAFETY`` so the result fits the real
    tokenizer. Every request embeds through this function, so cache and classifier see one text.
    """
    return clip_in_windows(text, max_pieces, head_pieces, FIRST_WINDOW_CHARS)


def _budget(max_pieces: int, head_pieces: int) -> int:
    budget = int((max_pieces - 2) / ESTIMATE_SAFETY)
    if head_pieces < 0 or head_pieces + _SEPARATOR_PIECES >= budget:
        raise ValueError(f"head_pieces={head_pieces} leaves no room for a tail in {budget} pieces")
    return budget


def _spans(text: str, start: int, end: int) -> list[tuple[int, int, int]]:
    return [(m.start(), m.end(), _estimate_pieces(m.group())) for m in _PIECE.finditer(text, start, end)]


def _joined(text: str, head_end: int, tail_start: int) -> str:
    return text[:head_end].rstrip() + CLIP_SEPARATOR + text[max(tail_start, head_end) :].lstrip()


def clip_whole(text: str, max_pieces: int, head_pieces: int) -> str:
    """:func:`embedding_text` reading every piece of ``text``."""
    budget = _budget(max_pieces, head_pieces)
    if len(text) <= budget:  # an estimate never exceeds the character count
        return text
    spans = _spans(text, 0, len(text))
    if sum(cost for _, _, cost in spans) <= budget:
        return text
    head_end, head_used = _take(text, spans, head_pieces, from_end=False)
    tail_start, _ = _take(text, spans, budget - head_used - _SEPARATOR_PIECES, from_end=True)
    return _joined(text, head_end, tail_start)


def clip_in_windows(text: str, max_pieces: int, head_pieces: int, window: int) -> str:
    """:func:`clip_whole`'s answer from the pieces in a window at each end. A piece cut by a window's
    edge is left out; the windows grow until they hold all the pieces the clip takes and show that
    the text is over the budget, or until they meet (then the whole text is read)."""
    budget = _budget(max_pieces, head_pieces)
    while 2 * window < len(text):
        head = _spans(text, 0, window)
        if head and head[-1][1] == window:
            head.pop()  # may go on past the window
        tail_from = len(text) - window
        tail = _spans(text, tail_from, len(text))
        if tail and tail[0][0] == tail_from:
            tail.pop(0)  # may have begun before the window
        head_end, head_used = _take(text, head, head_pieces, from_end=False)
        tail_budget = budget - head_used - _SEPARATOR_PIECES
        tail_start, tail_used = _take(text, tail, tail_budget, from_end=True)
        # Over the budget for certain: the tail window alone holds more pieces than the whole may.
        if head_used == head_pieces and tail_used == tail_budget and sum(c for _, _, c in tail) > budget:
            return _joined(text, head_end, tail_start)
        window *= 4
    return clip_whole(text, max_pieces, head_pieces)


class EmbedderClosed(RuntimeError):
    """``embed()`` after ``aclose()``."""


class EmbedderBusy(RuntimeError):
    """``embed()`` while ``max_queue`` requests already wait: retry after ``retry_after_s``."""

    def __init__(self, waiting: int, retry_after_s: float, why: str = "is full") -> None:
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the embedding queue {why} ({waiting} requests waiting); retry in {retry_after_s:.2f}s"
        )


# A first guess at one batch's encode time, until one was measured.
INITIAL_BATCH_S = 0.05


@dataclass(slots=True)
class _Request:
    text: str
    future: asyncio.Future[Vector]
    enqueued_at: float


GROUP_SPREAD = 4
"""A batch's texts are encoded in groups, shortest first (``length_groups``), each text at most this
many times the characters of its group's shortest (or ``GROUP_FLOOR_CHARS``): a clipped long prompt
batched with short ones would make each cost as much as it, and the short ones get their vectors
before the long one is encoded."""
GROUP_FLOOR_CHARS = 256


class BatchingEmbedder:
    """Queue concurrent ``embed()`` calls and encode them together in one ``encode()`` call."""

    def __init__(
        self,
        embedder: TextEmbedder,
        max_batch: int = 64,
        max_wait_us: int = 2000,
        max_queue: int = 1024,
        max_queue_delay_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        long_text_chars: int = 0,
        thread_name: str = "tierwise-embed",
    ) -> None:
        """``max_queue_delay_s`` 0: only ``max_queue`` bounds the queue. ``clock`` times the encodes.
        ``long_text_chars`` 0: one queue; else texts longer than that go to a second batcher (the
        long lane, with the same bounds) whose thread encodes them beside this one's."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if max_wait_us < 0:
            raise ValueError(f"max_wait_us must not be negative, got {max_wait_us}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must not be negative, got {max_queue_delay_s}")
        if long_text_chars < 0:
            raise ValueError(f"long_text_chars must not be negative, got {long_text_chars}")
        self._embedder = embedder
        self._max_batch = max_batch
        self._max_wait_s = max_wait_us / 1_000_000
        self._max_queue = max_queue
        self._batch_time = RetryHint(INITIAL_BATCH_S, smoothing=0.2)  # one encode() call
        self._max_queue_delay_s = max_queue_delay_s
        self._clock = clock
        self._text_s: float | None = None  # moving average of an encode()'s time per text, once measured
        self._encoding = 0  # texts in the encode() call running now
        self._pending: list[_Request] = []
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        # One thread a lane: it keeps the default executor free for other blocking work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._long_text_chars = long_text_chars
        self._long_lane = (
            BatchingEmbedder(
                embedder,
                max_batch,
                max_wait_us,
                max_queue,
                max_queue_delay_s,
                clock,
                long_text_chars=0,
                thread_name=f"{thread_name}-long",
            )
            if long_text_chars
            else None
        )
        self.batches = 0
        self.encoded = 0
        self.dropped = 0  # requests cancelled while queued, never encoded
        self.delayed = 0  # requests refused by max_queue_delay_s

    @property
    def info(self) -> EmbedderInfo:
        return self._embedder.info

    def expected_wait_s(self) -> float:
        """How long a new request would wait for its encode() to start: the texts being encoded and
        those queued, at the recent time per text (0 until an encode() was timed)."""
        if self._text_s is None:
            return 0.0
        return (self._encoding + len(self._pending)) * self._text_s

    async def embed(self, text: str) -> Vector:
        """The L2-normalised float32 embedding of ``text`` (a row of ``encode([text])``)."""
        if self._closing:
            raise EmbedderClosed("the batching embedder is closed")
        if self._long_lane is not None and len(text) > self._long_text_chars:
            return await self._long_lane.embed(text)
        if len(self._pending) >= self._max_queue:
            self._drop_cancelled()
            if len(self._pending) >= self._max_queue:
                batches_ahead = math.ceil(len(self._pending) / self._max_batch)
                raise EmbedderBusy(len(self._pending), self._batch_time.after_s(batches_ahead))
        wait_s = self.expected_wait_s()
        if self._max_queue_delay_s and wait_s > self._max_queue_delay_s:
            self._drop_cancelled()
            wait_s = self.expected_wait_s()
            if wait_s > self._max_queue_delay_s:
                self.delayed += 1
                why = f"would delay it {wait_s * 1e3:.0f} ms, over {self._max_queue_delay_s * 1e3:.0f} ms"
                raise EmbedderBusy(len(self._pending), retry_after_s(wait_s), why)
        loop = asyncio.get_running_loop()
        request = _Request(text, loop.create_future(), loop.time())
        self._pending.append(request)
        self._arrived.set()
        if len(self._pending) >= self._max_batch:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="tierwise-embed-batcher")
        return await request.future

    async def aclose(self) -> None:
        """Encode what is queued, then stop; later ``embed()`` calls raise :class:`EmbedderClosed`."""
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)
        if self._long_lane is not None:
            await self._long_lane.aclose()

    async def _run(self) -> None:
        try:
            while self._pending or not self._closing:
                if not self._pending:
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                await self._wait_for_batch()
                self._drop_cancelled()
                if not self._pending:
                    continue
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                if len(self._pending) < self._max_batch:
                    self._full.clear()
                for group in length_groups(
                    batch, lambda request: len(request.text), GROUP_SPREAD, floor=GROUP_FLOOR_CHARS
                ):
                    live = self._live(group)  # some may have been cancelled while an earlier group encoded
                    if live:
                        await self._encode(live)
        except BaseException as exc:
            # Never leave a caller waiting for a batcher that has stopped.
            failure = exc if isinstance(exc, Exception) else EmbedderClosed("the embedding batcher stopped")
            for request in self._pending:
                if not request.future.done():
                    request.future.set_exception(failure)
            self._pending.clear()
            raise

    def _drop_cancelled(self) -> None:
        """Forget requests whose callers stopped waiting, so no pass is spent on them."""
        self._pending = self._live(self._pending)

    def _live(self, requests: list[_Request]) -> list[_Request]:
        """``requests`` whose callers still wait; the others are counted as dropped."""
        live = [request for request in requests if not request.future.done()]
        self.dropped += len(requests) - len(live)
        return live

    async def _wait_for_batch(self) -> None:
        if len(self._pending) >= self._max_batch or self._closing:
            return
        remaining = self._pending[0].enqueued_at + self._max_wait_s - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), remaining)

    async def _encode(self, batch: list[_Request]) -> None:
        texts = [request.text for request in batch]
        loop = asyncio.get_running_loop()
        started = self._clock()
        self._encoding = len(texts)
        try:
            vectors: Matrix = await loop.run_in_executor(self._executor, self._embedder.encode, texts)
            if vectors.shape != (len(texts), self.info.dim):
                raise RuntimeError(
                    f"embedder returned shape {vectors.shape} for {len(texts)} texts of dim {self.info.dim}"
                )
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            self._encoding = 0
        took = self._clock() - started
        self._batch_time.observe(took)
        per_text = took / len(texts)
        self._text_s = per_text if self._text_s is None else 0.8 * self._text_s + 0.2 * per_text
        self.batches += 1
        self.encoded += len(batch)
        for row, request in enumerate(batch):
            if not request.future.done():  # the caller may have been cancelled meanwhile
                request.future.set_result(np.array(vectors[row], dtype=np.float32, copy=True))
