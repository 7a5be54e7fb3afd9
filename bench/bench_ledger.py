"""What the spend ledger adds to a request, against no ledger, measured in the same run.

The service is the real one (``build_service``: budgets, tier health, policy,
token counting, pricing) with an in-process upstream that answers at once, so
the time measured is tierwise's own overhead. "Ledger on" does what the server
will do after ``Pipeline.complete`` returns: build the ``SpendRecord`` and call
``SpendLedger.record``; the background writer stores batches in SQLite.

Two levels, each with the ledger off and on in alternating rounds (medians of
the per-round means):

- pipeline: ``Pipeline.complete`` called directly; the smallest overhead
  there is, so the strictest ratio;
- gRPC: a real ``Complete`` call over loopback to a running ``TierwiseServer``
  (client in the same process), closer to a typical request's overhead, which
  in production also carries embedding, cache and classifier time.

Reported per request: wall clock and process CPU (all threads) while the
requests ran, then the CPU and wall time of storing what the writer still held
after an on-round; the cost of build + record per call, best case (a tight
loop) and in place (thread CPU measured inside the on-rounds, with the caches
a real request leaves). Wall-clock ratios need a quiet machine; the CPU figures
hold up better on a shared one.

Goal: request overhead with the ledger on within 5% of off.

    .venv/bin/python bench/bench_ledger.py [--requests 400] [--rounds 10] [--fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierwise.router.config import Config, parse_config
from tierwise.router.ledger.builder import SpendRecordBuilder
from tierwise.router.ledger.spend_ledger import SpendLedger
from tierwise.router.ledger.sqlite_sink import SqliteSpendSink
from tierwise.router.outcome import Completion
from tierwise.router.providers.base import ChatCall, ChatResult, StreamEvent, StreamFinish
from tierwise.router.server import TierwiseServer
from tierwise.router.service import Service, build_service
from tierwise.router.types import ChatMessage, RequestSpec, TokenUsage
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

ANSWER = "The capital of France is Paris."
SYSTEM = "You are a concise assistant for a travel booking site."
QUESTION = "What is the capital of France, and what is it famous for? Answer in one line."
SPEC = RequestSpec(
    tenant="acme",
    messages=(ChatMessage("system", SYSTEM), ChatMessage("user", QUESTION)),
    feature="faq",
    user="user-42",
    metadata={"team": "search", "environment": "prod"},
)
REQUEST = pb.CompleteRequest(
    messages=[pb.ChatMessage(role="system", content=SYSTEM), pb.ChatMessage(role="user", content=QUESTION)],
    feature="faq",
    user="user-42",
    metadata={"team": "search", "environment": "prod"},
)


class InstantProvider:
    """Answers at once with reported usage: the upstream takes no time, so overhead is all there is."""

    kind = "openai"

    async def complete(self, call: ChatCall) -> ChatResult:
        return ChatResult(ANSWER, "stop", TokenUsage(input_tokens=48, output_tokens=9), call.model)

    async def stream(self, call: ChatCall) -> AsyncIterator[StreamEvent]:
        yield StreamFinish("stop", TokenUsage(input_tokens=48, output_tokens=0), call.model)

    async def aclose(self) -> None:
        return None


def bench_config(store: Path) -> Config:
    tier = {"provider": "openai", "base_url": "http://127.0.0.1:1", "max_output_tokens": 512}
    small = {"input_per_mtok": "0.15", "output_per_mtok": "0.6"}
    large = {"input_per_mtok": "2.5", "output_per_mtok": "10"}
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0},
            "auth": {"mode": "none", "tenant": "acme"},
            "tiers": [
                {**tier, "name": "small", "model": "gpt-4o-mini", "price": small},
                {**tier, "name": "large", "model": "gpt-4o", "price": large},
            ],
            "store": {"path": str(store)},
            "cache": {"enabled": False},
            # The service's own ledger stays off: the Recorder below adds the bench's, on and off by round.
            "ledger": {"enabled": False},
            "logging": {"level": "WARNING"},
        }
    )


async def instant_service(config: Config) -> Service:
    service = await build_service(config)
    for name, provider in list(service.providers.items()):
        await provider.aclose()
        service.providers[name] = InstantProvider()  # the pipeline holds this same mapping
    return service


class Recorder:
    """Wraps ``Pipeline.complete`` the way the server will: record each completion when on."""

    def __init__(self, service: Service, builder: SpendRecordBuilder, ledger: SpendLedger) -> None:
        self.on = False
        self.calls = 0
        self.cpu_s = 0.0  # this thread's CPU inside build + record, in place (caches as they are)
        inner = service.pipeline.complete

        async def complete(spec: RequestSpec, request_id: str, **timing: Any) -> Completion:
            completion = await inner(spec, request_id, **timing)
            if self.on:
                t0 = time.thread_time()
                ledger.record(builder.for_completion(spec, completion))
                self.cpu_s += time.thread_time() - t0
                self.calls += 1
            return completion

        service.pipeline.complete = complete  # type: ignore[method-assign]


async def pipeline_round(service: Service, n: int, offset: int) -> None:
    clock = time.perf_counter
    for i in range(n):
        await service.pipeline.complete(SPEC, f"p{offset + i}", started=clock(), deadline=None)


def grpc_round(stub: pb_grpc.RouterStub) -> Callable[[Service, int, int], Awaitable[None]]:
    async def run(service: Service, n: int, offset: int) -> None:
        for _ in range(n):
            await stub.Complete(REQUEST)  # type: ignore[misc]  # the stubs describe the sync API

    return run


@dataclass(frozen=True)
class Comparison:
    """Microseconds per request, medians over rounds."""

    wall_off: float  # wall clock of the requests (the request path)
    wall_on: float
    cpu_off: float  # CPU of the whole process while the requests ran (all threads)
    cpu_on: float
    flush_cpu: float  # after an on-round: CPU of storing what the writer still held
    flush_wall: float


async def compare(
    run: Callable[[Service, int, int], Awaitable[None]],
    service: Service,
    recorder: Recorder,
    ledger: SpendLedger,
    requests: int,
    rounds: int,
) -> Comparison:
    """Rounds run off-on, on-off, ... so that drift falls on both sides alike."""
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    flush_cpu: list[float] = []
    flush_wall: list[float] = []
    for mode in (False, True):  # warm both paths
        recorder.on = mode
        await run(service, requests // 4, 10**9 + int(mode) * 10**8)
    await ledger.flush()
    for r in range(rounds):
        for mode in (False, True) if r % 2 == 0 else (True, False):
            recorder.on = mode
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await run(service, requests, r * 10**6 + int(mode) * 5 * 10**5)
            wall1, cpu1 = time.perf_counter(), time.process_time()
            wall[mode].append((wall1 - wall0) / requests * 1e6)
            cpu[mode].append((cpu1 - cpu0) / requests * 1e6)
            await ledger.flush()
            if mode:
                flush_wall.append((time.perf_counter() - wall1) / requests * 1e6)
                flush_cpu.append((time.process_time() - cpu1) / requests * 1e6)
    m = statistics.median
    return Comparison(m(wall[False]), m(wall[True]), m(cpu[False]), m(cpu[True]), m(flush_cpu), m(flush_wall))


def best_of(repeats: int, n: int, fn: Callable[[int], object]) -> float:
    """Microseconds per call, the best of ``repeats`` runs of ``n`` calls (noise only adds time)."""
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


async def per_call(service: Service, builder: SpendRecordBuilder, ledger: SpendLedger) -> tuple[float, float]:
    """Microseconds per call: building the record, and ``record`` alone."""
    completion = await service.pipeline.complete(SPEC, "probe", started=time.perf_counter(), deadline=None)
    record = builder.for_completion(SPEC, completion)
    records = [replace(record, request_id=f"micro-{i}") for i in range(5 * 2000)]
    build_us = best_of(5, 2000, lambda i: builder.for_completion(SPEC, completion))
    record_us = best_of(5, 2000, lambda i: ledger.record(records[i]))
    return build_us, record_us


def report(level: str, c: Comparison) -> None:
    wall, cpu = c.wall_on / c.wall_off, c.cpu_on / c.cpu_off
    print(
        f"  {level:<9} wall {c.wall_off:7.1f} -> {c.wall_on:7.1f} ({(wall - 1) * 100:+5.1f}%)"
        f" | CPU {c.cpu_off:7.1f} -> {c.cpu_on:7.1f} ({(cpu - 1) * 100:+5.1f}%)"
        f" | then storing the rest: CPU {c.flush_cpu:5.1f}, wall {c.flush_wall:5.1f}"
    )


async def main(requests: int, rounds: int, fsync: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp))
        service = await instant_service(config)
        builder = SpendRecordBuilder(config, b"bench-salt")
        sink = SqliteSpendSink(Path(tmp) / "spend.sqlite3")
        ledger = SpendLedger(Path(tmp) / "ledger", sink, fsync_journal=fsync)
        await ledger.start()
        recorder = Recorder(service, builder, ledger)
        server = TierwiseServer(service)
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RouterStub(channel)
            pipeline = await compare(pipeline_round, service, recorder, ledger, requests, rounds)
            via_grpc = await compare(grpc_round(stub), service, recorder, ledger, requests, rounds)
        recorder.on = False
        build_us, record_us = await per_call(service, builder, ledger)
        await ledger.flush()
        stored = sum(t.requests for t in await ledger.totals(0, 2e9))
        await ledger.aclose()
        await server.stop(grace_s=1)

    added = build_us + record_us
    print(
        f"spend ledger overhead: {rounds} rounds x {requests} requests per mode and level, fsync_journal={fsync}"
    )
    print("  us per request, ledger off -> on, medians of alternating rounds:")
    report("pipeline", pipeline)
    report("gRPC", via_grpc)
    print(
        f"  per call, best of 5: for_completion {build_us:.1f} us + record {record_us:.1f} us = {added:.1f} us"
    )
    in_place = recorder.cpu_s / recorder.calls * 1e6
    print(f"  in place (thread CPU of build + record inside the on-rounds): {in_place:.1f} us/request")
    for level, c in (("pipeline", pipeline), ("gRPC", via_grpc)):
        print(
            f"  against the {level} CPU per request (off): best case {added / c.cpu_off * 100:5.1f}%,"
            f" in place {in_place / c.cpu_off * 100:5.1f}%"
        )
    print(f"  records stored: {stored}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fsync", action="store_true", help="fsync the journal on every record")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds, args.fsync))
