"""Route through a real server, each figure a ratio to a baseline measured in the same run.

One ``tierwise serve`` process per embedder backend (``--embedder torch onnx``: old and new side by
side), each with the classifier policy (a model trained on a RouterBench slice), the cache on (every
Route is a miss: Route never stores) and ``--threads`` embedding threads; the bare ``encode()``
baselines run in this process with the same thread count while the servers are idle. Route never
calls a tier, so the tiers point at an address nothing answers. Per backend and repeat:

1. Route p50 on a cache miss, one call at a time, short (~25 word pieces) and long (~256) prompts,
   over the bare ``encode()`` p50 of the same text, back to back; the short one also over the bare
   ``encode()`` paced as one Route at a time leaves the encoder (idle between calls for the time the
   rest of a Route takes): an encode after a pause runs slower on a shared CPU. With both backends,
   the short Route's p50 onnx / torch, and beside it the short bare encode's;
2. Route/s with 64 calls in flight over batched ``encode()`` texts/s (64 short texts per call);
3. short Routes (8 in flight) while a 1M-character prompt is routed again and again: their p99 over
   their p99 without it;
4. offered load of 4x the Route/s of 2, open loop: admitted p99 over the unloaded p99 of 1 and over
   the p99 at 64 in flight of 2, the share refused with RESOURCE_EXHAUSTED (and any other failure),
   the server's RSS before and at most. ``--max-queue`` sets the servers' queue bounds
   (``cache.max_queue``, ``server.work_queue``), ``--max-queue-delay-ms`` the embedding queue's
   delay bound (``cache.max_queue_delay_ms``), ``--long-text-chars`` where texts go to the embedder's
   long lane (``cache.long_text_chars``; 0: one queue).

Repeats alternate the backends; with ``--repeats`` above 1 each figure is the mean with its spread
(min-max). Needs the RouterBench data (``../shared/data`` or ``--data``) unless ``--registry`` names
a trained registry for tiers small and large.

    .venv/bin/python bench/bench_route.py [--embedder torch onnx] [--threads 1] [--repeats 1]
        [--seconds 2] [--calls 50] [--max-queue N] [--max-queue-delay-ms MS] [--long-text-chars N]
        [--parts huge ...]
        [--export DIR] [--registry DIR] [--data DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.soak import rss_bytes
from bench.timing import p50_p99
from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import Matrix, TextEmbedder
from tierwise.router.auth import sha256_hex
from tierwise.router.errors import RETRY_AFTER_KEY
from tierwise.training.process import free_port, stop_process, wait_serving
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

KEY = "bench-route-key"
METADATA = (("authorization", f"Bearer {KEY}"),)
SHORT = "How do I reset the password of my account when the recovery email address no longer works?"
BATCH = [f"How do I configure feature number {i} of the product for my team?" for i in range(64)]
HUGE_CHARS = 1_000_000
CALL_TIMEOUT_S = 10.0
PARTS = ("throughput", "huge", "load")


def long_text() -> str:
    """About 256 word pieces: the longest text the model reads whole (``embedding_text`` keeps it)."""
    sentences = [
        f"Example {i}: the invoice for order {1000 + i} was paid late, so the customer asked for a refund."
        for i in range(60)
    ]
    text = ""
    for sentence in sentences:
        longer = f"{text} {sentence}".strip()
        if embedding_text(longer) != longer:
            break
        text = longer
    return text + " Which orders were refunded?"


def huge_text() -> str:
    filler = "The quarterly report lists revenue, costs and the remarks of every regional office. "
    question = "\n\nWhich office reported the largest growth?"
    return (filler * (HUGE_CHARS // len(filler) + 1))[: HUGE_CHARS - len(question)] + question


def route_request(text: str) -> pb.RouteRequest:
    return pb.RouteRequest(messages=[pb.ChatMessage(role="user", content=text)], feature="bench")


@dataclass
class Figures:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def show(self, name: str, unit: str = "") -> str:
        samples = self.values.get(name, [])
        if not samples:
            return "n/a"
        mean = statistics.fmean(samples)
        if len(samples) == 1:
            return f"{mean:.3g}{unit}"
        return f"{mean:.3g}{unit} ({min(samples):.3g}-{max(samples):.3g})"


# -- the servers ---------------------------------------------------------------------------------------


def server_config(
    workdir: Path,
    registry: Path,
    embedder: str,
    export: Path,
    threads: int,
    max_queue: int | None = None,
    max_queue_delay_ms: float | None = None,
    long_text_chars: int | None = None,
) -> dict[str, object]:
    queues = {} if max_queue is None else {"work_queue": max_queue}
    delay = {} if max_queue_delay_ms is None else {"max_queue_delay_ms": max_queue_delay_ms}
    lanes = {} if long_text_chars is None else {"long_text_chars": long_text_chars}
    return {
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "metrics_port": 0,
            "grace_period_s": 2,
            **queues,
        },
        "auth": {"api_keys": [{"key_sha256": sha256_hex(KEY), "tenant": "bench"}]},
        "tiers": [
            {"name": name, "provider": "openai", "base_url": "http://127.0.0.1:1/v1", "model": model}
            for name, model in (("small", "small-model"), ("large", "large-model"))
        ],
        "routing": {"policy": "classifier", "classifier": {"registry": str(registry), "watch_interval_s": 0}},
        "store": {"kind": "embedded", "path": str(workdir / "var")},
        "cache": {
            "embedder": embedder,
            "onnx_embedder_dir": str(export),
            "torch_threads": threads,
            **({} if max_queue is None else {"max_queue": max_queue}),
            **delay,
            **lanes,
        },
        "limits": {"max_content_chars": HUGE_CHARS, "max_total_chars": HUGE_CHARS},
        "logging": {"level": "ERROR"},
    }


@dataclass
class Server:
    embedder: str
    process: subprocess.Popen[bytes]
    target: str


def start_server(
    workdir: Path, registry: Path, embedder: str, export: Path, threads: int, args: argparse.Namespace
) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    config = server_config(
        workdir,
        registry,
        embedder,
        export,
        threads,
        args.max_queue,
        args.max_queue_delay_ms,
        args.long_text_chars,
    )
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    target = f"127.0.0.1:{config['server']['port']}"  # type: ignore[index]
    process = subprocess.Popen(
        [sys.executable, "-m", "tierwise.training.cli", "serve", "--config", str(path)]
    )
    wait_serving(target, process)
    return Server(embedder, process, target)


# -- the client ----------------------------------------------------------------------------------------


async def timed_route(stub: pb_grpc.RouterStub, request: pb.RouteRequest) -> tuple[float, str, float]:
    """Seconds, the status code's name ("OK" when it answered) and the retry hint (s, 0 if none)."""
    start = time.perf_counter()
    try:
        await stub.Route(request, metadata=METADATA, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return time.perf_counter() - start, exc.code().name, retry_hint_s(exc)
    return time.perf_counter() - start, "OK", 0.0


async def sequential(stub: pb_grpc.RouterStub, text: str, calls: int) -> list[float]:
    request = route_request(text)
    for _ in range(5):  # warm-up
        await timed_route(stub, request)
    return [(await timed_route(stub, request))[0] for _ in range(calls)]


def retry_hint_s(exc: grpc.aio.AioRpcError) -> float:
    """The server's ``retry-after-ms`` (0 without one)."""
    for key, value in cast(Sequence[tuple[str, str]], exc.trailing_metadata() or ()):
        if key == RETRY_AFTER_KEY:
            return float(value) / 1000
    return 0.0


async def closed_loop(
    stub: pb_grpc.RouterStub, text: str, in_flight: int, seconds: float
) -> tuple[list[float], Counter[str]]:
    """``in_flight`` callers, each sending its next call when its last one answered; a refused
    caller waits the server's retry hint first, as a well-behaved client does."""
    request = route_request(text)
    until = time.perf_counter() + seconds
    latencies: list[float] = []
    codes: Counter[str] = Counter()

    async def worker() -> None:
        while time.perf_counter() < until:
            elapsed, code, hint_s = await timed_route(stub, request)
            codes[code] += 1
            if code == "OK":
                latencies.append(elapsed)
            elif hint_s:
                await asyncio.sleep(min(hint_s, max(0.0, until - time.perf_counter())))

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies, codes


async def with_huge_prompt(stub: pb_grpc.RouterStub, seconds: float) -> tuple[list[float], Counter[str]]:
    """Short Routes (8 in flight) while one 1M-character Route after another is in flight."""
    stop = asyncio.Event()
    huge = route_request(huge_text())
    huge_codes: Counter[str] = Counter()

    async def keep_huge() -> None:
        while not stop.is_set():
            _, code, hint_s = await timed_route(stub, huge)
            huge_codes[code] += 1
            await asyncio.sleep(hint_s)

    background = asyncio.create_task(keep_huge())
    await asyncio.sleep(0.2)  # the first one is in flight
    try:
        latencies, codes = await closed_loop(stub, SHORT, 8, seconds)
    finally:
        stop.set()
        await background
    return latencies, codes + Counter({f"huge {k}": v for k, v in huge_codes.items()})


async def offered(
    stub: pb_grpc.RouterStub, rate: float, seconds: float, pid: int
) -> tuple[list[float], Counter[str], int]:
    """Open loop: ``rate`` calls/s whatever the answers; (admitted latencies, codes, peak RSS)."""
    request = route_request(SHORT)
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    peak = rss_bytes(pid)
    tasks: list[asyncio.Task[tuple[float, str, float]]] = []
    start = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) < start + seconds:
        due = int((now - start) * rate)
        for _ in range(due - sent):
            tasks.append(asyncio.create_task(timed_route(stub, request)))
        sent = max(sent, due)
        peak = max(peak, rss_bytes(pid))
        await asyncio.sleep(0.005)
    for elapsed, code, _ in await asyncio.gather(*tasks):
        codes[code] += 1
        if code == "OK":
            latencies.append(elapsed)
    return latencies, codes, max(peak, rss_bytes(pid))


