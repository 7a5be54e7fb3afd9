"""Soak: a fixed concurrency of real RouterBench traffic through a real ``tierwise serve`` for N minutes.

The replay upstream answers with what the recorded models said (no model is paid); the server is
the demo's configuration (four RouterBench tiers, length policy, cache on, embedded store) in its
own process. Each worker sends Complete calls back to back over one gRPC channel: prompts cycle
through the whole dataset in a fixed shuffled order; ``--refresh-share`` of them use
CACHE_MODE_REFRESH (an upstream call and a cache write on a prompt already cached, so the number
of entries stops growing once every prompt was seen while inserts go on) and ``--stream-share``
go through CompleteStream. ``--unique`` makes every prompt new (a recorded prompt with a request
number appended, which the replay upstream ignores when it looks the answer up), so the cache only
grows: with ``--cache-capacity`` it shows where the server's memory stops.

Reported, first minute against last minute (ratios): the server's resident memory (RSS, from
psutil when installed, else /proc/PID/status) and the p99 of tierwise's own latency per request
(``latency.overhead_ms`` of each response: total minus upstream time), with request and error
counts and the cache-hit share of each minute.

    .venv/bin/python bench/soak.py [--minutes 10] [--concurrency 32] [--data DIR] [--cache-capacity N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tierwise.router.types import ChatMessage
from tierwise.training.demo.run import demo_config, find_data
from tierwise.training.process import stop_process, wait_serving
from tierwise.training.replay import RecordedAnswers, ReplayLookupError, ReplayUpstream
from tierwise.training.routerbench import RouterBenchRow, load_rows
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

RSS_SAMPLE_S = 2.0
UNIQUE_MARK = "\n\n(soak request "
CALL_TIMEOUT_S = 60.0


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``: psutil when installed, else VmRSS from /proc (Linux)."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in /proc/{pid}/status") from None
    return int(psutil.Process(pid).memory_info().rss)


@dataclass
class Minute:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    hits: int = 0
    foreign_hits: int = 0  # hits that served another prompt's answer
    overhead_ms: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)


@dataclass
class Run:
    minutes: list[Minute]
    started: float

    def minute(self) -> Minute:
        index = int((time.monotonic() - self.started) // 60)
        return self.minutes[min(index, len(self.minutes) - 1)]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prompt_cycle(prompts: Sequence[str], seed: int, unique: bool) -> Iterator[str]:
    order = list(prompts)
    random.Random(seed).shuffle(order)
    sent = 0
    while True:
        for prompt in order:
            sent += 1
            yield f"{prompt}{UNIQUE_MARK}{sent})" if unique else prompt


class UniquePromptAnswers(RecordedAnswers):
    """Recorded answers that look a numbered prompt up by the recorded prompt it was made from."""

    def find_rows(self, prompt: str | Sequence[ChatMessage]) -> list[RouterBenchRow]:
        if isinstance(prompt, str):
            return super().find_rows(prompt.split(UNIQUE_MARK, 1)[0])
        return super().find_rows([ChatMessage(m.role, m.content.split(UNIQUE_MARK, 1)[0]) for m in prompt])


@dataclass(frozen=True)
class Answer:
    latency: pb.Latency
    content: str
    cached_model: str | None  # the model that produced a cached answer; None when not a hit


async def one_call(stub: pb_grpc.RouterStub, request: pb.CompleteRequest, stream: bool, key: str) -> Answer:
    metadata = (("authorization", f"Bearer {key}"),)
    if not stream:
        response = await stub.Complete(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        decision = response.decision
        return Answer(
            response.latency, response.content, decision.cached.model if decision.cache_hit else None
        )
    cached_model, parts = None, []
    async for chunk in stub.CompleteStream(request, metadata=metadata, timeout=CALL_TIMEOUT_S):
        body = chunk.WhichOneof("body")
        if body == "decision" and chunk.decision.cache_hit:
            cached_model = chunk.decision.cached.model
        elif body == "delta":
            parts.append(chunk.delta)
        elif body == "end":
            return Answer(chunk.end.latency, "".join(parts), cached_model)
    raise RuntimeError("the stream ended without its last chunk")


def foreign(answers: RecordedAnswers, prompt: str, answer: Answer) -> bool:
    """A hit whose text is not what its model said to this prompt: another prompt's answer."""
    assert answer.cached_model is not None
    try:
        return answers.answer(prompt, answer.cached_model).text != answer.content
    except ReplayLookupError:
        return True


@dataclass(frozen=True)
class Traffic:
    stub: pb_grpc.RouterStub
    key: str
    prompts: Iterator[str]
    answers: RecordedAnswers
    refresh_share: float
    stream_share: float


