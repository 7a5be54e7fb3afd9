"""The evaluation report as a picture: every router's curve, both views."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tierwise.training.figures import pyplot, save_figure

SINGLE_POINT_ROUTERS = ("cheapest", "strongest", "oracle")


def plot_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write a PNG: cost-quality curves over the tier set, and PGR against strong-call share for the pair."""
    plt = pyplot()

    views = ["tier_set"] + (["pair"] if "pair" in report else [])
    figure, axes = plt.subplots(1, len(views), figsize=(7.5 * len(views), 6), squeeze=False)
    tier_axis = axes[0][0]
    for name, entry in report["tier_set"]["routers"].items():
        points = sorted(entry["points"], key=lambda p: p["cost"])
        costs = [p["cost"] for p in points]
        qualities = [p["quality"] for p in points]
        label = f"{name} (AIQ {entry['aiq']:.3f})"
        if name in SINGLE_POINT_ROUTERS:
            tier_axis.scatter(costs, qualities, marker="*", s=140, label=label, zorder=3)
        else:
            tier_axis.plot(costs, qualities, marker=".", markersize=3, linewidth=1.2, label=label)
    for tier, values in report["tiers"].items():
        tier_axis.scatter([values["cost"]], [values["quality"]], color="grey", s=12, zorder=2)
        tier_axis.annotate(tier, (values["cost"], values["quality"]), fontsize=7, color="grey")
    tier_axis.set_xscale("log")
    tier_axis.set_xlabel("mean cost per prompt (USD, log scale)")
    tier_axis.set_ylabel("mean score")
    tier_set = report["tier_set"]
    target = 0.95 * tier_set["strongest_quality"]
    tier_axis.axhline(target, color="grey", linestyle=":", linewidth=0.8)
    tier_axis.annotate(
        f"95 % of {tier_set['strongest']} (cost@95% is read off the {report['split']} curve)",
        (tier_set["cost_range"][0], target),
        fontsize=7,
        color="grey",
        xytext=(0, 3),
        textcoords="offset points",
    )
    tier_axis.set_title(f"all tiers, {report['split']} split ({report['prompts']} prompts)")
    tier_axis.legend(fontsize=7, loc="lower right")
    tier_axis.grid(alpha=0.3)
    if "pair" in report:
        pair = report["pair"]
        axis = axes[0][1]
        gap = pair["strong_quality"] - pair["weak_quality"]
        for name, entry in pair["routers"].items():
            points = sorted(entry["points"], key=lambda p: p["strong_share"])
            shares = [p["strong_share"] for p in points]
            pgr = [(p["quality"] - pair["weak_quality"]) / gap for p in points]
            label = f"{name} (APGR {entry['apgr']:.3f})"
            if name in ("cheapest", "strongest"):
                axis.scatter(shares, pgr, marker="*", s=140, label=label, zorder=3)
            else:
                axis.plot(shares, pgr, marker=".", markersize=3, linewidth=1.2, label=label)
        axis.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=0.8)
        axis.set_xlabel(f"share of calls to {pair['strong']}")
        axis.set_ylabel("performance gap recovered")
        axis.set_title(f"{pair['weak']} vs {pair['strong']}")
        axis.legend(fontsize=7, loc="lower right")
        axis.grid(alpha=0.3)
    return save_figure(figure, path, dpi=120)
