"""The command line, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_config import ISSUE_EXAMPLE


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
