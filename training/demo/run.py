"""``make demo``: real RouterBench traffic through a real tierwise server, and a report.

The replay upstream (recorded answers of real models) stands in for the paid
providers, so the run costs nothing and every number is reproducible. The
prompts are the held-out test split (by sample id), so a trained router is
never scored on what it learned from.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from tierwise.router.auth import sha256_hex
from tierwise.router.config import Price
from tierwise.router.pricing import cost_usd
from tierwise.router.tokens import TokenCounter
from tierwise.router.types import ChatMessage, TokenUsage
from tierwise.training.demo.http_leg import HTTP_SLICE, LegResult, Sent, drive_http, leg_table
from tierwise.training.demo.reconcile import ResponseCosts, ledger_costs, reconcile, scrape_costs
from tierwise.training.embedder_export import ensure_export
from tierwise.training.process import free_port, stop_process, wait_serving
from tierwise.training.routerbench import RouterBenchRow, csv_files, load_rows, split_of
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

console = Console()

# Demo tiers: RouterBench models at the list prices their recorded costs imply (USD per million tokens).
DEMO_TIERS: tuple[tuple[str, str, Price], ...] = (
    (
        "small",
        "mistralai/mistral-7b-chat",
        Price(input_per_mtok=Decimal("0.2"), output_per_mtok=Decimal("0.2")),
    ),
    (
        "medium",
        "mistralai/mixtral-8x7b-chat",
        Price(input_per_mtok=Decimal("0.6"), output_per_mtok=Decimal("0.6")),
    ),
    ("standard", "gpt-3.5-turbo-1106", Price(input_per_mtok=Decimal("1.0"), output_per_mtok=Decimal("2.0"))),
    ("large", "gpt-4-1106-preview", Price(input_per_mtok=Decimal("10"), output_per_mtok=Decimal("30"))),
)


def find_data(explicit: Path | None) -> Path | None:
    candidates = [explicit] if explicit else []
    here = Path(__file__).resolve().parent.parent
    candidates += [
        here.parent / "shared" / "data" / "routerbench",
        Path.cwd().parent / "shared" / "data" / "routerbench",
    ]
    if os.environ.get("TIERWISE_DATA"):
        candidates.append(Path(os.environ["TIERWISE_DATA"]))
    for path in candidates:
        if path is not None and path.is_dir() and csv_files(path):
            return path
    return None


# The demo's traffic comes from two tenants and three teams (a metadata tag), chosen by sample id,
# so the closing reconciliation has groups to add up.
DEMO_TENANTS = ("acme", "globex")
DEMO_TEAMS = ("search", "support", "growth")


# The demo's first tenant allows storing its prompts: the clusters view shows them, never the other's.
PROMPT_TENANTS = DEMO_TENANTS[:1]
JUDGED_SHARE = 0.5


def _learning(judge_data: Path | None) -> dict[str, object]:
    """Traffic samples (the clusters view's embeddings) and, given the recorded scores, judged quality."""
    learning: dict[str, object] = {"traffic": {"store_prompts_tenants": list(PROMPT_TENANTS)}}
    if judge_data is not None:
        # The replay judge gives RouterBench's recorded score of the model that answered: free, and
        # enough for cost per judged quality. No shadow calls: the demo's spend stays the served traffic's.
        learning["sampling"] = {"rate": JUDGED_SHARE, "shadow": "none"}
        learning["judge"] = {"kind": "replay", "replay_data": str(judge_data)}
    return learning


def replay_tiers(
    upstream_url: str, tiers: Sequence[tuple[str, str, Price]] = DEMO_TIERS
) -> list[dict[str, object]]:
    """Config entries for tiers answered by the replay upstream at ``upstream_url``."""
    return [
        {
            "name": name,
            "provider": "openai",
            "base_url": upstream_url,
            "model": model,
            "price": {
                "input_per_mtok": str(price.input_per_mtok),
                "output_per_mtok": str(price.output_per_mtok),
            },
            "max_output_tokens": 1024,
        }
        for name, model, price in tiers
    ]


def demo_config(
    workdir: Path,
    upstream_url: str,
    keys: Mapping[str, str],
    policy: str,
    metrics_port: int = 0,
    judge_data: Path | None = None,
    experiment: bool = False,
) -> dict[str, object]:
    config: dict[str, object] = {
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "metrics_port": metrics_port,
            "http_port": free_port(),  # the OpenAI-compatible front, for the HTTP leg
            "grace_period_s": 5,
        },
        "auth": {"api_keys": [{"key_sha256": sha256_hex(key), "tenant": t} for t, key in keys.items()]},
        "tiers": replay_tiers(upstream_url),
        "routing": {
            "policy": policy,
            "length_thresholds": {"small": 300, "medium": 600, "standard": 1200},
            "classifier": {"registry": str(workdir / "models")},
        },
        "store": {"kind": "embedded", "path": str(workdir / "var")},
        # One embedding thread: on a small shared CPU, threads spin-waiting on each other cost more than they give.
        "cache": {"torch_threads": 1},
        "logging": {"level": "WARNING"},
        "learning": _learning(judge_data),
    }
    if experiment:
        from tierwise.training.demo.experiment import experiment_section

        config["experiments"] = [experiment_section()]
        config["cache"] = {"torch_threads": 1, "enabled": False}  # the offline evaluation has no cache
    return config


