"""Command functions ``router train``, ``router calibrate``, ``router eval``, ``router cv`` and
``models list|promote|rollback``.

They are registered on the ``tierwise`` CLI; heavy imports (LightGBM, onnxruntime,
torch via the embedder, matplotlib) happen inside the bodies, so building the
CLI costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tierwise.training.routerbench import LAYOUTS, Layout

if TYPE_CHECKING:
    from tierwise.classifier.model import ClassifierModel
    from tierwise.router.config import Config
    from tierwise.training.dataset import RoutingData

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench"
DEFAULT_TIERS = Path(__file__).resolve().parent / "routerbench_tiers.yaml"
DEFAULT_REGISTRY = Path("./var/models")

DataOption = Annotated[
    list[Path], typer.Option("--data", help="CSV files or directories of them (repeatable)")
]
ConfigOption = Annotated[
    Path, typer.Option(help="tierwise config whose tiers (names, models, prices) to use")
]
RegistryOption = Annotated[Path, typer.Option(help="model registry directory")]
FormatOption = Annotated[
    str, typer.Option("--format", help="data layout: routerbench, wide, or auto (decided per file)")
]
ScoreColOption = Annotated[
    list[str] | None,
    typer.Option(
        "--score-col", "--score-col-map", help="TIER=COLUMN: the score column of a tier (repeatable)"
    ),
]
CacheOption = Annotated[
    Path | None, typer.Option(help="embedding cache directory (default ~/.cache/tierwise)")
]
VersionOption = Annotated[str | None, typer.Option(help="model version (default: the serving one)")]
StrongOption = Annotated[str | None, typer.Option(help="strong tier (name or model) of the pair")]
WeakOption = Annotated[str | None, typer.Option(help="weak tier (name or model) of the pair")]
QualityBarOption = Annotated[float, typer.Option(help="a score at or above this is adequate")]
LightgbmSeedOption = Annotated[int, typer.Option(help="LightGBM seed")]
TiersCheckOption = Annotated[Path | None, typer.Option(help="check the version's tiers against this config")]


def parse_score_cols(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    mapping = {}
    for item in items:
        tier, sep, column = item.partition("=")
        if not sep or not tier or not column:
            raise typer.BadParameter(f"expected TIER=COLUMN, got {item!r}", param_hint="--score-col")
        mapping[tier.strip()] = column.strip()
    return mapping


def _layout(value: str) -> Layout:
    for layout in LAYOUTS:
        if value == layout:
            return layout
    raise typer.BadParameter(f"must be one of {', '.join(LAYOUTS)}", param_hint="--format")


def _cache(path: Path | None) -> Path:
    from tierwise.training.verifier_data import default_cache_dir

    return path if path is not None else default_cache_dir()


def load_dataset(
    data: list[Path], config: Config, layout: str, score_col: list[str] | None, cache_dir: Path | None
) -> RoutingData:
    """The rows of ``data`` with features, as every command here reads them (embeddings cached on disk)."""
    from rich.console import Console

    from tierwise.classifier.model import DEFAULT_EMBEDDER_KEY
    from tierwise.training.train import load_data

    return load_data(
        data,
        config,
        _cache(cache_dir),
        _layout(layout),
        parse_score_cols(score_col),
        None,
        DEFAULT_EMBEDDER_KEY,
        Console(stderr=True),
    )


def load_evaluation_inputs(
    data: list[Path],
    config: Path,
    registry: Path,
    version: str | None,
    layout: str,
    score_col: list[str] | None,
    cache_dir: Path | None,
) -> tuple[Config, ClassifierModel, RoutingData]:
    """The tiers config, a registered model (the serving one by default) and the rows it is judged on."""
    from tierwise.classifier.model import load_model
    from tierwise.router.config import load_config

    settings = load_config(config)
    model = load_model(model_dir(registry, version), settings.tier_names, device="cpu")
    return settings, model, load_dataset(data, settings, layout, score_col, cache_dir)


def _fail(message: str) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


@contextmanager
def _exit_2_on(*errors: type[Exception]) -> Iterator[None]:
    """Any of ``errors`` raised in the block becomes an error line on stderr and exit code 2."""
    try:
        yield
    except errors as exc:
        raise _fail(str(exc)) from None


@contextmanager
def _exit_2_on_evaluation_errors() -> Iterator[None]:
    """``_exit_2_on`` the errors of judging a registered model: a bad config, a model that refuses the
    tiers, missing files, bad values."""
    from tierwise.classifier.model import ModelRefused
    from tierwise.router.config import ConfigError

    with _exit_2_on(ConfigError, ModelRefused, FileNotFoundError, ValueError):
        yield


NeighbourWeightOption = Annotated[
    float,
    typer.Option(help="the kNN vote's share of the served P(adequate), in [0, 1] (0: the trees alone)"),
]


def train(
    data: DataOption = [DEFAULT_DATA],  # noqa: B006 - typer reads the default, nothing mutates it
    config: ConfigOption = DEFAULT_TIERS,
    registry: RegistryOption = DEFAULT_REGISTRY,
    layout: FormatOption = "routerbench",
    score_col: ScoreColOption = None,
    quality_bar: QualityBarOption = 0.5,
    cache_dir: CacheOption = None,
    seed: LightgbmSeedOption = 0,
    promote: Annotated[bool, typer.Option(help="promote the new version (behind the gate)")] = False,
    neighbour_weight: NeighbourWeightOption = 0.5,
) -> None:
    """Train a model version on the train split, select and calibrate on validation, register it."""
    from tierwise.router.config import ConfigError, load_config
    from tierwise.training.train import train as train_version

    with _exit_2_on(ConfigError, FileNotFoundError, ValueError):
        settings = load_config(config)
        dataset = load_dataset(data, settings, layout, score_col, cache_dir)
        result = train_version(
            data,
            settings,
            registry,
            quality_bar=quality_bar,
            seed=seed,
            prepared=dataset,
            neighbour_weight=neighbour_weight,
        )
    summary = {"version": result.version, "directory": str(result.directory), **result.manifest.metrics}
    if promote:
        from tierwise.classifier.registry import ModelRegistry, RegistryError

        try:
            ModelRegistry(registry).promote(result.version, expected_tiers=settings.tier_names)
        except (RegistryError, ValueError) as exc:
            raise _fail(f"trained {result.version} but did not promote it: {exc}") from None
        summary["promoted"] = True
    typer.echo(json.dumps(summary, indent=2))


def model_dir(registry: Path, version: str | None) -> Path:
    """The directory of ``version``, or of the serving version when None (exit 2 when none serves)."""
    from tierwise.classifier.registry import ModelRegistry

    store = ModelRegistry(registry)
    chosen = version or store.serving_version()
    if chosen is None:
        raise _fail(f"no version given and none is serving in {registry}")
    return store.version_dir(chosen)


def calibrate(
    data: DataOption = [DEFAULT_DATA],  # noqa: B006
    config: ConfigOption = DEFAULT_TIERS,
    registry: RegistryOption = DEFAULT_REGISTRY,
    version: VersionOption = None,
    rule: Annotated[str, typer.Option(help="decision rule: threshold or utility")] = "threshold",
    strongest_share: Annotated[
        float | None, typer.Option(help="largest share of prompts the strongest tier may take")
    ] = None,
    quality: Annotated[float | None, typer.Option(help="mean score to reach")] = None,
    relative: Annotated[bool, typer.Option(help="--quality is a share of the strongest tier's mean")] = False,
    layout: FormatOption = "routerbench",
    score_col: ScoreColOption = None,
    cache_dir: CacheOption = None,
) -> None:
    """Choose the default quality target on the validation split (for routing.default_quality_target)."""
    from dataclasses import asdict

    from tierwise.training.calibrate import choose_quality_target

    if rule not in ("threshold", "utility"):
        raise typer.BadParameter("must be 'threshold' or 'utility'", param_hint="--rule")
    with _exit_2_on_evaluation_errors():
        settings, model, dataset = load_evaluation_inputs(
            data, config, registry, version, layout, score_col, cache_dir
        )
        choice = choose_quality_target(
            model,
            dataset,
            settings,
            "utility" if rule == "utility" else "threshold",
            strongest_share=strongest_share,
            quality=quality,
            relative_to_strongest=relative,
        )
    typer.echo(json.dumps({"model_version": model.version, **asdict(choice)}, indent=2))


def eval_router(
    data: DataOption = [DEFAULT_DATA],  # noqa: B006
    config: ConfigOption = DEFAULT_TIERS,
    registry: RegistryOption = DEFAULT_REGISTRY,
    version: VersionOption = None,
    out: Annotated[Path, typer.Option(help="directory for report.json and report.png")] = Path(
        "./eval-router"
    ),
    strong: StrongOption = None,
    weak: WeakOption = None,
    layout: FormatOption = "routerbench",
    score_col: ScoreColOption = None,
    cache_dir: CacheOption = None,
    split: Annotated[
        str,
        typer.Option(
            help="held-out split: test (results), validation (while tuning), or all (every row of a set "
            "the model never saw; needs --fit-data)"
        ),
    ] = "test",
    fit_data: Annotated[
        list[Path] | None,
        typer.Option(
            "--fit-data", help="fit the baselines on this set's train split instead (repeatable; --split all)"
        ),
    ] = None,
) -> None:
    """Cost-quality report of the router and the baselines on the held-out (test) split."""
    from tierwise.training.evaluate import EVAL_SPLITS, evaluate, summary_table
    from tierwise.training.plots import plot_report

    chosen = next((s for s in EVAL_SPLITS if s == split), None)
    if chosen is None:
        raise typer.BadParameter(f"must be one of {', '.join(EVAL_SPLITS)}", param_hint="--split")
    if chosen == "all" and not fit_data:
        raise typer.BadParameter(
            "--split all scores every row: name the set to fit the baselines on with --fit-data",
            param_hint="--fit-data",
        )
    with _exit_2_on_evaluation_errors():
        settings, model, dataset = load_evaluation_inputs(
            data, config, registry, version, layout, score_col, cache_dir
        )
        fit_on = load_dataset(fit_data, settings, layout, score_col, cache_dir) if fit_data else None
        report = evaluate(model, dataset, settings, strong=strong, weak=weak, split=chosen, fit_on=fit_on)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_report(report, out / "report.png")
    typer.echo(summary_table(report))
    typer.echo(f"wrote {out / 'report.json'} and {out / 'report.png'}")


def cv_router(
    data: DataOption = [DEFAULT_DATA],  # noqa: B006
    config: ConfigOption = DEFAULT_TIERS,
    folds: Annotated[int, typer.Option(help="number of folds (at least 3)")] = 5,
    fold_seed: Annotated[str, typer.Option(help="salt of the sample-id hash that deals the folds")] = (
        "tierwise-cv-1"
    ),
    seed: LightgbmSeedOption = 0,
    quality_bar: QualityBarOption = 0.5,
    strong: StrongOption = None,
    weak: WeakOption = None,
    layout: FormatOption = "routerbench",
    score_col: ScoreColOption = None,
    cache_dir: CacheOption = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full result here")] = None,
    neighbour_weight: NeighbourWeightOption = 0.5,
    by: Annotated[
        str,
        typer.Option(
            help="fold: k folds dealt by sample id; task: leave one task out in turn; adapt: --traffic's "
            "train+validation rows in k folds, each scored by the model retrained on --data plus the other "
            "folds as judged traffic, beside the start model and the kNN vote on those judged rows"
        ),
    ] = "fold",
    traffic: Annotated[
        list[Path] | None,
        typer.Option(help="--by adapt: the traffic domain's CSVs (repeatable), read with --format"),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option(help="--by task: leave out only this task (repeatable; default all)")
    ] = None,
    left_out: Annotated[
        str,
        typer.Option(
            help="--by task: score the left-out task's train+validation rows (pool) or its test split (test)"
        ),
    ] = "pool",
    repeats: Annotated[
        int, typer.Option(help="--by task or adapt: LightGBM seeds per left-out task or fold")
    ] = 1,
) -> None:
    """Cross-validate training + evaluation on the train and validation splits (the test split is unused)."""
    from tierwise.router.config import ConfigError, load_config
    from tierwise.training import adapt_crossval, crossval, task_crossval

    if by not in ("fold", "task", "adapt"):
        raise typer.BadParameter("must be 'fold', 'task' or 'adapt'", param_hint="--by")
    if (by == "adapt") != bool(traffic):
        raise typer.BadParameter("--by adapt needs --traffic, and only it reads it", param_hint="--traffic")
    side = next((s for s in task_crossval.LEFT_OUT if s == left_out), None)
    if side is None:
        raise typer.BadParameter("must be 'pool' or 'test'", param_hint="--left-out")
    with _exit_2_on(ConfigError, FileNotFoundError, ValueError):
        settings = load_config(config)
        dataset = load_dataset(data, settings, layout, score_col, cache_dir)
        training = crossval.FoldTraining(
            quality_bar=quality_bar,
            strong=strong,
            weak=weak,
            lightgbm_seed=seed,
            neighbour_weight=neighbour_weight,
        )
        if by == "adapt":
            result = adapt_crossval.adaptation_cv(
                dataset,
                load_dataset(traffic or [], settings, layout, score_col, cache_dir),
                settings,
                folds=folds,
                fold_seed=fold_seed,
                repeats=repeats,
                seed=seed,
                neighbour_weight=neighbour_weight,
            )
            lines = adapt_crossval.summary_lines(result)
        elif by == "task":
            result = task_crossval.leave_one_task_out(
                dataset, settings, tasks=task, left_out=side, repeats=repeats, training=training
            )
            lines = task_crossval.summary_lines(result)
        else:
            result = crossval.cross_validate(
                dataset, settings, folds=folds, seed=fold_seed, training=training
            )
            lines = crossval.summary_lines(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    typer.echo(lines)


def models_list(registry: RegistryOption = DEFAULT_REGISTRY) -> None:
    """The registry's versions, the serving one marked."""
    from tierwise.classifier.registry import ModelRegistry

    for info in ModelRegistry(registry).list():
        mark = "*" if info.serving else " "
        gate = "" if info.gate is None else f"  {info.gate.get('name')}={info.gate.get('value')}"
        problem = "" if info.error is None else f"  UNREADABLE: {info.error}"
        typer.echo(f"{mark} {info.version}  {info.created_at}{gate}{problem}")


