"""The trained router inside the real server: p_adequate for every tier, the model version in
the decision, a promoted version hot-swapped under concurrent requests with none failing, and a
tampered model refused at start."""

from __future__ import annotations

import asyncio
import csv
import shutil
from pathlib import Path

import pytest

from classifier.registry import ModelRegistry
from protos.tierwise.v1 import tierwise_pb2 as pb
from router.config import ConfigError
from router.service import build_service, shared_embedder
from tests.harness import AUTH, build_config, config_dict, running_server
from tests.upstream import ScriptedUpstream
from training.train import train

ROWS_PER_FILE = 30
SCORE_COLUMNS = {"small": "mistralai/mistral-7b-chat", "large": "gpt-4-1106-preview"}


@pytest.fixture(scope="module")
def registry(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two versions trained on a slice of RouterBench for the harness's tiers (small, large)."""
    root = tmp_path_factory.mktemp("router-models")
    data = root / "data"
    data.mkdir()
    for source in sorted((shared_data / "routerbench").glob("*.csv")):
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            rows = [next(reader), *(row for _, row in zip(range(ROWS_PER_FILE), reader, strict=False))]
        with (data / source.name).open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
    config = build_config(config_dict(root / "var", "http://127.0.0.1:1/v1", "http://127.0.0.1:1"))
    versions = [
        train(
            data,
            config,
            root / "registry",
            score_col_map=SCORE_COLUMNS,
            seed=seed,
            cache_dir=root / "embeddings",
            embedder=lambda: shared_embedder("cpu"),
        ).version
        for seed in (1, 2)
    ]
    ModelRegistry(root / "registry").promote(versions[0], force=True)
    return root / "registry", versions


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
