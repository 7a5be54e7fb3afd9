"""The ``tierwise`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tierwise import __version__
from tierwise.cache.extras import as_missing_extra
from tierwise.router.config import Config, ConfigError, load_config
from tierwise.router.observability.logs import configure_logging
from tierwise.router.service import Service, build_service
from tierwise.router.types import ChatMessage, RequestSpec
from tierwise.training import commands as training_commands
from tierwise.training import embedder_export, learning_commands, verifier_commands
from tierwise.training.cli.anomalies import anomalies
from tierwise.training.cli.estimate import estimate
from tierwise.training.cli.experiment import experiment_app
from tierwise.training.cli.help_format import CACHE, DEMO, MODELS, REPORTS, SERVING, TierwiseGroup
from tierwise.training.cli.keys import keys_app
from tierwise.training.cli.report import report

app = typer.Typer(
    name="tierwise",
    help="Route every LLM prompt to the cheapest tier that answers it well enough.",
    no_args_is_help=True,
    add_completion=False,
    cls=TierwiseGroup,
)
# soft_wrap: an error message stays one line a caller can grep, whatever the terminal's width.
err = Console(stderr=True, soft_wrap=True)


def _error(message: object) -> None:
    """``message`` verbatim: config errors and extras' names ("tierwise[train]") are not rich markup."""
    err.print(f"[red]error:[/red] {escape(str(message))}")


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file", exists=False)]


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        _error(exc)
        raise typer.Exit(2) from None


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tierwise {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    pass


async def _build(config: Config) -> Service:
    try:
        return await build_service(config)
    except ConfigError as exc:
        _error(exc)
        raise typer.Exit(2) from None


@app.command(rich_help_panel=SERVING)
def serve(config: ConfigOption) -> None:
    """Run the gRPC server until SIGTERM / SIGINT (in-flight calls finish within the grace period)."""
    from tierwise.router.server import serve_forever

    cfg = _load(config)
    configure_logging(cfg.logging.level, cfg.logging.format)

    async def main() -> None:
        await serve_forever(await _build(cfg))

    asyncio.run(main())


@app.command(rich_help_panel=SERVING)
def route(
    config: ConfigOption,
    text: Annotated[str, typer.Argument(help="the user prompt")],
    tenant: Annotated[str, typer.Option(help="tenant to decide for")] = "local",
    feature: Annotated[str, typer.Option(help="feature tag")] = "",
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    tier: Annotated[str | None, typer.Option(help="pin a tier")] = None,
    quality_target: Annotated[float | None, typer.Option(help="quality target in [0, 1]")] = None,
) -> None:
    """Print the routing decision for TEXT, without a server and without calling a model."""
    from tierwise.router.wire import decision_pb

    cfg = _load(config)
    if tier is not None and tier not in cfg.tier_names:
        err.print(f"[red]error:[/red] --tier: unknown tier {tier!r}; configured: {', '.join(cfg.tier_names)}")
        raise typer.Exit(2)
    messages = ((ChatMessage("system", system),) if system else ()) + (ChatMessage("user", text),)
    spec = RequestSpec(
        tenant=tenant, messages=messages, feature=feature, tier=tier, quality_target=quality_target
    )

    async def main() -> None:
        service = await _build(cfg)
        try:
            decision = await service.pipeline.route(spec, uuid.uuid4().hex)
        finally:
            await service.aclose()
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(decision_pb(decision), preserving_proto_field_name=True), indent=2))

    asyncio.run(main())


@app.command(rich_help_panel=DEMO)
def demo(
    data: Annotated[
        Path | None, typer.Option(help="RouterBench CSV folder (default: ../shared/data/routerbench)")
    ] = None,
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its state")] = Path(".demo"),
    limit: Annotated[int, typer.Option(help="held-out prompts to send (0 = all)")] = 0,
    concurrency: Annotated[int, typer.Option(help="requests in flight")] = 4,
    policy: Annotated[
        str,
        typer.Option(
            help="routing policy: classifier (trained on first run), cheapest, strongest, random, length"
        ),
    ] = "classifier",
    experiment: Annotated[
        bool,
        typer.Option(
            help="split the traffic by an A/B experiment (classifier vs cheapest), send the recorded scores as "
            "Feedback, and check the experiment report against the offline evaluation"
        ),
    ] = False,
) -> None:
    """Replay RouterBench traffic through a real tierwise server and print a cost / quality / latency report."""
    from tierwise.training.demo.run import run_demo

    sys.exit(
        run_demo(
            data=data,
            workdir=workdir,
            limit=limit,
            concurrency=concurrency,
            policy=policy,
            experiment=experiment,
        )
    )


@app.command("replay-upstream", rich_help_panel=DEMO)
def replay_upstream(
    data: Annotated[Path, typer.Option(help="folder of RouterBench-layout CSV files")],
    port: Annotated[int, typer.Option(help="port to listen on")] = 8001,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    latency_ms: Annotated[float, typer.Option(help="added latency per call")] = 0.0,
) -> None:
    """Serve recorded RouterBench answers over the OpenAI Chat Completions protocol."""
    from tierwise.training.replay import replay_upstream_command

    replay_upstream_command(data=data, port=port, host=host, latency_ms=latency_ms)


# Offline jobs: their modules import their heavy dependencies (LightGBM, matplotlib, torch,
# scikit-learn) inside the commands, so `tierwise serve` loads none of them.
def _group(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True)


router_app = _group(
    "The router's offline jobs: train, evaluate, cross-validate, simulate, calibrate, retrain."
)
router_app.command()(training_commands.train)
router_app.command("eval")(training_commands.eval_router)
router_app.command("cv")(training_commands.cv_router)
router_app.command()(learning_commands.simulate)
router_app.command()(training_commands.calibrate)
router_app.command()(learning_commands.retrain)

cache_app = _group(
    "The semantic cache's offline jobs: train its verifier, evaluate it, export its embedder to ONNX."
)
cache_app.command("train-verifier")(verifier_commands.train_verifier)
cache_app.command("train-cross-encoder")(verifier_commands.train_cross_encoder)
cache_app.command("eval")(verifier_commands.eval_cache)
cache_app.command("export-embedder")(embedder_export.export_embedder_command)

app.add_typer(keys_app(), name="keys", rich_help_panel=SERVING)
app.add_typer(training_commands.models_app(), name="models", rich_help_panel=MODELS)
app.add_typer(router_app, name="router", rich_help_panel=MODELS)
app.add_typer(cache_app, name="cache", rich_help_panel=CACHE)
app.command(rich_help_panel=REPORTS)(report)
app.command(rich_help_panel=REPORTS)(estimate)
app.command(rich_help_panel=REPORTS)(anomalies)
app.add_typer(experiment_app(), name="experiment", rich_help_panel=REPORTS)


def main() -> None:
    try:
        app()
    except ImportError as exc:
        # An offline job run by an install without its extra: say which extra, not a traceback.
        missing = as_missing_extra(exc, f"`tierwise {' '.join(sys.argv[1:3])}`")
        if missing is None:
            raise
        _error(missing)
        sys.exit(1)


if __name__ == "__main__":
    main()