@dataclass
class Tally:
    costs: list[Decimal] = field(default_factory=list)
    strongest_costs: list[Decimal] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    strongest_scores: list[float] = field(default_factory=list)
    overhead_ms: list[float] = field(default_factory=list)
    tiers: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cache_hits: int = 0
    cache_saved: Decimal = Decimal(0)
    by_group: ResponseCosts = field(default_factory=lambda: ResponseCosts(("tenant", "feature", "team")))


def _pick(sample_id: str, choices: Sequence[str], salt: str) -> str:
    digest = hashlib.sha256(f"{salt}:{sample_id}".encode()).digest()
    return choices[digest[0] % len(choices)]


def _strongest_cost(row: RouterBenchRow, tokens: TokenCounter) -> Decimal:
    """What always-strongest would have paid for this prompt: its recorded answer, at its price."""
    _, model, price = DEMO_TIERS[-1]
    messages = [ChatMessage("user", row.prompt)]
    usage = TokenUsage(
        tokens.count_messages(messages, model), tokens.count_text(row.responses[model], model=model)
    )
    return cost_usd(price, usage)


async def _drive(
    target: str,
    keys: Mapping[str, str],
    rows: Sequence[RouterBenchRow],
    concurrency: int,
    tally: Tally,
    experiment: bool = False,
) -> None:
    """Send the rows; with ``experiment``, each as its own user, answered by a Feedback of its recorded score."""
    from tierwise.training.demo.experiment import send_recorded_score, user_of

    models = {name: model for name, model, _ in DEMO_TIERS}
    tokens = TokenCounter()
    queue: asyncio.Queue[RouterBenchRow] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task("Complete over gRPC", total=len(rows))

            async def worker() -> None:
                while not queue.empty():
                    row = queue.get_nowait()
                    tenant = _pick(row.sample_id, DEMO_TENANTS, "tenant")
                    team = _pick(row.sample_id, DEMO_TEAMS, "team")
                    request = pb.CompleteRequest(
                        messages=[pb.ChatMessage(role="user", content=row.prompt)],
                        feature=row.task,
                        metadata={"team": team, "environment": "demo"},
                        user=user_of(row.sample_id) if experiment else "",
                    )
                    try:
                        response = await stub.Complete(
                            request, metadata=(("authorization", f"Bearer {keys[tenant]}"),), timeout=60
                        )
                    except grpc.aio.AioRpcError as exc:
                        tally.errors[exc.code().name] += 1
                    else:
                        decision = response.decision
                        tier = decision.tier
                        if decision.cache_hit:
                            tally.cache_hits += 1
                            tally.cache_saved += Decimal(repr(decision.saved_cost_usd))
                        tally.tiers[tier] += 1
                        tally.reasons[response.decision.reason] += 1
                        tally.costs.append(Decimal(response.cost_usd_exact))
                        tally.by_group.add(
                            {"tenant": tenant, "feature": row.task, "team": team},
                            Decimal(response.cost_usd_exact),
                        )
                        tally.overhead_ms.append(response.latency.overhead_ms)
                        # a cached answer was written by the model that answered first
                        answered_by = decision.cached.model if decision.cache_hit else models[tier]
                        score = row.scores.get(answered_by)
                        strongest = row.scores.get(DEMO_TIERS[-1][1])
                        if score is not None and strongest is not None:
                            tally.scores.append(score)
                            tally.strongest_scores.append(strongest)
                        if experiment and score is not None:
                            await send_recorded_score(stub, keys[tenant], response.request_id, score)
                        tally.strongest_costs.append(_strongest_cost(row, tokens))
                    progress.advance(task)

            await asyncio.gather(*(worker() for _ in range(concurrency)))


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_report(tally: Tally, policy: str) -> None:
    served = sum(tally.tiers.values())
    cost, strongest = sum(tally.costs, Decimal(0)), sum(tally.strongest_costs, Decimal(0))
    mean_score = statistics.fmean(tally.scores) if tally.scores else float("nan")
    mean_strongest = statistics.fmean(tally.strongest_scores) if tally.strongest_scores else float("nan")
    table = Table(title=f"tierwise demo — policy {policy!r}, held-out RouterBench prompts")
    table.add_column("measure")
    table.add_column("tierwise", justify="right")
    table.add_column("always-strongest", justify="right")
    table.add_row("requests answered", str(served), str(served))
    table.add_row("failed requests", str(sum(tally.errors.values())), "")
    table.add_row("total cost (USD)", f"{cost:.6f}", f"{strongest:.6f}")
    share = float(cost / strongest) if strongest else float("nan")
    table.add_row("cost vs always-strongest", f"{share:.1%}", "100.0%")
    hit_rate = tally.cache_hits / served if served else 0.0
    table.add_row("cache hits", f"{tally.cache_hits} ({hit_rate:.1%})", "")
    table.add_row("saved by the cache (USD)", f"{tally.cache_saved:.6f}", "")
    table.add_row("mean recorded score", f"{mean_score:.3f}", f"{mean_strongest:.3f}")
    kept = mean_score / mean_strongest if mean_strongest else float("nan")
    table.add_row("quality kept", f"{kept:.1%}", "100.0%")
    table.add_row(
        "overhead p50 / p95 (ms)",
        f"{_percentile(tally.overhead_ms, 0.5):.2f} / {_percentile(tally.overhead_ms, 0.95):.2f}",
        "",
    )
    console.print(table)
    mix = Table(title="tier mix")
    for column in ("tier", "requests", "share"):
        mix.add_column(column)
    for name, _, _ in DEMO_TIERS:
        count = tally.tiers.get(name, 0)
        mix.add_row(name, str(count), f"{count / served:.1%}" if served else "-")
    console.print(mix)
    if tally.errors:
        console.print(f"[red]errors by status:[/red] {dict(tally.errors)}")