def models_promote(
    version: Annotated[str, typer.Argument(help="the version to serve")],
    registry: RegistryOption = DEFAULT_REGISTRY,
    config: TiersCheckOption = None,
    force: Annotated[bool, typer.Option(help="promote even if the held-out gate says no")] = False,
) -> None:
    """Serve a version (replicas watching the registry swap to it)."""
    from tierwise.classifier.model import ModelRefused
    from tierwise.classifier.registry import ModelRegistry, RegistryError
    from tierwise.router.config import ConfigError, load_config

    with _exit_2_on(ConfigError, ModelRefused, RegistryError):
        tiers = load_config(config).tier_names if config is not None else None
        pointer = ModelRegistry(registry).promote(version, force=force, expected_tiers=tiers)
    typer.echo(f"serving {pointer.version}")


def models_rollback(
    registry: RegistryOption = DEFAULT_REGISTRY,
    config: TiersCheckOption = None,
) -> None:
    """Serve the previously served version again."""
    from tierwise.classifier.model import ModelRefused
    from tierwise.classifier.registry import ModelRegistry, RegistryError
    from tierwise.router.config import ConfigError, load_config

    with _exit_2_on(ConfigError, ModelRefused, RegistryError):
        tiers = load_config(config).tier_names if config is not None else None
        pointer = ModelRegistry(registry).rollback(expected_tiers=tiers)
    typer.echo(f"serving {pointer.version}")


def models_app() -> typer.Typer:
    """The ``models`` command group, for ``app.add_typer(models_app(), name="models")``."""
    group = typer.Typer(help="The classifier model registry: list, promote, roll back.", no_args_is_help=True)
    group.command("list")(models_list)
    group.command("promote")(models_promote)
    group.command("rollback")(models_rollback)
    return group
