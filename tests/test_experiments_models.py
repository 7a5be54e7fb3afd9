"""Experiment arms that change the classifier: each arm routes with the registry version it
names (not the serving one), and arms with different quality targets decide differently;
a missing version refuses the start, naming the arm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.trained_registry import train_small_registry
from tests.upstream import ScriptedUpstream
from tierwise.router.config import ConfigError
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb


@pytest.fixture(scope="module")
def registry(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path
) -> tuple[Path, list[str]]:
    return train_small_registry(shared_data, tmp_path_factory.mktemp("experiment-models"), embeddings)


def config_with(
    tmp_path: Path, upstream: ScriptedUpstream, registry: Path, arms: list[dict[str, Any]]
) -> Any:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["routing"] = {
        "policy": "cheapest",
        "classifier": {"registry": str(registry), "rule": "threshold", "watch_interval_s": 0},
    }
    data["experiments"] = [{"name": "models", "control": arms[0]["name"], "arms": arms}]
    return build_config(data)


def route(user: str, arm: str) -> pb.RouteRequest:
    return pb.RouteRequest(
        messages=[
            pb.ChatMessage(role="user", content="Write a Python function that merges two sorted lists.")
        ],
        user=user,
        metadata={"tierwise-arm": arm},
    )


@pytest.mark.asyncio
async def test_each_arm_routes_with_its_model_version_and_quality_target(
    tmp_path: Path, registry: tuple[Path, list[str]]
) -> None:
    root, (serving, second) = registry
    arms = [
        {"name": "base", "weight": 1},
        {"name": "serving", "weight": 1, "policy": "classifier"},
        {"name": "pinned", "weight": 1, "policy": "classifier", "model_version": second},
        {
            "name": "lenient",
            "weight": 1,
            "policy": "classifier",
            "model_version": second,
            "quality_target": 0.0,
        },
        {
            "name": "strict",
            "weight": 1,
            "policy": "classifier",
            "model_version": second,
            "quality_target": 1.0,
        },
    ]
    async with (
        ScriptedUpstream() as upstream,
        running_server(config_with(tmp_path, upstream, root, arms)) as svc,
    ):
        decisions = {
            arm["name"]: await svc.stub.Route(route("u1", arm["name"]), metadata=AUTH) for arm in arms
        }
    assert decisions["serving"].model_version == serving
    assert {decisions[a].model_version for a in ("pinned", "lenient", "strict")} == {second}
    classified = [decisions[a] for a in ("serving", "pinned", "lenient", "strict")]
    assert all(d.policy == "classifier" and set(d.p_adequate) == {"small", "large"} for d in classified)
    # Threshold rule: a target of 0 takes the cheapest tier; no P reaches 1, so 1 takes the highest P.
    assert (decisions["lenient"].tier, decisions["lenient"].reason) == ("small", "cheapest-adequate")
    assert decisions["strict"].reason == "highest-p"
    # An arm that sets nothing routes with the service's own policy.
    base = decisions["base"]
    assert (base.policy, base.model_version, base.arm, base.experiment) == ("cheapest", "", "base", "models")


@pytest.mark.asyncio
async def test_a_missing_model_version_refuses_the_start(
    tmp_path: Path, registry: tuple[Path, list[str]]
) -> None:
    root, _ = registry
    arms = [
        {"name": "base", "weight": 1},
        {"name": "ghost", "weight": 1, "policy": "classifier", "model_version": "no-such-version"},
    ]
    async with ScriptedUpstream() as upstream:
        config = config_with(tmp_path, upstream, root, arms)
        with pytest.raises(
            ConfigError, match=r"experiments\[0\]\.arms\[1\] \(ghost\): model version 'no-such-version'"
        ):
            await build_service(config)
