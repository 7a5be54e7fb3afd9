"""``tierwise estimate``: the volume arithmetic done by hand, the sensitivity rows, bad input, the cache
measured on a sample, and the sample path against ``tierwise router eval`` on the same rows."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.test_training_end_to_end import TIERS, embedder, slice_config, slices  # noqa: F401 - fixtures
from tierwise.cache.embedder import SentenceEmbedder
from tierwise.classifier import ModelRegistry
from tierwise.training.cli.app import app
from tierwise.training.estimate.projection import (
    PolicySpec,
    Workload,
    divide_usd,
    estimate_policy,
    parse_policies,
)
from tierwise.training.estimate.sample import SampleProfile, exact_repeats
from tierwise.training.estimate.volume import VolumeSpec, conversation_tokens, parse_volume
from tierwise.training.evaluate import by_target_curve
from tierwise.training.fit import Candidate
from tierwise.training.train import train

SPEC = "conversations_per_day=15,messages=6,tokens_per_message=50,output_tokens=150,system_prompt_tokens=20"


def write_config(path: Path, routing: dict[str, Any] | None = None) -> Path:
    """The slice's four tiers (small 0.2 / 0.2 … large 10 / 30 USD per million tokens) as a YAML file."""
    document = slice_config().model_dump(mode="json", include={"tiers"})
    if routing is not None:
        document["routing"] = routing
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def run_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["estimate", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def by_policy(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["policy"]: p for p in document["policies"]}


def test_turn_by_turn_history_matches_the_closed_form() -> None:
    for m, s, u, o in [(1, 0, 50, 150), (6, 20, 50, 150), (7, 3, 11, 0), (12, 500, 1, 999)]:
        history, inputs = s, 0
        for _ in range(m):
            history += u  # the turn's own message joins the history …
            inputs += history  # … the whole history is sent …
            history += o  # … and the answer joins it for the next turn
        spec = VolumeSpec(1, m, u, o, s)
        assert conversation_tokens(spec).input_tokens == inputs
        assert conversation_tokens(spec).output_tokens == m * o


def test_volume_spec_reproduces_the_hand_calculation(tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiers.yaml")
    # turn k input = 20 + 50k + 150(k-1): 70, 270, 470, 670, 870, 1070 -> 3420 a conversation, output 6*150
    # a month: 15 * 30 = 450 conversations -> 1,539,000 input and 405,000 output tokens, 2,700 requests
    # large: 1.539 * 10 + 0.405 * 30 = 15.39 + 12.15 = 27.54; small: (1.539 + 0.405) * 0.2 = 0.3888
    document = run_json("--config", str(config), "--volume", SPEC)
    load = document["workload"]
    assert (load["requests_per_month"], load["input_tokens_per_month"], load["output_tokens_per_month"]) == (
        2700,
        1_539_000,
        405_000,
    )
    policies = by_policy(document)
    assert Decimal(policies["strongest"]["monthly_usd"]) == Decimal("27.54")
    assert Decimal(policies["strongest"]["usd_per_request"]) == Decimal("0.0102")
    assert Decimal(policies["cheapest"]["monthly_usd"]) == Decimal("0.3888")
    assert policies["strongest"]["tier_mix"] == {"small": 0.0, "medium": 0.0, "standard": 0.0, "large": 1.0}
    assert policies["strongest"]["expected_quality"] is None  # no sample, no recorded scores
    for name in ("classifier@0.5", "classifier@0.7", "classifier@0.8", "classifier@0.9"):
        assert policies[name]["monthly_usd"] is None and policies[name]["note"] == "needs --sample"
    assert document["cache"] == {"hit_rate": 0.0, "source": "none"}
    # a quarter of the requests answered by the cache cost nothing upstream: 27.54 * 0.75 = 20.655
    cached = by_policy(run_json("--config", str(config), "--volume", SPEC, "--cache-hit-rate", "0.25"))
    assert Decimal(cached["strongest"]["monthly_usd"]) == Decimal("20.655")


def test_sensitivity_rows(tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiers.yaml")
    document = run_json(
        "--config", str(config), "--volume", SPEC, "--policy", "strongest", "--policy", "cheapest",
        "--sensitivity", "--price-change", "large=+20%",
    )  # fmt: skip
    rows = {row["scenario"]: row for row in document["sensitivity"]}
    assert list(rows) == ["base", "conversation length x2", "traffic x10", "price large x1.2"]

    def usd(scenario: str, policy: str) -> Decimal:
        return Decimal(rows[scenario]["monthly_usd"][policy])

    assert usd("base", "strongest") == Decimal("27.54")
    # 12 turns: 12*20 + 50*78 + 150*66 = 14,040 input, 1,800 output a conversation; 450 a month
    # large: 6.318 * 10 + 0.81 * 30 = 87.48; small: (6.318 + 0.81) * 0.2 = 1.4256
    assert usd("conversation length x2", "strongest") == Decimal("87.48")
    assert usd("conversation length x2", "cheapest") == Decimal("1.4256")
    assert usd("traffic x10", "strongest") == Decimal("275.4")
    assert usd("price large x1.2", "strongest") == Decimal("33.048")
    assert usd("price large x1.2", "cheapest") == Decimal("0.3888")  # small's price did not change
    assert rows["traffic x10"]["change_vs_base"]["cheapest"] == pytest.approx(9.0)
    assert rows["price large x1.2"]["change_vs_base"]["strongest"] == pytest.approx(0.2)
    assert rows["price large x1.2"]["change_vs_base"]["cheapest"] == 0.0
    # without --price-change the strongest tier's price rises 20 %; the table prints every scenario
    table = CliRunner().invoke(
        app, ["estimate", "--config", str(config), "--volume", SPEC, "--sensitivity"], env={"COLUMNS": "200"}
    )
    assert table.exit_code == 0, table.output
    assert "price large x1.2" in table.stdout and "$87.48 (+218%)" in table.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--volume", "conversations_per_day=15,messages=6"], "--volume: missing tokens_per_message"),
        (["--volume", SPEC + ",turns=3"], "--volume: unknown key 'turns'"),
        (["--volume", SPEC.replace("=15", "=1.5")], "conversations_per_day must be a whole number"),
        (["--volume", SPEC.replace("messages=6", "messages=0")], "messages must be at least 1"),
        (["--volume", "conversations_per_day"], "expected KEY=VALUE"),
        (["--volume", SPEC, "--policy", "oracle"], "--policy: unknown policy 'oracle'"),
        (["--volume", SPEC, "--policy", "classifier@1.5"], "--policy: the quality target must be in [0, 1]"),
        (["--volume", SPEC, "--cache-hit-rate", "1.5"], "--cache-hit-rate: must be in [0, 1]"),
        (["--volume", SPEC, "--cache-hit-rate", "lots"], "--cache-hit-rate: not a number"),
        (["--volume", SPEC, "--price-change", "huge=+5%"], "--price-change: unknown tier 'huge'"),
        (["--volume", SPEC, "--price-change", "large=20"], "--price-change: expected TIER=+N%"),
        (["--volume", SPEC, "--format", "xml"], "--format: must be table or json"),
        ([], "give --volume SPEC, --sample FILE, or both"),
        (["--volume", SPEC, "--split", "dev"], "--split: must be one of"),
        (
            ["--sample", "/nonexistent/rows.csv", "--policy", "strongest"],
            "no such file or directory: /nonexistent/rows.csv",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_config(tmp_path / "tiers.yaml")
    result = CliRunner().invoke(app, ["estimate", "--config", str(config), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_a_sample_without_a_serving_model_is_a_clear_error(shared_data: Path, tmp_path: Path) -> None:
    routing = {"policy": "classifier", "classifier": {"registry": str(tmp_path / "empty")}}
    config = write_config(tmp_path / "config.yaml", routing)
    sample = str(shared_data / "routerbench")
    result = CliRunner().invoke(app, ["estimate", "--config", str(config), "--sample", sample])
    assert result.exit_code == 2 and "none is serving" in result.output


def test_cache_measured_on_a_sample_leaves_out_the_repeated_prompts() -> None:
    assert exact_repeats(["Hi there\r\n", "hello", "Hi there\n", " hello "]).tolist() == [
        False,
        False,
        True,
        True,
    ]
    config = slice_config()
    # three prompts, the third repeats the first; the classifier sends the middle one to large (tier 3)
    profile = SampleProfile(
        split="test",
        dropped=0,
        input_tokens=np.array(
            [[100, 95, 95, 90], [2000, 1900, 1900, 1800], [100, 95, 95, 90]], dtype=np.int64
        ),
        output_tokens=np.array([[10, 15, 15, 20], [300, 350, 350, 400], [10, 15, 15, 20]], dtype=np.int64),
        recorded_outputs=12,
        scores=np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]),
        recorded_costs=np.zeros((3, 4)),
        duplicates=np.array([False, False, True]),
        model_version="v",
        rule="threshold",
        classifier_choices={0.8: np.array([0, 3, 0], dtype=np.int64)},
    )
    measured = estimate_policy(config, Workload(None, profile, 3, None), PolicySpec("classifier", 0.8))
    # rows 1 and 2 reach a tier: small (100 + 10) * 0.2 / 1e6 + large (1800 * 10 + 400 * 30) / 1e6 = 0.030022
    # over the 3 sample rows; 3 a day for 30 days is 90 requests = 30 samples' worth
    assert measured.monthly_usd == Decimal("0.030022") * 30
    assert measured.tier_mix == pytest.approx(
        {"small": 2 / 3, "medium": 0.0, "standard": 0.0, "large": 1 / 3}
    )
    assert measured.expected_quality == 1.0
    assert measured.input_tokens == (100 + 1800 + 100) * 30
    given = estimate_policy(config, Workload(None, profile, 3, Decimal("0.5")), PolicySpec("classifier", 0.8))
    assert given.monthly_usd == (Decimal("0.030022") + Decimal("0.000022")) * 30 / 2
    # a volume with a sample: the sample's mix and measured hit rate (1 of 3) applied to the volume's cost
    volume = parse_volume(SPEC)
    mixed = estimate_policy(config, Workload(volume, profile, None, None), PolicySpec("classifier", 0.8))
    assert mixed.monthly_usd is not None
    assert mixed.monthly_usd == pytest.approx((2 * Decimal("0.3888") + Decimal("27.54")) / 3 * 2 / 3)


def test_divisions_are_exact_where_they_can_be() -> None:
    assert divide_usd(Decimal("27.54"), 2700) == Decimal("0.0102")
    assert divide_usd(Decimal("0.000000123456"), 1) == Decimal("0.000000123456")
    assert divide_usd(Decimal(1), 3) == Decimal("0.333333333333")


def test_policies_default_and_expand() -> None:
    names = [p.name for p in parse_policies([], 0.85)]
    assert names == ["strongest", "cheapest", *(f"classifier@{t}" for t in (0.5, 0.7, 0.8, 0.85, 0.9))]
    assert [p.name for p in parse_policies(["classifier@0.8", "classifier@0.80"], 0.8)] == ["classifier@0.8"]


@pytest.fixture(scope="module")
def trained(
    slices: tuple[Path, Path],  # noqa: F811 - the fixture imported above
    embedder: SentenceEmbedder,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
    embeddings: Path,
) -> tuple[Path, Path, Path]:
    """A small model trained on the slice and promoted: (data, registry, embedding cache)."""
    routerbench_dir, _ = slices
    root = tmp_path_factory.mktemp("estimate")
    result = train(
        routerbench_dir,
        slice_config(),
        root / "registry",
        candidates=[Candidate("joint", 8, rounds=30)],
        cache_dir=embeddings,
        embedder=lambda: embedder,
    )
    ModelRegistry(root / "registry").promote(result.version, expected_tiers=slice_config().tier_names)
    return routerbench_dir, root / "registry", embeddings


@pytest.mark.parametrize("rule", ["threshold", "utility"])
def test_sample_agrees_with_eval_router_on_the_same_rows(
    trained: tuple[Path, Path, Path], tmp_path: Path, rule: str
) -> None:
    data, registry, embeddings = trained
    routing = {"policy": "classifier", "classifier": {"registry": str(registry), "rule": rule}}
    config = write_config(tmp_path / "config.yaml", routing)
    common = ["--config", str(config), "--cache-dir", str(embeddings)]
    evaluated = CliRunner().invoke(
        app,
        ["router", "eval", "--data", str(data), "--registry", str(registry), "--out", str(tmp_path), *common],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "report.json").read_text())
    policies = ["strongest", "cheapest", "classifier@0.8", "classifier@0.9"]
    estimate = run_json(
        "--sample", str(data), *common, *(x for p in policies for x in ("--policy", p)),
        "--plot", str(tmp_path / "estimate.png"),
    )  # fmt: skip
    sample = estimate["sample"]
    assert (sample["split"], sample["rows"], sample["rule"]) == ("test", report["prompts"], rule)
    assert sample["model_version"] == report["model_version"]
    rows = by_policy(estimate)
    served = report["tier_set"]["routers"][by_target_curve("utility" if rule == "utility" else "threshold")]
    curve = {p["parameter"]: p for p in served["points"]}
    for target in (0.8, 0.9):
        mine, theirs = rows[f"classifier@{target}"], curve[target]
        assert mine["expected_quality"] == pytest.approx(theirs["quality"], abs=1e-12)
        assert mine["tier_mix"]["large"] == pytest.approx(theirs["strong_share"], abs=1e-12)
        assert mine["recorded_usd_per_request"] == pytest.approx(theirs["cost"], rel=1e-12)
        assert sum(mine["tier_mix"].values()) == pytest.approx(1.0)
    for policy, tier in (("strongest", "large"), ("cheapest", "small")):
        assert rows[policy]["expected_quality"] == pytest.approx(report["tiers"][tier]["quality"], abs=1e-6)
        assert rows[policy]["recorded_usd_per_request"] == pytest.approx(
            report["tiers"][tier]["cost"], abs=1e-9
        )
    # a sample alone: its rows are one day's traffic, 30 days a month, priced from the token counts
    strongest = rows["strongest"]
    assert strongest["requests"] == 30 * sample["rows"]
    per_request = Decimal(strongest["monthly_usd"]) / strongest["requests"]
    assert per_request == pytest.approx(Decimal(strongest["usd_per_request"]))
    assert sample["output_tokens_from_recorded_answers"] > 0.9
    assert (tmp_path / "estimate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
