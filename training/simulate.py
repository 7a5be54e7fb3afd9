"""``tierwise router simulate``: the learning loop end to end on replayed RouterBench traffic.

A real tierwise server (in this process) routes with the classifier against the
replay upstream (recorded answers), starting from a deliberately weak model
trained on a small slice of the train split. Each round sends a share of the
rest of the train split's prompts through ``Complete``; the server samples
requests after answering, shadows the other tier and has the replay judge
(recorded scores, not a model's opinion) score both answers; then ``retrain``
trains a candidate on the slice + the judgments and promotes it behind the
gate, and the server hot-swaps it. Reported per round: the serving model's and
the candidate's APGR on the base validation split (the rows the gate reads, with
the held-out judged prompts; training selects on it too, so it is not a held-out
number), the cost per request, and the judge + shadow spend. The base test split
is read once per run, at the end: the final model's APGR and that of a model
trained offline on every label of the train split. Nothing in the loop chooses on
it, so that one number is held out; 334 test prompts are still a noisy ruler
(models trained on as many labels differ by ~0.03; ``--repeats`` averages
replays with other draws: the traffic's order, and retraining's LightGBM seed).
Judged prompts train, but 15 % select and calibrate with the base validation
split (as ``learning.retrain`` does by default: a model serving another domain
is chosen on that domain's prompts too) and a tenth is held out for the gate.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from tierwise.classifier.model import DEFAULT_EMBEDDER_KEY, load_model
from tierwise.classifier.registry import ModelRegistry
from tierwise.router.auth import sha256_hex
from tierwise.router.config import Config, parse_config
from tierwise.router.server import TierwiseServer
from tierwise.router.service import build_service
from tierwise.training.dataset import RoutingData
from tierwise.training.demo.run import DEMO_TIERS, replay_tiers
from tierwise.training.figures import pyplot, save_figure
from tierwise.training.gate import tiers_alone
from tierwise.training.judged import concat, judged_rows, read_judgments
from tierwise.training.replay import ReplayUpstream
from tierwise.training.retrain import held_out_rows, metric_value, retrain, vote_value
from tierwise.training.routerbench import csv_files, load_rows
from tierwise.training.train import load_data, train
from tierwise.training.verifier_data import default_cache_dir
from tierwise.v1 import tierwise_pb2 as pb
from tierwise.v1 import tierwise_pb2_grpc as pb_grpc

TENANT = "simulation"
WEAK, STRONG = "medium", "large"  # mixtral-8x7b and gpt-4: the pair APGR is reported for


def simulation_config(
    workdir: Path,
    upstream_url: str,
    key: str,
    data_dir: Path,
    rate: float,
    tolerance: float = 0.0,
    cold_start: bool = False,
    judged_held_out: float | None = None,
    seed: int = 0,
) -> Config:
    """``cold_start``: no base data; the random policy serves until the first model beats it, and judged
    prompts alone select, calibrate and gate (15 % each)."""
    tiers = [t for t in DEMO_TIERS if t[0] in (WEAK, STRONG)]
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "grace_period_s": 5},
            "auth": {"api_keys": [{"key_sha256": sha256_hex(key), "tenant": TENANT}]},
            "tiers": replay_tiers(upstream_url, tiers),
            "routing": {
                "policy": "classifier",
                "classifier": {
                    "registry": str(workdir / "models"),
                    "watch_interval_s": 0.2,
                    "cold_start": "random" if cold_start else None,
                },
            },
            "store": {"kind": "embedded", "path": str(workdir / "var")},
            "cache": {
                "enabled": False,
                "torch_threads": 1,
            },  # every request reaches a tier: nothing to judge otherwise
            "logging": {"level": "WARNING"},
            "learning": {
                # Public benchmark prompts: kept with the samples, so a judged row can be traced to its prompt.
                "traffic": {"store_prompts_tenants": [TENANT]},
                "sampling": {
                    "rate": rate,
                    "shadow": "strongest",
                    "shadow_cheapest_when_strongest": True,
                    "budget_usd": "100",
                    "concurrency": 4,
                    "max_queued": 100_000,
                },
                "judge": {"kind": "replay", "replay_data": str(data_dir)},
                "retrain": {
                    "metric": "apgr",
                    "weak": WEAK,
                    "strong": STRONG,
                    "min_new_judgments": 1,
                    "tolerance": tolerance,
                    # Judged prompts select and calibrate too, with the base validation split (the default):
                    # chosen on RouterBench alone, the model serving GSM8K after the last round scored 0.6052
                    # on GSM8K's test split, chosen on both 0.6238 (mean of 5). A tenth is held out for the gate.
                    "judged_validation": 0.15,
                    "seed": seed,
                    "judged_held_out": judged_held_out or (0.15 if cold_start else 0.1),
                },
            },
        }
    )


async def _serve_round(
    target: str, key: str, prompts: list[str], concurrency: int
) -> tuple[Decimal, int, int]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    total, served, failed = Decimal(0), 0, 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RouterStub(channel)

        async def worker() -> None:
            nonlocal total, served, failed
            while not queue.empty():
                prompt = queue.get_nowait()
                request = pb.CompleteRequest(
                    messages=[pb.ChatMessage(role="user", content=prompt)], feature="sim"
                )
                try:
                    reply = await stub.Complete(
                        request, metadata=(("authorization", f"Bearer {key}"),), timeout=60
                    )
                except grpc.aio.AioRpcError:
                    failed += 1
                else:
                    total += Decimal(reply.cost_usd_exact)
                    served += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total, served, failed


def _apgr(registry: Path, version: str, config: Config, *row_sets: RoutingData) -> list[float]:
    """APGR of a version on each of ``row_sets`` under the serving rule, the model loaded once: a split of
    the base data (``validation`` each round, the gate's rows; ``test`` once per run), or the traffic's
    rows never replayed."""
    model = load_model(ModelRegistry(registry).version_dir(version), config.tier_names, device="cpu")
    return [round(metric_value(model, rows, config, config.learning.retrain)[0], 4) for rows in row_sets]


def _gate(report: dict[str, Any]) -> dict[str, Any]:
    """What the retrain gate saw: both models' metric on its rows and on the base validation split alone."""
    models = report.get("models", {})
    return {
        name: {
            "gate_value": round(m["value"], 4),
            "base_validation_value": round(m["base_validation_value"], 4),
        }
        for name, m in models.items()
    } | {
        "gate_rows": report.get("gate_rows", {}),
        "tolerance": report.get("tolerance"),
        "verdict": report.get("gate", {}),
    }


def _gap(reference: float, final: float | None) -> float | None:
    return None if final is None else round(reference - final, 4)


def knn_on_judged(config: Config, rows: RoutingData) -> float:
    """APGR on ``rows`` of the kNN vote fit on every judged training prompt so far (``vote_value``)."""
    judged = judged_rows(config, read_judgments(config, 0.0, 1e18).records, 1.0)
    if judged is None:
        return float("nan")
    return round(vote_value(judged, rows, config, config.learning.retrain), 4)


def random_apgr(config: Config, rows: RoutingData) -> float:
    """The random policy's APGR on ``rows``: its expectation, the chord from the weak tier alone to the
    strong one (``tiers_alone``), the floor a router must clear."""
    _, held_out = held_out_rows(rows, config, config.learning.retrain)
    return round(held_out.value(tiers_alone(held_out)), 4)


@dataclass(frozen=True)
class SimulationSettings:
    rounds: int = 4  # serve -> sample -> retrain -> promote
    slice_rows: int | None = 60  # train-split prompts the weak start learns from
    rate: float = 0.5  # share of served requests judged
    concurrency: int = 4  # requests in flight
    tolerance: float = 0.0  # the gate: a candidate trailing by at most this is not worse
    seed: int = 0  # which train-split prompts form the weak start's slice, and the traffic's order
    # Another domain's CSVs replayed as traffic (their train split), their test split scored every round;
    # None: the start data's own train split beyond the slice, scored on its validation split.
    traffic: tuple[Path, ...] = ()
    traffic_rows: int | None = None  # replay only this many traffic prompts (None: the whole train split)
    start_model: Path | None = None  # a trained version directory to start from instead of the slice's
    judged_held_out: float | None = None  # share of judged prompts the gate holds out (None: 0.1; cold 0.15)
    # slice_rows None: every train-split row of the start data; 0: the cold start (no base data at all)


def _csv_folder(workdir: Path, paths: list[Path]) -> Path:
    """One folder linking every CSV of ``paths``: the replay upstream and judge read start data and traffic."""
    folder = workdir / "recorded"
    folder.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(csv_files(paths)):
        (folder / f"{number}-{path.name}").symlink_to(path.resolve())
    return folder


async def _simulate(
    data_dir: Path, workdir: Path, settings: SimulationSettings, cache_dir: Path, console: Console
) -> dict[str, Any]:
    recorded = _csv_folder(workdir, [data_dir, *settings.traffic])
    replay = ReplayUpstream(load_rows(recorded, format="auto"))
    key = secrets.token_urlsafe(16)
    cold = settings.slice_rows == 0 and settings.start_model is None
    config = simulation_config(
        workdir,
        replay.start(),
        key,
        recorded,
        settings.rate,
        settings.tolerance,
        cold_start=cold,
        judged_held_out=settings.judged_held_out,
        seed=settings.seed,
    )
    try:
        base = load_data(data_dir, config, cache_dir, "auto", None, None, DEFAULT_EMBEDDER_KEY, console)
        rng = np.random.default_rng(settings.seed)
        order = rng.permutation(np.flatnonzero(base.splits == "train"))
        cut = len(order) if settings.slice_rows is None else settings.slice_rows
        start_rows, traffic_rows = order[:cut], order[cut:]
        keep = np.isin(np.arange(len(base)), start_rows) | (base.splits != "train")
        start = None if cold else base.subset(keep)  # the start's slice, with the validation and test splits
        scored, scored_split, round_key = base, "validation", "validation_apgr"
        if settings.traffic:  # another domain: its train split is the traffic, its test split the ruler
            scored = load_data(
                list(settings.traffic), config, cache_dir, "auto", None, None, DEFAULT_EMBEDDER_KEY, console
            )
            scored_split, round_key = "test", "traffic_test_apgr"
            traffic_rows = rng.permutation(np.flatnonzero(scored.splits == "train"))
        traffic_rows = traffic_rows[: settings.traffic_rows]
        # The traffic's train and validation prompts never replayed: a ruler larger than its test split
        # that no model of the loop saw (each candidate is scored on it too).
        never_replayed = (scored.splits != "test") & ~np.isin(np.arange(len(scored)), traffic_rows)
        unreplayed = scored.subset(never_replayed & bool(settings.traffic))
        # The offline reference learns from every label the loop could see: the traffic's alone from zero.
        everything = scored if cold else (base if not settings.traffic else concat([base, scored]))
        reference = train([], config, workdir / "reference", prepared=everything, console=console).version
        registry = ModelRegistry(workdir / "models")
        if settings.start_model is not None:
            shutil.copytree(settings.start_model, registry.version_dir(settings.start_model.name))
            registry.promote(settings.start_model.name, force=True, expected_tiers=config.tier_names)
        elif start is not None:
            weak = train([], config, registry.root, prepared=start, console=console).version
            registry.promote(weak, force=True)
        # A fixed prompt-key salt: judged prompts fall on the same side of retrain's split run after run.
        config.store.path.mkdir(parents=True, exist_ok=True)
        (config.store.path / "user_salt").write_bytes(b"tierwise-simulate")
        server = TierwiseServer(await build_service(config))
        port = await server.start()
        learning = server.service.accounting.learning
        assert learning.sampler is not None and learning.traffic is not None and server.service.serving_model
        results: list[dict[str, Any]] = []
        serving = registry.serving_version()

        def ruler(version: str | None, *row_sets: RoutingData) -> list[float | None]:
            """``_apgr`` on ``row_sets`` (default: the scored split); a None each without a version."""
            row_sets = row_sets or (scored.split(scored_split),)
            if version is None:
                return [None] * len(row_sets)
            return list(_apgr(registry.root, version, config, *row_sets))

        try:
            for number, chunk in enumerate(np.array_split(traffic_rows, settings.rounds), start=1):
                (apgr,) = ruler(serving)
                before = dict(learning.sampler.spent_usd)
                texts = (scored if settings.traffic else base).texts
                cost, served, failed = await _serve_round(
                    f"127.0.0.1:{port}", key, [texts[i] for i in chunk], settings.concurrency
                )
                await learning.sampler.drain()
                await learning.traffic.flush(60)
                outcome = await asyncio.to_thread(retrain, config, base=start, console=console)
                if outcome.promoted and outcome.candidate:
                    holder = server.service.serving_model
                    async with asyncio.timeout(60):  # the server's watcher swaps the model in
                        while not holder.loaded or holder.model.version != outcome.candidate:  # noqa: ASYNC110
                            await asyncio.sleep(0.1)
                    serving = outcome.candidate
                stats = learning.sampler.stats()
                # The candidate on the scored split and, with --traffic, on the prompts never replayed.
                on_split, *on_unreplayed = ruler(
                    outcome.candidate, scored.split(scored_split), *((unreplayed,) if len(unreplayed) else ())
                )
                spent = {k: learning.sampler.spent_usd[k] - before[k] for k in before}
                results.append(
                    {
                        "round": number,
                        "model": outcome.serving,
                        round_key: apgr,
                        "requests": served,
                        "failed": failed,
                        "cost_per_request_usd": str(cost / served) if served else "nan",
                        "judgments_total": stats["judgments"],
                        "shadow_spend_usd": str(spent["shadow"]),
                        "judge_spend_usd": str(spent["judge"]),
                        "candidate": outcome.candidate,
                        f"candidate_{round_key}": on_split,
                        "candidate_unreplayed_apgr": on_unreplayed[0] if on_unreplayed else None,
                        "judged_row_weight": outcome.report.get("training_rows", {}).get("judged_row_weight"),
                        "knn_on_judged_apgr": (
                            knn_on_judged(config, scored.split("test")) if settings.traffic else None
                        ),
                        "gate": _gate(outcome.report),
                        "promoted": outcome.promoted,
                        "reason": outcome.reason,
                    }
                )
                console.print(results[-1])
            splits = ("validation", "test")
            readings = ruler(serving, *(scored.split(split) for split in splits))
            final = {f"{split}_apgr": value for split, value in zip(splits, readings, strict=True)}
            final.setdefault(round_key, final[f"{scored_split}_apgr"])  # traffic: the test split's reading
            totals = learning.sampler.stats()
        finally:
            await server.stop(grace_s=1)
    finally:
        replay.stop()
    # The test split's one reading per model, after the loop has made every choice it makes.
    final["random_apgr"] = random_apgr(config, scored.split(scored_split))
    on_splits = _apgr(workdir / "reference", reference, config, *(scored.split(split) for split in splits))
    reference_apgr = dict(zip(splits, on_splits, strict=True))
    return {
        "judge": totals["judge"],
        "pair": {"weak": DEMO_TIERS[1][1], "strong": DEMO_TIERS[3][1]},
        "sample_rate": settings.rate,
        "start_slice_rows": settings.slice_rows,
        "tolerance": settings.tolerance,
        "seed": settings.seed,
        "splits": {
            "test": {
                "rows": int((scored.splits == "test").sum()),
                "split": f"{'traffic' if settings.traffic else 'start data'} test (sample id)",
                "read": "every round: the serving model and the candidate; nothing in the loop chooses on it"
                if settings.traffic
                else "once, after the last round: the final model and the offline reference",
            },
            "unreplayed": {
                "rows": len(unreplayed),
                "split": "traffic train and validation prompts never replayed (with --traffic)",
                "read": "every round: the candidate (candidate_unreplayed_apgr)",
            },
            "validation": {
                "rows": int((scored.splits == "validation").sum()),
                "split": f"{'traffic' if settings.traffic else 'start data'} validation (sample id)",
                "read": "after the last round (the gate reads held-out judged prompts and the start data's validation split, if any)"
                if settings.traffic
                else "every round: the gate's rows (with held-out judged prompts); training selects on it",
            },
        },
        "reference": {
            "version": reference,
            "test_apgr": reference_apgr["test"],
            "validation_apgr": reference_apgr["validation"],
            "trained_on": "every train-split label",
        },
        "round_key": round_key,
        "traffic": [str(p) for p in settings.traffic],
        "cold_start": cold,
        "rounds": results,
        "final": {
            "version": serving,
            **final,
            "gap_to_reference": _gap(reference_apgr["test"], final["test_apgr"]),
            "validation_gap_to_reference": _gap(reference_apgr["validation"], final["validation_apgr"]),
        },
        "sampling_totals": totals,
    }


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_and_plot(report: dict[str, Any], workdir: Path, console: Console) -> Path:
    table = Table(
        title=f"learning loop on replayed traffic — judge: {report['judge']}",
        caption=f"{report.get('round_key', 'validation_apgr')} of the serving model and the round's candidate"
        " (- : no model serving yet, the cold-start policy serves)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Short headers: the table fits an 80-column terminal (requests per round are in the JSON).
    for column in ("round", "valid.", "USD/req", "judged", "shadow $", "cand. valid.", "prom"):
        table.add_column(column, no_wrap=True)
    key = report.get("round_key", "validation_apgr")
    for r in report["rounds"]:
        candidate = r.get(f"candidate_{key}")
        table.add_row(
            str(r["round"]),
            _number(r[key]),
            f"{float(r['cost_per_request_usd']):.5f}",
            str(r["judgments_total"]),
            f"{float(r['shadow_spend_usd']):.3f}",
            _number(candidate),
            "yes" if r["promoted"] else "no",
        )
    console.print(table)
    final, reference, totals = report["final"], report["reference"], report["sampling_totals"]
    console.print(
        f"test split, read once ({report['splits']['test']['rows']} prompts, "
        f"{report['pair']['strong']} vs {report['pair']['weak']}): final model APGR {_number(final['test_apgr'])}, "
        f"offline model on every label {reference['test_apgr']:.4f}, gap {_number(final['gap_to_reference'])}; "
        f"validation: {_number(final['validation_apgr'])} / {reference['validation_apgr']:.4f}; "
        f"sampling spend: shadow ${totals['shadow_spent_usd']}, judge ${totals['judge_spent_usd']}"
    )
    plt = pyplot()

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [r["round"] for r in report["rounds"]] + [len(report["rounds"]) + 1]
    ys = [r[key] for r in report["rounds"]] + [final[key]]
    left.plot(
        xs,
        [float("nan") if y is None else y for y in ys],
        marker="o",
        color="C1",
        label=f"serving model, {key}",
    )
    left.axhline(
        reference["validation_apgr"], color="C1", linestyle="--", label="offline, all labels, validation"
    )
    left.scatter(
        [xs[-1]],
        [float("nan") if final["test_apgr"] is None else final["test_apgr"]],
        marker="*",
        s=140,
        color="C0",
        label="final model, test (once)",
    )
    left.axhline(reference["test_apgr"], color="C0", linestyle=":", label="offline, all labels, test (once)")
    left.set_xlabel("round (model serving it; last: after the final retrain)")
    left.set_ylabel("APGR")
    left.legend()
    rounds = [r["round"] for r in report["rounds"]]
    right.bar(rounds, [float(r["cost_per_request_usd"]) for r in report["rounds"]])
    right.set_xlabel("round")
    right.set_ylabel("cost per request (USD)")
    figure.suptitle(f"tierwise router simulate — {report['judge']}")
    return save_figure(figure, workdir / "simulation.png")


def run_simulation(
    data_dir: Path,
    workdir: Path,
    settings: SimulationSettings,
    console: Console | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the simulation in ``workdir`` (emptied first); writes simulation.json and simulation.png there.

    ``cache_dir``: where prompt embeddings are cached (default: the user's cache folder).
    """
    console = console or Console()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    report = asyncio.run(_simulate(data_dir, workdir, settings, cache_dir or default_cache_dir(), console))
    (workdir / "simulation.json").write_text(json.dumps(report, indent=2))
    print_and_plot(report, workdir, console)
    return report
