"""``tierwise router retrain`` and ``tierwise router simulate``: the learning loop's batch side, as commands."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="the service's YAML config file")]


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def retrain(
    config: ConfigOption,
    watch: Annotated[bool, typer.Option(help="run every learning.retrain.interval_s until stopped")] = False,
    force: Annotated[bool, typer.Option(help="train even with too few new judgments")] = False,
) -> None:
    """Train on base data + judged traffic; promote only if the candidate matches the serving model on the gate's rows
    (base validation split + held-out judged requests; never the base test split)."""
    from tierwise.classifier.model import ModelRefused
    from tierwise.classifier.registry import RegistryError
    from tierwise.router.config import ConfigError, load_config
    from tierwise.training.retrain import retrain as run_retrain
    from tierwise.training.train import TrainingError

    try:
        settings = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    while True:
        try:
            outcome = run_retrain(settings, force=force)
        except (FileNotFoundError, ValueError, TrainingError, RegistryError, ModelRefused) as exc:
            if not watch:
                raise _fail(str(exc)) from None
            typer.echo(json.dumps({"error": str(exc)}))
        else:
            summary = {
                "promoted": outcome.promoted,
                "reason": outcome.reason,
                "candidate": outcome.candidate,
                "serving_before": outcome.serving,
            }
            if outcome.report:
                summary["models"] = {
                    k: {m: v[m] for m in ("version", "value", "rows", "base_validation_value")}
                    for k, v in outcome.report["models"].items()
                }
            typer.echo(json.dumps(summary, indent=2))
        if not watch:
            return
        time.sleep(settings.learning.retrain.interval_s)


def simulate(
    data: Annotated[
        Path | None,
        typer.Option(
            "--start-data",
            "--data",
            help="the domain the start model learns from: CSV folder (default: ../shared/data/routerbench)",
        ),
    ] = None,
    traffic: Annotated[
        list[Path] | None,
        typer.Option(
            help="another domain's CSVs (repeatable): their train split is replayed as traffic, their test "
            "split scored every round (default: the start data's own train split, scored on validation)"
        ),
    ] = None,
    traffic_rows: Annotated[
        int | None, typer.Option(min=1, help="replay only this many traffic prompts (default: all)")
    ] = None,
    judged_held_out: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=0.5,
            help="share of judged prompts the gate holds out (default 0.1; cold start 0.15)",
        ),
    ] = None,
    start_model: Annotated[
        Path | None,
        typer.Option(help="a trained model version directory to start from instead of --start-slice"),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="where the simulation keeps its state (emptied first)")
    ] = Path(".simulate"),
    rounds: Annotated[int, typer.Option(min=1, help="serve -> sample -> retrain -> promote rounds")] = 4,
    slice_rows: Annotated[
        int | None,
        typer.Option(
            "--start-slice",
            "--slice",
            min=-1,
            help="start-data train prompts the start model learns from (default 60; -1: all of them; 0: the "
            "cold start: no base data, the random policy serves until the first model beats it)",
        ),
    ] = 60,
    rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of served requests judged")] = 0.5,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 4,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="the gate keeps the serving model when the candidate's APGR on the gate's rows (validation "
            "split + held-out judged prompts) trails it by more than this in at least 95% of paired resamples",
        ),
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="draws the weak start's slice and the traffic's order")] = 0,
    repeats: Annotated[
        int,
        typer.Option(
            min=1, help="run with seeds seed, seed+1, ... and report the per-round mean (each run in seed-K/)"
        ),
    ] = 1,
) -> None:
    """Replay RouterBench traffic through a running tierwise, judge samples (recorded scores), retrain, promote; per round."""
    from tierwise.training.demo.run import find_data
    from tierwise.training.simulate import SimulationSettings, run_simulation

    data_dir = find_data(data)
    if data_dir is None:
        raise _fail("no RouterBench data found: pass --data, or set TIERWISE_DATA")
    settings = SimulationSettings(
        rounds,
        None if slice_rows == -1 else slice_rows,
        rate,
        concurrency,
        tolerance,
        seed,
        traffic=tuple(traffic or ()),
        traffic_rows=traffic_rows,
        start_model=start_model,
        judged_held_out=judged_held_out,
    )
    if repeats == 1:
        run_simulation(data_dir, workdir, settings)
    else:
        from tierwise.training.simulate_summary import run_repeated

        run_repeated(data_dir, workdir, settings, repeats)