def ensure_model(data_dir: Path, config_path: Path, registry: Path) -> None:
    """Train (on the train split; the demo replays the test split) and serve a model if none is serving."""
    from tierwise.classifier.registry import ModelRegistry
    from tierwise.router.config import load_config
    from tierwise.training.train import train

    models = ModelRegistry(registry)
    if models.pointer() is not None:
        console.print(f"classifier: serving {models.serving_version()} from {registry}")
        return
    console.print("classifier: no model yet, training one on the train split (first run only)")
    result = train(data_dir, load_config(config_path), registry, console=console)
    models.promote(result.version)
    console.print(f"classifier: trained and serving {result.version}")


def run_demo(
    data: Path | None,
    workdir: Path,
    limit: int,
    concurrency: int,
    policy: str = "classifier",
    experiment: bool = False,
) -> int:
    data_dir = find_data(data)
    if data_dir is None:
        console.print(
            "[red]No RouterBench data found.[/red] Put the RouterBench CSVs (RouterDC's routerbench_zs layout) in "
            "../shared/data/routerbench, or set TIERWISE_DATA to their folder, or pass --data."
        )
        return 2
    rows = [r for r in load_rows(data_dir) if split_of(r.sample_id) == "test"]
    rows = rows[:limit] if limit else rows
    # Real traffic repeats itself: a quarter of the prompts come again (chosen by id), after the first pass.
    repeats = [r for r in rows if hashlib.sha256(r.sample_id.encode()).digest()[0] < 64]
    if experiment:  # each prompt once, as the offline evaluation scores it
        policy, repeats = "classifier", []
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "var", ignore_errors=True)  # each run starts with an empty cache and ledger
    from tierwise.training.replay import ReplayUpstream

    replay = ReplayUpstream.from_data_dir(data_dir)
    upstream_url = replay.start()
    keys = {tenant: secrets.token_urlsafe(24) for tenant in DEMO_TENANTS}
    metrics_port = free_port()
    config = demo_config(
        workdir, upstream_url, keys, policy, metrics_port, judge_data=data_dir, experiment=experiment
    )
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    ensure_export(log=console.print)  # the ONNX embedder the demo's server reads (cache.onnx_embedder_dir)
    if policy == "classifier":
        ensure_model(data_dir, config_path, workdir / "models")
    console.print(
        f"data: {data_dir}  prompts: {len(rows)} held-out (test split) + {len(repeats)} repeated  "
        f"upstream: {upstream_url}"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "tierwise.training.cli", "serve", "--config", str(config_path)]
    )
    target = f"127.0.0.1:{config['server']['port']}"  # type: ignore[index]
    tally = Tally()
    try:
        wait_serving(target, server)
        asyncio.run(_drive(target, keys, [*rows, *repeats], concurrency, tally, experiment))
        leg = None if experiment else _http_leg(config, keys, rows, tally)
        metrics = scrape_costs(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        stop_process(server)  # a graceful stop flushes the ledger
        replay.stop()
    print_report(tally, policy)
    ledger = ledger_costs(workdir / "var" / "spend.sqlite3", tally.by_group.dimensions)
    table, mismatches = reconcile(tally.by_group, ledger, metrics)
    console.print(table)
    disagreements = [] if leg is None else _print_leg(leg)
    console.print(
        f"config for [bold]tierwise report[/bold] and the dashboard: {config_path} "
        "(e.g. tierwise report --config " + str(config_path) + " --since 1d --by tenant,feature,team)"
    )
    console.print(
        f"where the money goes: tierwise report --config {config_path} --since 1d --clusters 8 --quality"
    )
    for mismatch in mismatches:
        console.print(
            f"[red]does not reconcile:[/red] {mismatch.dimension}={mismatch.value!r}: {mismatch.detail}"
        )
    if experiment:
        from tierwise.training.demo.experiment import run_experiment_report

        run_experiment_report(data_dir, config_path, workdir, console)
    return 0 if not tally.errors and not mismatches and not disagreements else 1


def _http_leg(
    config: Mapping[str, Any], keys: Mapping[str, str], rows: Sequence[RouterBenchRow], tally: Tally
) -> LegResult | None:
    """A slice of the traffic again over both fronts, the HTTP one through the openai SDK (``http_leg``);
    None, said so, when the SDK (the dev extra's, which ``make demo`` installs) is missing."""
    if importlib.util.find_spec("openai") is None:
        console.print(
            "[yellow]HTTP leg skipped:[/yellow] the openai package is not installed (pip install openai)"
        )
        return None
    prompts = [
        Sent(row, _pick(row.sample_id, DEMO_TENANTS, "tenant"), _pick(row.sample_id, DEMO_TEAMS, "team"))
        for row in rows[:HTTP_SLICE]
    ]
    server = config["server"]
    target, base_url = f"127.0.0.1:{server['port']}", f"http://127.0.0.1:{server['http_port']}/v1"
    started = time.perf_counter()
    leg = asyncio.run(drive_http(target, base_url, keys, prompts, tally.by_group))
    console.print(
        f"HTTP leg: {len(prompts)} prompts over gRPC and through the openai SDK at {base_url}, one at a "
        f"time, cache bypassed, in {time.perf_counter() - started:.1f} s"
    )
    return leg


def _print_leg(leg: LegResult) -> list[str]:
    table, disagreements = leg_table(leg)
    console.print(table)
    console.print("the reconciliation above adds up both fronts' responses: the gRPC pass and the HTTP leg")
    for problem in disagreements:
        console.print(f"[red]the fronts disagree:[/red] {problem}")
    return disagreements
