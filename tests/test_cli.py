"""The command line, run as a user would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from tests.test_config import ISSUE_EXAMPLE
from tierwise import __version__
from tierwise.training.cli.app import app

# typer's type labels: <bool>, <str>, <path>, <list[Path]>, <int range>
TYPE_LABEL = re.compile(r"<(?:bool|str|int|float|path|list)[^>]*>")


def tierwise(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierwise.training.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SMALL_API_KEY": "sk-test", **(env or {})},
    )


def test_route_prints_the_decision_without_calling_a_model(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    # Nothing listens on these upstream ports: route must not call them.
    config.write_text(ISSUE_EXAMPLE.replace("./var", str(tmp_path / "var")))
    result = tierwise("route", "--config", str(config), "What is the capital of France?")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["tier"] == "small" and decision["model"] == "mistral-7b-chat"
    assert decision["reason"] == "cheapest" and int(decision["estimated_input_tokens"]) > 0

    pinned = tierwise("route", "--config", str(config), "--tier", "large", "hi")
    assert json.loads(pinned.stdout)["reason"] == "pinned"


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ISSUE_EXAMPLE.replace("routing: {policy: cheapest}", "routing: {policy: smartest}"))
    result = tierwise("route", "--config", str(config), "hi")
    assert result.returncode == 2
    assert "routing.policy" in result.stderr


def test_unknown_pinned_tier_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ISSUE_EXAMPLE)
    result = tierwise("route", "--config", str(config), "--tier", "huge", "hi")
    assert result.returncode == 2 and "--tier" in result.stderr


def test_missing_upstream_key_variable_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ISSUE_EXAMPLE)
    result = tierwise("route", "--config", str(config), "hi", env={"SMALL_API_KEY": ""})
    assert result.returncode == 2
    assert "SMALL_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_version_prints_the_package_version() -> None:
    result = tierwise("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"tierwise {__version__}\n"


def test_help_lists_the_commands_in_panels_without_type_labels() -> None:
    result = tierwise("--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    panels = [line for line in result.stdout.splitlines() if line.startswith("╭─")]
    titles = [line.strip("╭─╮ ") for line in panels]
    assert titles == ["Options", "Serving", "Models and training", "Cache", "Reports", "Demo"]
    for group in ("serve", "route", "models", "router", "cache", "report", "estimate", "experiment", "demo"):
        assert f"│ {group} " in result.stdout, group
    assert "eval-router" not in result.stdout and "<bool>" not in result.stdout


def _commands(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", {})
    return [path, *(p for name, sub in subcommands.items() for p in _commands(sub, (*path, name)))]


def test_no_help_page_shows_a_type_label() -> None:
    runner = CliRunner()
    paths = _commands(typer.main.get_command(app))
    assert ("router", "eval") in paths and ("cache", "train-verifier") in paths
    for path in paths:
        page = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        assert not TYPE_LABEL.search(page), (path, TYPE_LABEL.findall(page))
    report = runner.invoke(app, ["report", "--help"], env={"COLUMNS": "200"}).output
    assert "--quality  " in report and "table|csv|json" in report and "[1<=x<=100]" in report


def test_renamed_commands_run_under_their_group(tmp_path: Path) -> None:
    absent = str(tmp_path / "absent.yaml")
    result = tierwise("router", "eval", "--config", absent)
    assert result.returncode == 2 and "cannot read config" in result.stderr + result.stdout
    old = tierwise("eval-router", "--config", absent)
    assert old.returncode == 2 and "No such command" in old.stderr
