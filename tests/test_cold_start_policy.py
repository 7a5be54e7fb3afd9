"""``routing.classifier.cold_start``: with no promoted version the configured baseline answers (the
decision's reason says so), the first promoted version takes over on reload, and a registry whose
pointer names a broken version still refuses the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_classifier_model import EMBEDDER_KEY, TIERS, build_version
from tests.test_classifier_policy import context
from tierwise.classifier.registry import ModelRegistry, NoModelServing, ServingModel
from tierwise.router.config import ConfigError, RoutingConfig
from tierwise.router.policies.classifier import ClassifierPolicy
from tierwise.router.policies.factory import build_policy, load_serving_model


def _routing(registry: Path, cold_start: str | None) -> RoutingConfig:
    return RoutingConfig.model_validate(
        {
            "policy": "classifier",
            "classifier": {
                "registry": str(registry),
                "rule": "threshold",
                "cold_start": cold_start,
                "unfamiliar": {"action": "trust_model"},  # the small test version has no calibration
            },
        }
    )


def test_the_cold_start_policy_answers_until_the_first_version_is_promoted(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    routing = _routing(registry, "cheapest")
    serving = load_serving_model(routing, TIERS, device="cpu")
    assert not serving.loaded
    policy = build_policy(routing, TIERS, serving)
    choice = policy.choose(context(0.8))
    assert (choice.tier, choice.reason, choice.model_version) == ("small", "cold-start:cheapest", "")
    build_version(ModelRegistry(registry).version_dir("v1"))
    ModelRegistry(registry).promote("v1", force=True, expected_tiers=TIERS)
    assert serving.reload().version == "v1"
    choice = policy.choose(context(0.8))
    assert choice.model_version == "v1" and not choice.reason.startswith("cold-start")


def test_without_a_cold_start_policy_no_model_refuses(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    with pytest.raises(ConfigError, match="no usable model version"):
        load_serving_model(_routing(registry, None), TIERS, device="cpu")
    empty = ServingModel(ModelRegistry(registry), TIERS, EMBEDDER_KEY, device="cpu")
    with pytest.raises(NoModelServing):
        ClassifierPolicy(empty, TIERS)


def test_a_broken_serving_version_refuses_even_with_a_cold_start_policy(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    directory = build_version(ModelRegistry(registry).version_dir("v1"))
    ModelRegistry(registry).promote("v1", force=True, expected_tiers=TIERS)
    (directory / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="no usable model version"):
        load_serving_model(_routing(registry, "random"), TIERS, device="cpu")
