"""``tierwise estimate``: monthly tokens and cost of a planned workload per routing policy.

The sample path reads data and the serving model with the loaders ``tierwise
router eval`` uses (``tierwise.training.commands``), imported inside the command so the
CLI stays cheap to build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from tierwise.router.config import Config, ConfigError, load_config
from tierwise.training.estimate import projection as core
from tierwise.training.estimate.output import estimate_document, plot_document, print_document
from tierwise.training.estimate.volume import EstimateInputError, parse_volume

if TYPE_CHECKING:
    from tierwise.training.estimate.sample import SampleProfile, SampleSplit

DEFAULT_PRICE_CHANGE = "+20%"  # of the strongest tier, when --sensitivity names no --price-change


def _split(value: str) -> SampleSplit:
    splits: dict[str, SampleSplit] = {
        "train": "train",
        "validation": "validation",
        "test": "test",
        "all": "all",
    }
    if value in splits:
        return splits[value]
    raise EstimateInputError(f"--split: must be one of train, validation, test or all, got {value!r}")


def _sample(
    paths: list[Path],
    settings: Config,
    split: SampleSplit,
    policies: list[core.PolicySpec],
    options: dict[str, Any],
) -> tuple[SampleProfile, dict[str, Any]]:
    """Route the sample with the serving classifier, through ``router eval``'s loaders."""
    from tierwise.classifier.model import load_model
    from tierwise.training.commands import load_dataset, model_dir, parse_score_cols
    from tierwise.training.dataset import column_map
    from tierwise.training.estimate.sample import sample_profile
    from tierwise.training.routerbench import Layout, csv_files, load_rows

    targets = [p.target for p in policies if p.target is not None]
    model = None
    if targets:  # before the data: a missing model fails before the prompts are embedded
        registry = options["registry"] or settings.routing.classifier.registry
        model = load_model(model_dir(registry, options["version"]), settings.tier_names, device="cpu")
    data = load_dataset(paths, settings, options["layout"], options["score_col"], options["cache_dir"])
    columns = column_map(settings, parse_score_cols(options["score_col"]))
    layout: Layout = "wide" if options["layout"] == "wide" else "routerbench"
    answers = load_rows(csv_files(paths), format=layout, score_col_map=columns)
    rule = settings.routing.classifier.rule
    profile = sample_profile(data, answers, settings, split, model, rule, targets)
    cells = profile.rows * len(settings.tiers)
    info = {
        "paths": [str(p) for p in paths],
        "split": split,
        "rows": profile.rows,
        "rows_without_every_score": profile.dropped,
        "model_version": profile.model_version,
        "rule": profile.rule,
        "output_tokens_from_recorded_answers": round(profile.recorded_outputs / cells, 6),
    }
    return profile, info


def estimate(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config: tiers, prices, classifier")],
    volume: Annotated[
        str | None,
        typer.Option(
            help="conversations_per_day=N,messages=N,tokens_per_message=N,output_tokens=N"
            "[,system_prompt_tokens=N][,days_per_month=N]"
        ),
    ] = None,
    sample: Annotated[
        list[Path] | None, typer.Option(help="RouterBench-layout CSVs or folders of them (repeatable)")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="strongest, cheapest, classifier or classifier@TARGET (repeatable; default: all)"),
    ] = None,
    cache_hit_rate: Annotated[
        str | None, typer.Option(help="share of requests the cache answers (default: measured on --sample)")
    ] = None,
    sensitivity: Annotated[bool, typer.Option(help="add the sensitivity table")] = False,
    price_change: Annotated[
        list[str] | None,
        typer.Option(
            help=f"TIER=+N% or all=-N% for the sensitivity table (default: strongest {DEFAULT_PRICE_CHANGE})"
        ),
    ] = None,
    requests_per_day: Annotated[
        int | None, typer.Option(min=1, help="traffic of a --sample alone (default: its rows, as one day)")
    ] = None,
    split: Annotated[str, typer.Option(help="rows of the sample: train, validation, test or all")] = "test",
    sample_format: Annotated[str, typer.Option(help="sample layout: routerbench or wide")] = "routerbench",
    score_col: Annotated[list[str] | None, typer.Option(help="TIER=COLUMN score column (repeatable)")] = None,
    registry: Annotated[Path | None, typer.Option(help="model registry (default: the config's)")] = None,
    version: Annotated[str | None, typer.Option(help="model version (default: the serving one)")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="embedding cache directory")] = None,
    format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    plot: Annotated[Path | None, typer.Option(help="write a PNG of cost vs expected quality")] = None,
) -> None:
    """Monthly tokens and cost of a planned workload per routing policy, with the expected quality."""
    from tierwise.classifier.model import ModelRefused

    err = Console(stderr=True)
    try:
        if format not in ("table", "json"):
            raise EstimateInputError(f"--format: must be table or json, got {format!r}")
        if volume is None and not sample:
            raise EstimateInputError("give --volume SPEC, --sample FILE, or both")
        settings = load_config(config)
        spec = None if volume is None else parse_volume(volume)
        policies = core.parse_policies(policy or [], settings.routing.default_quality_target)
        rate = core.parse_hit_rate(cache_hit_rate)
        changes = core.parse_price_changes(
            price_change or [f"{settings.tier_names[-1]}={DEFAULT_PRICE_CHANGE}"], settings
        )
        chosen_split = _split(split)
        profile, info = None, None
        if sample:
            options = {"layout": sample_format, "score_col": score_col, "registry": registry,
                       "version": version, "cache_dir": cache_dir}  # fmt: skip
            profile, info = _sample(sample, settings, chosen_split, policies, options)
        workload = core.Workload(spec, profile, requests_per_day, rate)
        estimates = core.estimate(settings, workload, policies)
        scenarios = core.sensitivity(settings, workload, policies, changes) if sensitivity else None
    except (EstimateInputError, ConfigError, ModelRefused, FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    document = estimate_document(workload, core.cache_rate(workload), estimates, scenarios, info)
    if format == "json":
        typer.echo(json.dumps(document, indent=2))
    else:
        print_document(document, Console())
    if plot is not None:
        plot_document(document, plot)
        err.print(f"wrote {plot}")
