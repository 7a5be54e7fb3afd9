"""``tierwise demo --experiment``: the demo's held-out RouterBench traffic split by a live A/B
experiment (trained classifier vs always-cheapest), and the experiment report checked against
the offline evaluation of the same model on the same test split.

Every prompt comes from its own simulated user, so the hash splits the prompts between
the arms. After each answer the driver sends ``Feedback`` with the score RouterBench
*recorded* for the model that answered (labelled so in the comment and metadata): a
stand-in for live judgments, which makes the arms' quality comparable with the offline
evaluation. The cache is off: the offline evaluation has none.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tierwise.v1 import tierwise_pb2 as pb

if TYPE_CHECKING:
    from tierwise.v1.tierwise_pb2_grpc import RouterAsyncStub

EXPERIMENT = "demo-classifier-vs-cheapest"
CONTROL, TREATMENT = "cheapest", "classifier"
RECORDED = {"score_origin": "routerbench-recorded"}
RECORDED_COMMENT = "recorded RouterBench score of the answering model (replay, not a live judgment)"


def experiment_section() -> dict[str, Any]:
    return {
        "name": EXPERIMENT,
        "unit": "user",
        "control": CONTROL,
        "arms": [
            {"name": CONTROL, "weight": 1, "policy": "cheapest"},
            {"name": TREATMENT, "weight": 1, "policy": "classifier"},
        ],
    }


def user_of(sample_id: str) -> str:
    return f"replay-{sample_id}"


async def send_recorded_score(stub: RouterAsyncStub, key: str, request_id: str, score: float) -> None:
    await stub.Feedback(
        pb.FeedbackRequest(
            request_id=request_id,
            score=score,
            source=pb.FEEDBACK_SOURCE_APP,
            comment=RECORDED_COMMENT,
            metadata=RECORDED,
        ),
        metadata=(("authorization", f"Bearer {key}"),),
        timeout=30,
    )


def offline_points(data_dir: Path, config_path: Path, registry: Path, console: Console) -> dict[str, Any]:
    """The offline evaluation (training/evaluate.py) of the serving model on the test split: each
    arm's mean recorded score and cost per prompt at the server's quality target and rule."""
    from tierwise.classifier import DEFAULT_EMBEDDER_KEY, ModelRegistry, load_model
    from tierwise.router.config import load_config
    from tierwise.training.evaluate import by_target_curve, evaluate
    from tierwise.training.train import load_data

    config = load_config(config_path)
    models = ModelRegistry(registry)
    version = models.serving_version()
    assert version is not None, "the demo trains and serves a model before the experiment"
    model = load_model(models.version_dir(version), config.tier_names, device="cpu")
    data = load_data(
        data_dir,
        config,
        registry / "embedding-cache",
        "routerbench",
        None,
        None,
        DEFAULT_EMBEDDER_KEY,
        console,
    )
    report = evaluate(model, data, config)
    target, rule = config.routing.default_quality_target, config.routing.classifier.rule
    points = report["tier_set"]["routers"][by_target_curve(rule)]["points"]
    at_target = min(points, key=lambda p: abs(p["parameter"] - target))
    cheapest = report["tiers"][config.tier_names[0]]
    return {
        "prompts": report["prompts"],
        CONTROL: {"quality": cheapest["quality"], "cost": cheapest["cost"]},
        TREATMENT: {"quality": at_target["quality"], "cost": at_target["cost"]},
        "target": target,
        "rule": rule,
    }


def run_experiment_report(data_dir: Path, config_path: Path, workdir: Path, console: Console) -> None:
    """After the run: the experiment report, the offline evaluation beside it, and both as JSON."""
    offline = offline_points(data_dir, config_path, workdir / "models", console)
    result = print_experiment(config_path, offline, console)
    (workdir / "experiment.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"experiment report and offline figures: {workdir / 'experiment.json'}")


def print_experiment(config_path: Path, offline: dict[str, Any] | None, console: Console) -> dict[str, Any]:
    """The experiment report (ledger + feedback), then the offline differences beside its CIs."""
    from tierwise.router.analytics.experiment_report import report_json
    from tierwise.router.config import load_config
    from tierwise.training.cli.experiment import load_report, render

    config = load_config(config_path)
    report = asyncio.run(load_report(config, config.experiments[0], 0.0, time.time() + 1))
    render(report, console)
    result: dict[str, Any] = {"experiment": report_json(report), "offline": offline}
    if offline is None:
        return result
    (comparison,) = report.comparisons
    table = Table(
        title=f"{TREATMENT} - {CONTROL}: live experiment vs offline evaluation ({offline['prompts']} prompts)"
    )
    for column in ("measure", "experiment (95 % CI)", "offline", "offline inside the CI"):
        table.add_column(column)
    checks = {}
    for name, interval, key, digits in (
        ("mean recorded score", comparison.quality, "quality", 3),
        ("cost per request USD", comparison.cost_per_request, "cost", 6),
    ):
        expected = offline[TREATMENT][key] - offline[CONTROL][key]
        inside = interval is not None and interval.low <= expected <= interval.high
        checks[key] = inside
        shown = (
            "n/a"
            if interval is None
            else f"{interval.estimate:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"
        )
        table.add_row(name, shown, f"{expected:+.{digits}f}", "yes" if inside else "NO")
    console.print(table)
    console.print(
        "offline cost is RouterBench's recorded cost per answer; live cost is tokens x the demo tiers' prices. "
        "Scores are the dataset's recorded scores, not live judgments."
    )
    result["offline_inside_ci"] = checks
    return result
