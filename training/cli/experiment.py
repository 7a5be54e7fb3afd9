"""``tierwise experiment report NAME``: per-arm cost, judged quality, latency and cache hits, with
each arm's difference from control (95 % confidence intervals), from the spend ledger and the
feedback store the config names."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from tierwise.router.analytics.source import open_sink, parse_since
from tierwise.router.config import Config, ExperimentConfig, load_config
from tierwise.router.experiments.store import recorded_since
from tierwise.router.feedback.factory import open_feedback_table
from tierwise.router.ledger.reports import SinkReports
from tierwise.training.figures import pyplot, save_figure

if TYPE_CHECKING:  # numpy and scipy load only when a report is made, not for every CLI command
    from tierwise.router.analytics.experiment_report import ExperimentReport
    from tierwise.router.experiments.stats import Interval


def experiment_app() -> typer.Typer:
    app = typer.Typer(
        help="A/B experiments defined in the config's experiments section.", no_args_is_help=True
    )
    app.command()(report)
    return app


def _experiment(config: Config, name: str) -> ExperimentConfig:
    for experiment in config.experiments:
        if experiment.name == name:
            return experiment
    configured = [e.name for e in config.experiments]
    raise ValueError(f"NAME: no experiment {name!r} in the config; configured: {configured}")


async def load_report(
    config: Config, experiment: ExperimentConfig, since: float, until: float
) -> ExperimentReport:
    from tierwise.router.analytics.experiment_report import load_experiment

    sink = open_sink(config)
    feedback = open_feedback_table(config)
    try:
        return await load_experiment(SinkReports(sink), feedback, experiment, since, until)
    finally:
        sink.close()
        await feedback.aclose()


def _interval(interval: Interval | None, digits: int, scale: float = 1.0) -> str:
    if interval is None:
        return "n/a (too few)"
    mark = " *" if interval.significant else ""
    e, lo, hi = (v * scale for v in (interval.estimate, interval.low, interval.high))
    return f"{e:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(report: ExperimentReport, console: Console) -> None:
    since = datetime.fromtimestamp(report.since, UTC) if report.since > 0 else None
    arms = Table(
        title=f"experiment {report.experiment} (control: {report.control})"
        + (f", since {since:%Y-%m-%d %H:%M} UTC" if since else "")
    )
    for column in ("arm", "requests", "errors", "cost/request USD", "quality", "judged", "p50 ms", "p95 ms"):
        arms.add_column(column, justify="left" if column == "arm" else "right")
    arms.add_column("cache hits", justify="right")
    for a in report.arms:
        arms.add_row(
            a.arm + (" (control)" if a.arm == report.control else ""),
            str(a.requests),
            str(a.errors),
            f"{a.cost_per_request_usd:.6f}",
            "-" if a.quality is None else f"{a.quality:.3f}",
            str(a.judged),
            _ms(a.p50_ms),
            _ms(a.p95_ms),
            f"{a.cache_hit_rate:.1%}",
        )
    console.print(arms)
    diffs = Table(title="difference from control, 95 % CI (* significant: the interval excludes 0)")
    for column in ("arm", "cost/request USD (bootstrap)", "quality (Welch t)", "cache hit rate pp (Wald)"):
        diffs.add_column(column)
    for c in report.comparisons:
        diffs.add_row(
            c.arm,
            _interval(c.cost_per_request, 6),
            _interval(c.quality, 3),
            _interval(c.cache_hit_rate, 1, 100),
        )
    console.print(diffs)
    if report.forced_excluded:
        console.print(f"{report.forced_excluded} request(s) with a forced arm (tierwise-arm) left out")


def plot(report: ExperimentReport, out: Path) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = [c.arm for c in report.comparisons]
    panels = (
        (axes[0], "cost per request vs control (USD)", [c.cost_per_request for c in report.comparisons]),
        (axes[1], "judged quality vs control", [c.quality for c in report.comparisons]),
    )
    for ax, title, intervals in panels:
        for i, interval in enumerate(intervals):
            if interval is None:
                continue
            ax.errorbar(
                [i],
                [interval.estimate],
                yerr=[[interval.estimate - interval.low], [interval.high - interval.estimate]],
                fmt="o",
                capsize=6,
                color="tab:red" if interval.significant else "tab:blue",
            )
        ax.axhline(0, color="grey", linewidth=1)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.5, max(len(names), 1) - 0.5)
        ax.set_title(title)
    figure.suptitle(f"experiment {report.experiment}: arms vs {report.control} (95 % CI)")
    save_figure(figure, out, dpi=120)


def report(
    name: Annotated[str, typer.Argument(help="the experiment's name in the config")],
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file")],
    since: Annotated[
        str | None,
        typer.Option(
            help="first request to count: 36h, 7d, 2w or an ISO date (default: since the definition)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    plot_to: Annotated[
        Path | None, typer.Option("--plot", help="write a PNG of the differences here")
    ] = None,
) -> None:
    """Per arm: requests, cost per request, judged quality, p50 / p95 latency, cache hit rate, and
    each arm's difference from control with 95 % confidence intervals."""
    err = Console(stderr=True)
    now = time.time()
    try:
        cfg = load_config(config)
        experiment = _experiment(cfg, name)
        start = parse_since(since, now) if since is not None else recorded_since(cfg.store.path, name)
        result = asyncio.run(load_report(cfg, experiment, start, now + 1))
    except ValueError as exc:  # ConfigError included
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        from tierwise.router.analytics.experiment_report import report_json

        print(json.dumps(report_json(result), indent=2))
    else:
        render(result, Console())
    if plot_to is not None:
        plot(result, plot_to)
        if not as_json:
            Console().print(f"plot: {plot_to}")