async def worker(traffic: Traffic, rng: random.Random, run: Run, until: float) -> None:
    while time.monotonic() < until:
        prompt = next(traffic.prompts)
        mode = pb.CACHE_MODE_REFRESH if rng.random() < traffic.refresh_share else pb.CACHE_MODE_USE
        request = pb.CompleteRequest(
            messages=[pb.ChatMessage(role="user", content=prompt)], feature="soak", cache_mode=mode
        )
        try:
            answer = await one_call(traffic.stub, request, rng.random() < traffic.stream_share, traffic.key)
        except grpc.aio.AioRpcError as exc:
            minute = run.minute()
            minute.requests += 1
            minute.errors[exc.code().name] += 1
            continue
        minute = run.minute()
        minute.requests += 1
        minute.overhead_ms.append(answer.latency.overhead_ms)
        if answer.cached_model is not None:
            minute.hits += 1
            minute.foreign_hits += foreign(traffic.answers, prompt, answer)


async def sample_rss(pid: int, run: Run, until: float) -> None:
    while time.monotonic() < until:
        run.minute().rss.append(rss_bytes(pid))
        await asyncio.sleep(RSS_SAMPLE_S)


async def drive(
    target: str,
    key: str,
    prompts: Sequence[str],
    answers: RecordedAnswers,
    args: argparse.Namespace,
    pid: int,
) -> Run:
    run = Run([Minute() for _ in range(args.minutes)], time.monotonic())
    until = run.started + args.minutes * 60
    async with grpc.aio.insecure_channel(target) as channel:
        traffic = Traffic(
            pb_grpc.RouterStub(channel),
            key,
            prompt_cycle(prompts, args.seed, args.unique),
            answers,
            args.refresh_share,
            args.stream_share,
        )
        workers = [worker(traffic, random.Random(args.seed + i), run, until) for i in range(args.concurrency)]
        await asyncio.gather(sample_rss(pid, run, until), *workers)
    return run


def report(run: Run, args: argparse.Namespace) -> None:
    print(
        f"\nsoak: {args.minutes} min, concurrency {args.concurrency}, refresh share {args.refresh_share}, "
        f"stream share {args.stream_share}, unique prompts {args.unique}, cache capacity "
        f"{args.cache_capacity or 'default'}"
    )
    print("overhead = latency.overhead_ms of each answer; foreign = hits that served another prompt's answer")
    print(
        f"{'minute':>6} {'requests':>9} {'errors':>7} {'hits':>6} {'foreign':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}"
    )
    for i, m in enumerate(run.minutes, 1):
        rss = m.rss[-1] / 2**20 if m.rss else float("nan")
        print(
            f"{i:>6} {m.requests:>9} {sum(m.errors.values()):>7} {m.hits:>6} {m.foreign_hits:>8} "
            f"{percentile(m.overhead_ms, 0.5):>8.2f} {percentile(m.overhead_ms, 0.99):>8.2f} {rss:>8.1f}"
        )
    first, last = run.minutes[0], run.minutes[-1]
    total = sum(m.requests for m in run.minutes)
    errors: Counter[str] = sum((m.errors for m in run.minutes), Counter())
    print(
        f"\nrequests: {total} ({total / (args.minutes * 60):.1f}/s), errors: {sum(errors.values())} {dict(errors)}"
    )
    if first.rss and last.rss:
        print(
            f"server RSS, end of first minute -> end of last minute: {first.rss[-1] / 2**20:.1f} -> "
            f"{last.rss[-1] / 2**20:.1f} MiB, growth ratio {last.rss[-1] / first.rss[-1]:.3f}"
        )
    p99_first, p99_last = percentile(first.overhead_ms, 0.99), percentile(last.overhead_ms, 0.99)
    print(
        f"overhead p99, first minute -> last minute: {p99_first:.2f} -> {p99_last:.2f} ms, "
        f"drift ratio {p99_last / p99_first:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--data", type=Path, default=None, help="RouterBench CSV folder")
    parser.add_argument("--refresh-share", type=float, default=0.5)
    parser.add_argument("--stream-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unique", action="store_true", help="every prompt new: the cache only grows")
    parser.add_argument(
        "--cache-capacity",
        type=int,
        default=None,
        help="cache.capacity of the server (default: the config's); a small one shows where memory stops",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="server state (default: a temporary folder)"
    )
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    data = find_data(args.data)
    if data is None:
        sys.exit("soak: no RouterBench data found; pass --data or set TIERWISE_DATA")
    rows = load_rows(data)
    prompts = sorted({row.prompt for row in rows})
    with tempfile.TemporaryDirectory(prefix="tierwise-soak-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        replay = ReplayUpstream(rows)
        if args.unique:
            replay.answers = UniquePromptAnswers(rows)
        upstream_url = replay.start()
        key = secrets.token_urlsafe(24)
        config = demo_config(workdir, upstream_url, {"soak": key}, "length")
        if args.cache_capacity is not None:
            config["cache"]["capacity"] = args.cache_capacity  # type: ignore[index]
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        target = f"127.0.0.1:{config['server']['port']}"  # type: ignore[index]
        server = subprocess.Popen(
            [sys.executable, "-m", "tierwise.training.cli", "serve", "--config", str(config_path)]
        )
        try:
            wait_serving(target, server)
            print(f"data: {data} ({len(prompts)} prompts), server pid {server.pid} on {target}")
            run = asyncio.run(drive(target, key, prompts, replay.answers, args, server.pid))
        finally:
            stop_process(server)
            replay.stop()
    report(run, args)


if __name__ == "__main__":
    main()
