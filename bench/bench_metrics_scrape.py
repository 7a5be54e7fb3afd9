"""Does scraping /metrics and /dashboard slow down another tenant's requests? Measured in one run.

A real ``TierwiseServer`` runs in a child process (API keys, the SQLite spend ledger, a metrics
port with a scrape key; its upstream answers at once, so the time measured is tierwise's own).
This process drives it: tenant ``flood`` sends requests with a new ``feature`` name each from
``--flood`` concurrent callers, tenant ``quiet`` sends one request at a time and its latency is
what is measured. Rounds rotate between no scraper, a scraper fetching ``/metrics`` (scrape
key), and one loading ``/dashboard`` (admin key, the last hour), each ``--scrape-interval`` after
the last answer (0.5 s: thirty times the rate of a 15 s scrape interval; 0: back to back);
quiet's p99 under each over its p99 without is the ratio. Goal: within 2x while ``/metrics``
is scraped.

``--max-features`` sets ``metrics.max_features`` (default 20, the config default); a large value
(``--max-features 100000``) lets every flooded feature have its own series, as before the bound,
to see what encoding off the event loop does on its own.

    .venv/bin/python bench/bench_metrics_scrape.py [--seconds 15] [--rounds 2] [--flood 8] [--max-features 20]
        [--scrape-interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import child_server
from timing import p50_p99

from tierwise.router.auth import sha256_hex
from tierwise.training.process import free_port
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

KEYS = {"flood": "bench-key-flood", "quiet": "bench-key-quiet", "ops": "bench-key-ops"}
SCRAPE_KEY = "bench-scrape-key"
MODES = ("none", "metrics", "dashboard")


def write_config(root: Path, max_features: int) -> Path:
    return child_server.write_config(
        root,
        server={"host": "127.0.0.1", "port": 0, "metrics_port": free_port()},
        auth={
            "api_keys": [
                {"key_sha256": sha256_hex(key), "tenant": tenant, "admin": tenant == "ops"}
                for tenant, key in KEYS.items()
            ]
        },
        metrics={"max_features": max_features, "scrape_key_sha256": sha256_hex(SCRAPE_KEY)},
    )


def request(feature: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        messages=[pb.ChatMessage(role="user", content=f"Summarise the notes for {feature} in one line.")],
        feature=feature,
        tier="small",
    )


def auth(tenant: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[tenant]}"),)


@dataclass
class Scrapes:
    metrics_s: list[float] = field(default_factory=list)
    dashboard_s: list[float] = field(default_factory=list)
    metrics_bytes: int = 0
    series: int = 0


async def flood(stub: pb_grpc.RouterStub, stop: asyncio.Event, counter: list[int]) -> None:
    while not stop.is_set():
        counter[0] += 1
        await stub.Complete(request(f"feature-{counter[0]}"), metadata=auth("flood"))  # type: ignore[misc]


async def quiet(stub: pb_grpc.RouterStub, stop: asyncio.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await stub.Complete(request("checkout"), metadata=auth("quiet"))  # type: ignore[misc]
        latencies.append(time.perf_counter() - t0)
        await asyncio.sleep(0.005)


async def scrape(base: str, mode: str, interval_s: float, stop: asyncio.Event, scrapes: Scrapes) -> None:
    async with httpx.AsyncClient(timeout=120) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            if mode == "metrics":
                response = await client.get(
                    f"{base}/metrics", headers={"Authorization": f"Bearer {SCRAPE_KEY}"}
                )
                scrapes.metrics_s.append(time.perf_counter() - t0)
                scrapes.metrics_bytes = len(response.content)
                scrapes.series = sum(1 for line in response.text.splitlines() if line and line[0] != "#")
            else:
                response = await client.get(
                    f"{base}/dashboard", params={"since": "1h"}, auth=("ops", KEYS["ops"])
                )
                scrapes.dashboard_s.append(time.perf_counter() - t0)
            response.raise_for_status()
            await asyncio.sleep(interval_s)


async def one_round(
    stub: pb_grpc.RouterStub,
    args: argparse.Namespace,
    base: str,
    seconds: float,
    mode: str,
    counter: list[int],
) -> tuple[list[float], Scrapes]:
    stop = asyncio.Event()
    latencies: list[float] = []
    scrapes = Scrapes()
    tasks = [asyncio.create_task(flood(stub, stop, counter)) for _ in range(args.flood)]
    tasks.append(asyncio.create_task(quiet(stub, stop, latencies)))
    if mode != "none":
        tasks.append(asyncio.create_task(scrape(base, mode, args.scrape_interval, stop, scrapes)))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    return latencies, scrapes


def ms(samples: list[float]) -> str:
    if not samples:
        return "none"
    p50, p99 = p50_p99(samples)
    return f"p50 {p50 * 1e3:8.2f} ms  p99 {p99 * 1e3:8.2f} ms  max {max(samples) * 1e3:8.2f} ms  n={len(samples)}"


async def measure(args: argparse.Namespace, ports: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{ports['metrics_port']}"
    quiet_s: dict[str, list[float]] = {mode: [] for mode in MODES}
    scrapes = Scrapes()
    counter = [0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['port']}") as channel:
        stub = pb_grpc.RouterStub(channel)
        await one_round(stub, args, base, 2, "none", counter)  # warm up
        for r in range(args.rounds):
            # Each mode in turn, the order reversed every other round so that drift falls on all alike.
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                latencies, seen = await one_round(stub, args, base, args.seconds, mode, counter)
                quiet_s[mode] += latencies
                scrapes.metrics_s += seen.metrics_s
                scrapes.dashboard_s += seen.dashboard_s
                if seen.series:
                    scrapes.metrics_bytes, scrapes.series = seen.metrics_bytes, seen.series
    print(
        f"metrics scrape bench: {args.rounds} rounds x {args.seconds:g} s per mode, {args.flood} flooding callers,"
        f" metrics.max_features={args.max_features}, {counter[0]} distinct flooded features,"
        f" a scrape every {args.scrape_interval:g} s after the last one"
    )
    print(f"  quiet tenant Complete, no scraper:        {ms(quiet_s['none'])}")
    print(f"  quiet tenant Complete, /metrics scraped:  {ms(quiet_s['metrics'])}")
    print(f"  quiet tenant Complete, /dashboard loaded: {ms(quiet_s['dashboard'])}")
    print(f"  /metrics scrape:                          {ms(scrapes.metrics_s)}")
    print(f"  /dashboard page:                          {ms(scrapes.dashboard_s)}")
    print(f"  last /metrics: {scrapes.metrics_bytes / 1e3:.1f} KB, {scrapes.series} series")
    baseline = p50_p99(quiet_s["none"])[1]
    for mode in MODES[1:]:
        print(
            f"  quiet p99 ratio, {mode} / no scraper: {p50_p99(quiet_s[mode])[1] / baseline:.2f} (goal <= 2)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flood", type=int, default=8, help="concurrent callers of the flooding tenant")
    parser.add_argument("--max-features", type=int, default=20)
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=0.5,
        help="pause after each scrape (0: back to back)",
    )
    child_server.run(__file__, parser, lambda args, root: write_config(root, args.max_features), measure)
