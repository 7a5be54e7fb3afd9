"""``--plot``: spend over time, stacked by the report's first dimension (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt

from tierwise.router.analytics.timeseries import SpendSeries


def plot_spend(series: SpendSeries, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(11, 5.5), layout="constrained")
    try:
        x = range(len(series.labels))
        values = series.floats()
        if values:
            ax.stackplot(x, *values.values(), labels=[name or "(none)" for name in values], alpha=0.85)
            ax.legend(title=series.dimension or None, loc="upper left", fontsize="small")
        ticks = max(1, len(series.labels) // 12)
        ax.set_xticks(list(x)[::ticks], series.labels[::ticks], rotation=30, ha="right", fontsize="small")
        ax.set_ylabel("spend (USD)")
        ax.set_xlabel(f"{series.bucket} (UTC)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
