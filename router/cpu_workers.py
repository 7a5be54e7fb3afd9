"""A bounded pool of threads for the CPU-bound steps of requests, off the event loop.

Token counting (tiktoken), the classifier's features, its ONNX call and kNN vote take from
microseconds to a few hundred milliseconds (a 1M-character prompt). On the event loop they would
stall every other request for that long; here they run in ``threads`` threads (tiktoken and
onnxruntime release the GIL while they work). At most ``max_queue`` jobs wait for a thread: past
that a new one is refused at once with :class:`WorkersBusy` (RESOURCE_EXHAUSTED and a retry hint),
never queued without bound. A job whose caller is cancelled before a thread takes it never runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from tierwise.cache.backoff import RetryHint
from tierwise.router.errors import WorkersBusy

P = ParamSpec("P")
T = TypeVar("T")

INITIAL_JOB_S = 0.005  # a first guess at a job's time, until one was measured


PROCESS_NICENESS = 10


def _lower_priority() -> None:
    """The worker process yields the CPU to the server's own: a huge prompt waits, not everyone."""
    if hasattr(os, "nice"):
        os.nice(PROCESS_NICENESS)


class CpuWorkers:
    def __init__(self, threads: int, max_queue: int) -> None:
        if threads < 1 or max_queue < 1:
            raise ValueError(f"threads and max_queue must be at least 1, got {threads} and {max_queue}")
        self._threads = threads
        self._limit = threads + max_queue  # running and waiting
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tierwise-cpu")
        self._process: ProcessPoolExecutor | None = None
        self._in_flight = 0  # submitted and not finished (a cancelled job that never ran is finished)
        self._job_time = RetryHint(INITIAL_JOB_S, smoothing=0.1)  # from submission to end
        self.refused = 0
        self.skipped = 0  # jobs cancelled before a thread took them, never run

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def retry_after_s(self) -> float:
        """About how long until the jobs ahead of a new one are done: the recent time from a job's
        submission to its end (waiting included)."""
        return self._job_time.after_s()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a worker thread; :class:`WorkersBusy` when the queue is full."""
        self._check_room()
        return await self._submit(self._executor, fn, *args, **kwargs)

    async def run_isolated(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the worker process (started on first use), under the same bound:
        for pure-Python work on a huge input, which would hold the GIL (and so stall the event loop)
        in a thread. ``fn``, its arguments and its result cross by pickle."""
        self._check_room()
        if self._process is None:
            # spawn, not fork: this process runs gRPC's and onnxruntime's threads.
            self._process = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_lower_priority
            )
        try:
            return await self._submit(self._process, fn, *args, **kwargs)
        except BrokenProcessPool:
            # The worker process died (killed, out of memory): the next call starts a fresh one.
            self._process.shutdown(wait=False, cancel_futures=True)
            self._process = None
            raise

    def _check_room(self) -> None:
        if self._in_flight >= self._limit:
            self.refused += 1
            waiting = self._in_flight - self._threads
            raise WorkersBusy(
                f"server busy: {waiting} requests wait for a worker (server.work_queue);"
                f" retry in {self.retry_after_s():.2f}s",
                self.retry_after_s(),
            )

    async def _submit(self, executor: Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future: Future[T] = executor.submit(fn, *args, **kwargs)
        submitted = time.perf_counter()
        self._in_flight += 1

        def finished(done: Future[T]) -> None:
            ran = None if done.cancelled() else time.perf_counter() - submitted
            loop.call_soon_threadsafe(self._finished, ran)

        future.add_done_callback(finished)
        # Cancelling the caller cancels ``future``: a job no thread has taken yet is dropped.
        return await asyncio.wrap_future(future, loop=loop)

    def _finished(self, ran_s: float | None) -> None:
        self._in_flight -= 1
        if ran_s is None:
            self.skipped += 1
        else:
            self._job_time.observe(ran_s)  # from submission: the wait counts too

    async def aclose(self) -> None:
        """Drop the jobs no thread has taken and wait for the running ones."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        if self._process is not None:
            await asyncio.to_thread(self._process.shutdown, wait=True, cancel_futures=True)
