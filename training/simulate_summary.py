"""``tierwise router simulate --repeats N``: the simulation with N seeds, and the round-by-round mean.

One replay's per-round APGR moves by about 0.03 from the draw of prompts alone (334
test prompts; models trained on as many labels differ that much), which is as much as
a round of judgments adds. Repeating the simulation with other draws of the weak
start's slice and of the traffic's order, and averaging per round, shows the trend
the loop actually has; each run is still reported and plotted on its own. Per round
that is the validation split's APGR (the gate's rows); the test split is read once per
run, for the final model and the offline reference, and summarised over the runs.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from tierwise.training.figures import pyplot, save_figure
from tierwise.training.simulate import SimulationSettings, run_simulation

SPLITS = (("test_apgr", "test"), ("validation_apgr", "validation"))


def _spread(values: list[float | None]) -> dict[str, float] | None:
    """Mean, sd and range of the readings there are (None: no model served, the cold-start policy did)."""
    read = [v for v in values if v is not None]
    if not read:
        return None
    return {
        "mean": round(statistics.fmean(read), 4),
        "sd": round(statistics.stdev(read), 4) if len(read) > 1 else 0.0,
        "min": round(min(read), 4),
        "max": round(max(read), 4),
    }


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round (the model serving it; the last entry is the model after the final retrain): mean and sd
    over the runs of the validation APGR; the final model's test APGR (each run's one reading of the test
    split), with the offline reference's and the gap to it."""
    rounds = len(reports[0]["rounds"])
    key = reports[0].get("round_key", "validation_apgr")
    per_round = []
    for number in range(rounds + 1):
        final = number == rounds
        entries = [r["final"] if final else r["rounds"][number] for r in reports]
        entry: dict[str, Any] = {
            "round": "final" if final else number + 1,
            "validation": _spread([e[key] for e in entries]),
            "promoted": None if final else sum(bool(e["promoted"]) for e in entries),
        }
        if not final and key != "validation_apgr":  # another domain's traffic: its baseline and spend
            entry["knn_on_judged"] = _spread([e["knn_on_judged_apgr"] for e in entries])
            entry["candidate_unreplayed"] = _spread([e.get("candidate_unreplayed_apgr") for e in entries])
            entry["shadow_spend_usd"] = _spread([float(e["shadow_spend_usd"]) for e in entries])
        per_round.append(entry)
    final_test = _spread([r["final"]["test_apgr"] for r in reports])
    reference = {split: _spread([r["reference"][key] for r in reports]) for key, split in SPLITS}
    gaps = {
        split: _spread(
            [None if r["final"][key] is None else r["reference"][key] - r["final"][key] for r in reports]
        )
        for key, split in SPLITS
    }
    spend = {
        kind: str(sum((Decimal(r["sampling_totals"][f"{kind}_spent_usd"]) for r in reports), Decimal(0)))
        for kind in ("shadow", "judge")
    }
    return {
        "round_key": key,
        "runs": len(reports),
        "seeds": [r["seed"] for r in reports],
        "judge": reports[0]["judge"],
        "pair": reports[0]["pair"],
        "per_round": per_round,
        "final_test": final_test,
        "reference": reference,
        "gap_to_reference": gaps,
        "sampling_spend_usd": spend,
    }


def _mean_sd(spread: dict[str, float] | None) -> str:
    return "- (no model promoted)" if spread is None else f"{spread['mean']:.4f} ± {spread['sd']:.4f}"


def print_and_plot_summary(
    summary: dict[str, Any], reports: list[dict[str, Any]], workdir: Path, console: Console
) -> Path:
    table = Table(
        title=f"learning loop, mean of {summary['runs']} replays (seeds {summary['seeds']})",
        caption=f"{summary['round_key']} of the serving model per round: mean ± sd over the replays "
        "(validation_apgr: the gate's rows; traffic_test_apgr: the other domain's test split)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("round", "valid.", "promoted"):
        table.add_column(column, no_wrap=True)
    for entry in summary["per_round"]:
        validation = entry["validation"]
        table.add_row(
            str(entry["round"]),
            "-" if validation is None else f"{validation['mean']:.4f} ± {validation['sd']:.4f}",
            "-" if entry["promoted"] is None else f"{entry['promoted']}/{summary['runs']}",
        )
    console.print(table)
    reference, gap, test = summary["reference"], summary["gap_to_reference"], summary["final_test"]
    console.print(
        f"test split, read once per run: final model {_mean_sd(test)}, offline model "
        f"on every label {reference['test']['mean']:.4f} (validation {reference['validation']['mean']:.4f}); "
        f"final model's gap to it: test {_mean_sd(gap['test'])}, validation {_mean_sd(gap['validation'])}; "
        f"sampling spend over all runs: shadow ${summary['sampling_spend_usd']['shadow']}, "
        f"judge ${summary['sampling_spend_usd']['judge']}"
    )
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(8, 4.5))
    xs = list(range(1, len(summary["per_round"]) + 1))
    for report in reports:
        key = summary.get("round_key", "validation_apgr")
        ys = [r[key] for r in report["rounds"]] + [report["final"][key]]
        axis.plot(xs, [float("nan") if y is None else y for y in ys], color="0.75", linewidth=1)
    means = [
        float("nan") if e["validation"] is None else e["validation"]["mean"] for e in summary["per_round"]
    ]
    axis.plot(
        xs, means, marker="o", color="C1", label=f"serving model, validation, mean of {summary['runs']}"
    )
    axis.axhline(reference["validation"]["mean"], color="C1", linestyle="--", label="offline, validation")
    finals = [report["final"]["test_apgr"] for report in reports if report["final"]["test_apgr"] is not None]
    axis.scatter(
        [xs[-1]] * len(finals), finals, marker="*", s=90, color="C0", label="final model, test (once)"
    )
    axis.axhline(reference["test"]["mean"], color="C0", linestyle=":", label="offline, test (once)")
    axis.set_xlabel("round (last: after the final retrain)")
    axis.set_ylabel("APGR")
    axis.legend()
    figure.suptitle(f"tierwise router simulate — {summary['judge']}")
    return save_figure(figure, workdir / "simulation-summary.png")


def run_repeated(
    data_dir: Path,
    workdir: Path,
    settings: SimulationSettings,
    repeats: int,
    console: Console | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """``repeats`` simulations with seeds ``settings.seed``, +1, ...; each in ``workdir/seed-K``, the summary
    (simulation-summary.json and .png) in ``workdir``."""
    console = console or Console()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    reports = [
        run_simulation(data_dir, workdir / f"seed-{seed}", replace(settings, seed=seed), console, cache_dir)
        for seed in range(settings.seed, settings.seed + repeats)
    ]
    summary = summarize(reports)
    (workdir / "simulation-summary.json").write_text(json.dumps(summary, indent=2))
    print_and_plot_summary(summary, reports, workdir, console)
    return summary
