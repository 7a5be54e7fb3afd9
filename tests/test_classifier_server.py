"""The trained router inside the real server: p_adequate for every tier, the model version in
the decision, a promoted version hot-swapped under concurrent requests with none failing, and a
tampered model refused at start."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.trained_registry import train_small_registry
from tests.upstream import ScriptedUpstream
from tierwise.classifier.registry import ModelRegistry
from tierwise.router.config import ConfigError
from tierwise.router.service import build_service
from tierwise.v1 import tierwise_pb2 as pb


@pytest.fixture(scope="module")
def registry(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path
) -> tuple[Path, list[str]]:
    """Two versions trained on a slice of RouterBench for the harness's tiers (small, large)."""
    return train_small_registry(shared_data, tmp_path_factory.mktemp("router-models"), embeddings)


def classifier_config(tmp_path: Path, upstream: ScriptedUpstream, registry: Path) -> dict[str, object]:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["routing"] = {
        "policy": "classifier",
        "classifier": {"registry": str(registry), "watch_interval_s": 0.05},
    }
    return data


@pytest.mark.asyncio
async def test_decision_carries_p_adequate_and_a_promoted_version_swaps_in_without_failures(
    tmp_path: Path, registry: tuple[Path, list[str]]
) -> None:
    root, (first, second) = registry
    async with ScriptedUpstream() as upstream:
        config = build_config(classifier_config(tmp_path, upstream, root))
        async with running_server(config) as svc:
            request = pb.RouteRequest(
                messages=[
                    pb.ChatMessage(role="user", content="Write a Python function that merges two lists.")
                ]
            )
            decision = await svc.stub.Route(request, metadata=AUTH)
            assert set(decision.p_adequate) == {"small", "large"}
            assert all(0.0 <= p <= 1.0 for p in decision.p_adequate.values())
            assert decision.model_version == first and decision.policy == "classifier"

            stop = asyncio.Event()
            seen: set[str] = set()

            async def keep_routing() -> int:
                calls = 0
                while not stop.is_set():
                    reply = await svc.stub.Route(request, metadata=AUTH)  # any failure fails the test
                    seen.add(reply.model_version)
                    calls += 1
                return calls

            workers = [asyncio.create_task(keep_routing()) for _ in range(8)]
            ModelRegistry(root).promote(second, force=True)

            async def swapped() -> None:
                while second not in seen:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(swapped(), timeout=30)
            stop.set()
            assert sum(await asyncio.gather(*workers)) > 0
            assert seen <= {first, second}
            ModelRegistry(root).rollback()


@pytest.mark.asyncio
async def test_tampered_model_is_refused_at_start(tmp_path: Path, registry: tuple[Path, list[str]]) -> None:
    root, _ = registry
    tampered = tmp_path / "tampered"
    shutil.copytree(root, tampered)
    serving = ModelRegistry(tampered).serving_version()
    assert serving is not None
    model_file = next((tampered / "versions" / serving).glob("*.onnx"))
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    async with ScriptedUpstream() as upstream:
        config = build_config(classifier_config(tmp_path, upstream, tampered))
        with pytest.raises(ConfigError, match="routing"):
            await build_service(config)


@pytest.mark.asyncio
async def test_unknown_model_tiers_are_refused(tmp_path: Path, registry: tuple[Path, list[str]]) -> None:
    root, _ = registry
    async with ScriptedUpstream() as upstream:
        data = classifier_config(tmp_path, upstream, root)
        data["tiers"][1]["name"] = "gigantic"  # type: ignore[index]
        with pytest.raises(ConfigError) as caught:
            await build_service(build_config(data))
        assert "gigantic" in str(caught.value)


@pytest.mark.asyncio
async def test_cold_start_serves_with_its_policy_until_the_first_version_is_promoted(
    tmp_path: Path, registry: tuple[Path, list[str]]
) -> None:
    root, (first, _) = registry
    empty = ModelRegistry(tmp_path / "fresh")
    empty.root.mkdir()
    async with ScriptedUpstream() as upstream:
        data = classifier_config(tmp_path, upstream, empty.root)
        data["routing"]["classifier"]["cold_start"] = "cheapest"  # type: ignore[index]
        async with running_server(build_config(data)) as svc:
            request = pb.RouteRequest(messages=[pb.ChatMessage(role="user", content="What is 2 + 2?")])
            decision = await svc.stub.Route(request, metadata=AUTH)
            assert (decision.tier, decision.reason, decision.model_version) == (
                "small",
                "cold-start:cheapest",
                "",
            )
            shutil.copytree(ModelRegistry(root).version_dir(first), empty.version_dir(first))
            empty.promote(first, force=True)

            async def swapped() -> None:
                while (await svc.stub.Route(request, metadata=AUTH)).model_version != first:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(swapped(), timeout=30)
            decision = await svc.stub.Route(request, metadata=AUTH)
            assert not decision.reason.startswith("cold-start")
