"""The command functions, through typer: models list/promote/rollback, and argument errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.test_classifier_model import build_version
from tierwise.classifier import ModelRegistry
from tierwise.training import commands
from tierwise.training.cli.app import app


def test_models_list_promote_rollback(tmp_path: Path) -> None:
    template = build_version(tmp_path / "template", "v1", gate=0.5)
    registry = ModelRegistry(tmp_path / "registry")
    for version in ("v1", "v2"):
        shutil.copytree(template, registry.version_dir(version))
    runner = CliRunner()
    where = ["--registry", str(registry.root)]
    assert runner.invoke(app, ["models", "promote", "v1", *where]).output.strip() == "serving v1"
    assert runner.invoke(app, ["models", "promote", "v2", *where]).exit_code == 0
    listed = runner.invoke(app, ["models", "list", *where]).output.splitlines()
    assert listed[0].startswith("  v1") and listed[1].startswith("* v2")
    assert "aiq_classifier_threshold=0.5" in listed[1]
    assert runner.invoke(app, ["models", "rollback", *where]).output.strip() == "serving v1"
    refused = runner.invoke(app, ["models", "rollback", *where])
    assert refused.exit_code == 2 and "nothing to roll back" in refused.output
    (registry.version_dir("v2") / "model.onnx").write_bytes(b"tampered")
    refused = runner.invoke(app, ["models", "promote", "v2", *where])
    assert refused.exit_code == 2 and "SHA-256" in refused.output
    assert registry.serving_version() == "v1"


def test_argument_errors_exit_with_a_message(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["router", "eval", "--config", str(tmp_path / "absent.yaml")])
    assert missing.exit_code == 2 and "cannot read config" in missing.output
    no_model = runner.invoke(app, ["router", "calibrate", "--registry", str(tmp_path), "--quality", "0.8"])
    assert no_model.exit_code == 2 and "none is serving" in no_model.output
    assert commands.parse_score_cols(["large=col_d", " small = col_a "]) == {
        "large": "col_d",
        "small": "col_a",
    }
    with pytest.raises(typer.BadParameter, match="TIER=COLUMN"):
        commands.parse_score_cols(["large"])
    # the spelling --score-col-map is accepted as well as --score-col
    mapped = runner.invoke(app, ["router", "train", "--score-col-map", "large", "--registry", str(tmp_path)])
    assert mapped.exit_code == 2 and "TIER=COLUMN" in mapped.output
    wrong_split = runner.invoke(app, ["router", "eval", "--split", "train", "--registry", str(tmp_path)])
    assert wrong_split.exit_code == 2 and "validation" in wrong_split.output