# -- the baselines -------------------------------------------------------------------------------------


def load_embedder(name: str, export: Path, threads: int) -> TextEmbedder:
    if name == "onnx":
        from tierwise.cache.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(export, "cpu", threads=threads)
    import torch

    from tierwise.cache.embedder import SentenceEmbedder

    torch.set_num_threads(threads)
    return SentenceEmbedder(device="cpu")


def encode_p50(
    encode: Callable[[list[str]], Matrix], texts: list[str], calls: int, gap_s: float = 0.0
) -> float:
    """p50 of ``encode(texts)``, back to back, or with the encoder idle ``gap_s`` before each call as
    serving one call at a time leaves it between requests: on these machines an encode that follows
    a pause runs slower than back to back (its weights and caches have gone cold)."""
    for _ in range(5):
        encode(texts)
    samples = []
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)
        start = time.perf_counter()
        encode(texts)
        samples.append(time.perf_counter() - start)
    return p50_p99(samples)[0]


# -- one repeat ----------------------------------------------------------------------------------------


async def measure(server: Server, embedder: TextEmbedder, args: argparse.Namespace, figures: Figures) -> None:
    name, long = server.embedder, long_text()
    encode_short = encode_p50(embedder.encode, [SHORT], args.calls)
    encode_long = encode_p50(embedder.encode, [long], args.calls)
    batch_rate = len(BATCH) / encode_p50(embedder.encode, BATCH, max(10, args.calls // 10))
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb_grpc.RouterStub(channel)
        short_samples = await sequential(stub, SHORT, args.calls)
        short_p50, short_p99 = p50_p99(short_samples)
        long_p50 = p50_p99(await sequential(stub, long, args.calls))[0]
        figures.add(f"{name} encode short p50 ms", encode_short * 1e3)
        figures.add(f"{name} route short p50 ms", short_p50 * 1e3)
        figures.add(f"{name} route long p50 ms", long_p50 * 1e3)
        figures.add(f"{name} route/encode short", short_p50 / encode_short)
        figures.add(f"{name} route/encode long", long_p50 / encode_long)
        # Paced by the rest of a Route: the encode a sequential Route pays, so Route over it is the server's share.
        paced = encode_p50(embedder.encode, [SHORT], args.calls, max(0.0, short_p50 - encode_short))
        figures.add(f"{name} encode short paced / back to back", paced / encode_short)
        figures.add(f"{name} route/paced encode short", short_p50 / paced)

        codes, loud_codes = Counter[str](), Counter[str]()
        if "huge" in args.parts:
            # Warm-up: the first prompt over ISOLATE_CHARS starts the server's worker process (about a
            # second of CPU, once per server), which is not what a huge prompt in flight costs.
            await timed_route(stub, route_request(huge_text()))
            quiet, _ = await closed_loop(stub, SHORT, 8, args.seconds)
            loud, loud_codes = await with_huge_prompt(stub, args.seconds)
            figures.add(f"{name} short p99 with 1M prompt / without", p50_p99(loud)[1] / p50_p99(quiet)[1])
            figures.add(f"{name} 1M prompts routed", float(loud_codes["huge OK"]))
        if "throughput" not in args.parts and "load" not in args.parts:
            return
        at_64, codes = await closed_loop(stub, SHORT, 64, args.seconds)
        route_rate = codes["OK"] / args.seconds
        figures.add(f"{name} route/s at 64", route_rate)
        figures.add(f"{name} encode texts/s batched", batch_rate)
        figures.add(f"{name} route/s over encode/s", route_rate / batch_rate)
        if "load" not in args.parts:
            return

        pid = server.process.pid
        idle_rss = rss_bytes(pid)
        admitted, load_codes, peak = await offered(stub, 4 * route_rate, args.seconds, pid)
        total = sum(load_codes.values())
        admitted_p99 = p50_p99(admitted)[1] if admitted else float("nan")
        figures.add(f"{name} admitted p99 / unloaded p99", admitted_p99 / short_p99)
        figures.add(f"{name} admitted p99 / p99 at 64", admitted_p99 / p50_p99(at_64)[1])
        figures.add(f"{name} shed share", load_codes["RESOURCE_EXHAUSTED"] / total)
        other = total - load_codes["OK"] - load_codes["RESOURCE_EXHAUSTED"]
        figures.add(f"{name} other failures share", other / total)
        figures.add(f"{name} offered route/s", total / args.seconds)
        figures.add(f"{name} rss idle MiB", idle_rss / 2**20)
        figures.add(f"{name} rss peak MiB", peak / 2**20)
        figures.add(f"{name} rss peak / idle", peak / idle_rss)
        print(
            f"  [{name}] codes at 64 in flight: {dict(codes)}; under 4x load: {dict(load_codes)};"
            f" with the 1M prompt: {dict(loud_codes)}",
            flush=True,
        )


def report(figures: Figures, backends: Sequence[str], args: argparse.Namespace) -> None:
    queues = "the config's" if args.max_queue is None else str(args.max_queue)
    if args.max_queue_delay_ms is not None:
        queues += f", embedding delay bound {args.max_queue_delay_ms:g} ms"
    if args.long_text_chars is not None:
        queues += f", long lane over {args.long_text_chars} characters (0: none)"
    print(
        f"\n== Route on a cache miss, classifier policy, {args.threads} embedding thread(s), queues {queues}, "
        f"{args.repeats} repeat(s); mean (min-max over repeats)"
    )
    rows = [
        ("bare encode() p50 short (ms)", "encode short p50 ms"),
        ("Route p50 short (ms)", "route short p50 ms"),
        ("Route p50 long (ms)", "route long p50 ms"),
        ("Route p50 / bare encode() p50, short", "route/encode short"),
        ("Route p50 / bare encode() p50, long", "route/encode long"),
        ("bare encode() short: paced as served / back to back", "encode short paced / back to back"),
        ("Route p50 / paced bare encode() p50, short", "route/paced encode short"),
        ("Route/s at 64 in flight", "route/s at 64"),
        ("batched encode() texts/s", "encode texts/s batched"),
        ("Route/s at 64 / batched encode() texts/s", "route/s over encode/s"),
        ("short p99 with a 1M-char prompt / without", "short p99 with 1M prompt / without"),
        ("1M-char prompts routed meanwhile", "1M prompts routed"),
        ("4x load: offered Route/s", "offered route/s"),
        ("4x load: admitted p99 / unloaded p99 (1 in flight)", "admitted p99 / unloaded p99"),
        ("4x load: admitted p99 / p99 at 64 in flight", "admitted p99 / p99 at 64"),
        ("4x load: share shed (RESOURCE_EXHAUSTED)", "shed share"),
        ("4x load: share failed otherwise", "other failures share"),
        ("server RSS idle (MiB)", "rss idle MiB"),
        ("server RSS peak under 4x load (MiB)", "rss peak MiB"),
        ("RSS peak / idle", "rss peak / idle"),
    ]
    print(f"  {'measure':46s}" + "".join(f"{b:>26s}" for b in backends))
    for label, key in rows:
        print(f"  {label:46s}" + "".join(f"{figures.show(f'{b} {key}'):>26s}" for b in backends))
    if "torch" in backends and "onnx" in backends:
        # Beside the Routes' ratio, the bare encodes': how much of it the backend alone accounts for.
        for label, key in (
            ("short Route p50", "route short p50 ms"),
            ("bare encode() short p50", "encode short p50 ms"),
        ):
            ratios = [
                o / t
                for o, t in zip(figures.values[f"onnx {key}"], figures.values[f"torch {key}"], strict=True)
            ]
            figures.values[f"onnx/torch {key}"] = ratios
            print(f"  {label + ', onnx / torch':46s}{figures.show(f'onnx/torch {key}'):>26s}")


def prepare_registry(args: argparse.Namespace, scratch: Path) -> Path:
    if args.registry is not None:
        return Path(args.registry)
    from tests.trained_registry import routerbench_slice
    from tierwise.classifier.registry import ModelRegistry
    from tierwise.router.config import parse_config
    from tierwise.router.service import shared_embedder
    from tierwise.training.demo.run import find_data
    from tierwise.training.train import train

    data = find_data(args.data)
    if data is None:
        sys.exit("bench_route: no RouterBench data found; pass --data, or --registry with a trained registry")
    config = parse_config(server_config(scratch, scratch, "torch", scratch, args.threads))
    version = train(
        routerbench_slice(data.parent, scratch / "slice"),
        config,
        scratch / "registry",
        score_col_map={"small": "mistralai/mistral-7b-chat", "large": "gpt-4-1106-preview"},
        seed=1,
        cache_dir=scratch / "embeddings",
        embedder=lambda: shared_embedder("cpu"),
    ).version
    ModelRegistry(scratch / "registry").promote(version, force=True)
    return scratch / "registry"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embedder", nargs="+", choices=("torch", "onnx"), default=["torch", "onnx"])
    parser.add_argument(
        "--threads", type=int, default=1, help="embedding threads, servers and baselines alike"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure besides the one-at-a-time latencies (1): throughput (2), huge (3), load (4;"
        " it offers 4x the throughput of 2, so it measures 2 too)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each timed load")
    parser.add_argument("--calls", type=int, default=50, help="sequential calls per p50")
    parser.add_argument(
        "--export", type=Path, help="an ONNX embedder export (default: export into a temp dir)"
    )
    parser.add_argument("--registry", type=Path, help="a trained registry for tiers small, large")
    parser.add_argument("--data", type=Path, help="the RouterBench CSV folder")
    parser.add_argument(
        "--max-queue",
        type=int,
        help="the servers' cache.max_queue and server.work_queue (default: the config's)",
    )
    parser.add_argument(
        "--max-queue-delay-ms",
        type=float,
        help="the servers' cache.max_queue_delay_ms (default: the config's)",
    )
    parser.add_argument(
        "--long-text-chars",
        type=int,
        help="the servers' cache.long_text_chars (default: the config's; 0: one embedding queue)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tierwise-bench-route-") as temp:
        scratch = Path(temp)
        export = args.export
        if export is None:
            from tierwise.training.embedder_export import export_embedder

            export = scratch / "onnx-embedder"
            export_embedder(export)
        registry = prepare_registry(args, scratch)
        servers = [start_server(scratch / b, registry, b, export, args.threads, args) for b in args.embedder]
        figures = Figures()
        try:
            embedders = {s.embedder: load_embedder(s.embedder, export, args.threads) for s in servers}
            for repeat in range(args.repeats):
                for server in servers if repeat % 2 == 0 else reversed(servers):
                    print(f"repeat {repeat + 1}: {server.embedder}", flush=True)
                    asyncio.run(measure(server, embedders[server.embedder], args, figures))
        finally:
            for server in servers:
                stop_process(server.process)
    report(figures, args.embedder, args)


if __name__ == "__main__":
    main()
