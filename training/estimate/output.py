"""The estimate as JSON (money as exact decimal strings), as rich tables, and as a cost-quality plot.

The tables and the plot are drawn from the JSON document, so all three agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tierwise.router.pricing import usd_str
from tierwise.training.estimate.projection import NEEDS_SAMPLE, CacheRate, PolicyEstimate, Scenario, Workload
from tierwise.training.estimate.volume import FORMULA, monthly_tokens
from tierwise.training.figures import pyplot, save_figure


def _usd(amount: Decimal | None) -> str | None:
    return None if amount is None else usd_str(amount)


def _workload(workload: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if workload.volume is not None:
        tokens = monthly_tokens(workload.volume)
        out["volume"] = asdict(workload.volume)
        out["formula"] = FORMULA
        out["requests_per_month"] = tokens.requests
        out["input_tokens_per_month"] = tokens.input_tokens
        out["output_tokens_per_month"] = tokens.output_tokens
    elif workload.sample is not None:
        per_day = workload.requests_per_day
        out["requests_per_day"] = per_day or workload.sample.rows
        out["requests_per_day_source"] = "given" if per_day else "assumed: the sample is one day's traffic"
    return out


def _change(value: Decimal | None, base: Decimal | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return round(float(value / base) - 1, 6)


def estimate_document(
    workload: Workload,
    cache: CacheRate,
    estimates: Sequence[PolicyEstimate],
    scenarios: Sequence[Scenario] | None,
    sample: Mapping[str, Any] | None,
) -> dict[str, Any]:
    policies = []
    for e in estimates:
        entry = asdict(e)
        entry["monthly_usd"], entry["usd_per_request"] = _usd(e.monthly_usd), _usd(e.usd_per_request)
        policies.append(entry)
    document: dict[str, Any] = {
        "workload": _workload(workload),
        "cache": {"hit_rate": round(cache.hit_rate, 6), "source": cache.source},
        "sample": dict(sample) if sample is not None else None,
        "policies": policies,
    }
    if scenarios is not None:
        base = scenarios[0].monthly_usd
        document["sensitivity"] = [
            {
                "scenario": s.name,
                "note": s.note,
                "monthly_usd": {p: _usd(v) for p, v in s.monthly_usd.items()},
                "change_vs_base": {p: _change(v, base.get(p)) for p, v in s.monthly_usd.items()},
            }
            for s in scenarios
        ]
    return document


def _money(text: str | None) -> str:
    return "—" if text is None else f"${Decimal(text):,.2f}"


def _mix(mix: Mapping[str, float] | None) -> str:
    if mix is None:
        return "—"
    return " ".join(
        f"{name} {share:.0%}" if share >= 0.005 else f"{name} <1%" for name, share in mix.items() if share > 0
    )


def print_document(document: Mapping[str, Any], console: Console) -> None:
    load = document["workload"]
    if "volume" in load:
        console.print(
            f"workload: {load['requests_per_month']:,} requests, {load['input_tokens_per_month']:,} input and "
            f"{load['output_tokens_per_month']:,} output tokens a month ({load['formula']})"
        )
    else:
        console.print(f"workload: the sample at {load['requests_per_day']:,} requests a day "
                      f"({load['requests_per_day_source']}), 30 days a month")  # fmt: skip
    cache = document["cache"]
    console.print(f"cache hit rate: {cache['hit_rate']:.1%} ({cache['source']})")
    if document["sample"] is not None:
        console.print("sample: " + ", ".join(f"{k} {v}" for k, v in document["sample"].items()))
    table = Table(title="monthly estimate per policy")
    table.add_column("policy", no_wrap=True, min_width=15)
    table.add_column("tier mix")
    for column in ("input tok", "output tok", "USD / month", "USD / request", "quality"):
        table.add_column(column, justify="right")
    for p in document["policies"]:
        quality = "—" if p["expected_quality"] is None else f"{p['expected_quality']:.3f}"
        per_request = "—" if p["usd_per_request"] is None else f"{Decimal(p['usd_per_request']):.6f}"
        table.add_row(
            p["policy"], _mix(p["tier_mix"]) if p["tier_mix"] else p["note"],
            "—" if p["input_tokens"] is None else f"{p['input_tokens']:,}",
            "—" if p["output_tokens"] is None else f"{p['output_tokens']:,}",
            _money(p["monthly_usd"]), per_request, quality,
        )  # fmt: skip
    console.print(table)
    if any(p["note"] == NEEDS_SAMPLE for p in document["policies"]):
        console.print(
            f"classifier: {NEEDS_SAMPLE} — its tier mix depends on the prompts, which a volume spec does not "
            "have; with --sample the prompts are routed by the serving model"
        )
    if "sensitivity" in document:
        sens = Table(title="sensitivity: USD / month (change vs base)")
        sens.add_column("scenario")
        names = [p["policy"] for p in document["policies"] if p["monthly_usd"] is not None]
        for name in names:
            sens.add_column(name, justify="right")
        for row in document["sensitivity"]:
            cells = []
            for name in names:
                change = row["change_vs_base"][name]
                suffix = "" if change is None or row["scenario"] == "base" else f" ({change:+.0%})"
                cells.append(_money(row["monthly_usd"][name]) + suffix)
            label = row["scenario"] + (f" [{row['note']}]" if row["note"] else "")
            sens.add_row(label, *cells)
        console.print(sens)


def plot_document(document: Mapping[str, Any], path: Path) -> Path:
    """Monthly cost against expected quality, one point per policy that has both."""
    plt = pyplot()

    points = [
        (p["policy"], float(Decimal(p["monthly_usd"])), p["expected_quality"])
        for p in document["policies"]
        if p["monthly_usd"] is not None and p["expected_quality"] is not None
    ]
    figure, axis = plt.subplots(figsize=(7.5, 5.5))
    same_place: dict[tuple[float, float], list[str]] = {}  # policies that coincide share one label
    for name, cost, quality in points:
        same_place.setdefault((cost, quality), []).append(name)
    for (cost, quality), names in same_place.items():
        marker = "*" if any(not n.startswith("classifier") for n in names) else "o"
        axis.scatter([cost], [quality], marker=marker, s=80 if marker == "o" else 160, zorder=3)
        label = " = ".join(names)
        axis.annotate(label, (cost, quality), textcoords="offset points", xytext=(6, 4), fontsize=8)
    classifier = sorted((c, q) for n, c, q in points if n.startswith("classifier"))
    if len(classifier) > 1:
        axis.plot(*zip(*classifier, strict=True), color="grey", linewidth=1, zorder=2)
    if not points:
        axis.text(0.5, 0.5, "no policy has an expected quality: give --sample", ha="center",
                  transform=axis.transAxes)  # fmt: skip
    axis.set_xlabel("USD per month (upstream, after the cache)")
    axis.set_ylabel("expected quality (mean recorded score)")
    axis.set_title("cost vs expected quality per policy")
    axis.grid(alpha=0.3)
    return save_figure(figure, path, dpi=120)
