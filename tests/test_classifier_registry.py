"""The model registry: promote/rollback behind the gate, reload that keeps a good model, hot swap."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.test_classifier_model import EMBEDDER_KEY, TIERS, build_version, synthetic_data
from tierwise.classifier import (
    ModelRefused,
    ModelRegistry,
    NoModelServing,
    RegistryError,
    ReloadResult,
    ServingModel,
)
from tierwise.classifier.manifest import ONNX_FILE


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three built versions to copy into registries (building is the slow part)."""
    root = tmp_path_factory.mktemp("versions")
    return {
        "v1": build_version(root / "v1", "v1", seed=1, gate=0.70),
        "v2": build_version(root / "v2", "v2", seed=2, gate=0.75),
        "v3": build_version(root / "v3", "v3", layout="joint", seed=3, gate=0.60),
    }


def registry_with(tmp_path: Path, templates: dict[str, Path], *versions: str) -> ModelRegistry:
    import shutil

    registry = ModelRegistry(tmp_path / "registry")
    for version in versions:
        shutil.copytree(templates[version], registry.version_dir(version))
    return registry


def test_promote_and_rollback(tmp_path: Path, templates: dict[str, Path]) -> None:
    registry = registry_with(tmp_path, templates, "v1", "v2")
    assert registry.serving_version() is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    registry.promote("v1", expected_tiers=TIERS)
    registry.promote("v2", expected_tiers=TIERS)
    assert registry.serving_version() == "v2"
    assert registry.pointer() is not None and registry.pointer().history == ("v1",)  # type: ignore[union-attr]
    listed = {info.version: info for info in registry.list()}
    assert (
        listed["v2"].serving
        and not listed["v1"].serving
        and listed["v2"].gate
        == {
            "name": "aiq_classifier_threshold",
            "value": 0.75,
        }
    )
    assert registry.rollback().version == "v1"
    assert registry.serving_version() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    # the pointer is plain JSON, written whole
    assert json.loads(registry.pointer_path.read_text())["version"] == "v1"


def test_gate_refuses_a_worse_version_unless_forced(tmp_path: Path, templates: dict[str, Path]) -> None:
    registry = registry_with(tmp_path, templates, "v2", "v3")
    registry.promote("v2")
    with pytest.raises(
        RegistryError, match=r"scores aiq_classifier_threshold=0\.6000 .* below the serving 'v2'"
    ):
        registry.promote("v3")
    assert registry.serving_version() == "v2"
    registry.promote("v3", force=True)
    assert registry.serving_version() == "v3"


def test_promote_refuses_a_broken_or_mismatched_version(tmp_path: Path, templates: dict[str, Path]) -> None:
    registry = registry_with(tmp_path, templates, "v1", "v2")
    (registry.version_dir("v2") / ONNX_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelRefused, match="SHA-256"):
        registry.promote("v2")
    with pytest.raises(ModelRefused, match="configured but not in the model"):
        registry.promote("v1", expected_tiers=("small", "medium", "large", "huge"))
    with pytest.raises(RegistryError, match="no model version 'v9'"):
        registry.manifest("v9")
    assert registry.serving_version() is None


def test_reload_keeps_the_previous_model_when_the_new_one_is_refused(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    registry = registry_with(tmp_path, templates, "v1", "v2")
    serving = ServingModel(registry, TIERS, EMBEDDER_KEY, device="cpu")
    with pytest.raises(NoModelServing):
        _ = serving.model
    assert serving.reload().error is not None  # no pointer yet: nothing to load, nothing served
    registry.promote("v1")
    assert serving.reload() == ReloadResult("v1", changed=True)
    assert serving.reload() == ReloadResult("v1", changed=False)
    registry.promote("v2")
    (registry.version_dir("v2") / ONNX_FILE).write_bytes(b"tampered after promotion")
    result = serving.reload()
    assert result.version == "v1" and not result.changed
    assert result.error is not None and "SHA-256" in result.error
    assert serving.model.version == "v1" and serving.last_error == result.error
    features, _ = synthetic_data(2)
    assert set(serving.model.predict(features[0])) == set(TIERS)


def test_hot_swap_under_concurrent_predictions_fails_no_request(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    registry = registry_with(tmp_path, templates, "v1", "v2", "v3")
    serving = ServingModel(registry, TIERS, EMBEDDER_KEY, device="cpu")
    registry.promote("v1")
    serving.reload()
    features, _ = synthetic_data(8)
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: list[set[str]] = [set() for _ in range(4)]
    counts = [0] * 4
    progressed = threading.Condition()

    def client(index: int) -> None:
        while not stop.is_set():
            try:
                model = serving.model  # one model for the whole request
                p = model.predict(features[counts[index] % len(features)])
                assert set(p) == set(TIERS) and all(0.0 <= v <= 1.0 for v in p.values())
                seen[index].add(model.version)
            except BaseException as exc:
                failures.append(exc)
                return
            with progressed:
                counts[index] += 1
                progressed.notify_all()

    def wait_for_progress(beyond: list[int]) -> None:
        with progressed:
            assert progressed.wait_for(
                lambda: all(c > b for c, b in zip(counts, beyond, strict=True)), timeout=30
            )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for version in ["v2", "v3", "v1", "v2", "v3"]:
            wait_for_progress(list(counts))
            registry.promote(version, force=True)
            assert serving.reload().changed
        wait_for_progress(list(counts))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    assert serving.model.version == "v3" and serving.reloads == 6
    assert set().union(*seen) == {"v1", "v2", "v3"}


@pytest.mark.asyncio
async def test_watcher_reloads_when_the_pointer_changes(tmp_path: Path, templates: dict[str, Path]) -> None:
    registry = registry_with(tmp_path, templates, "v1", "v2")
    registry.promote("v1")
    serving = ServingModel(registry, TIERS, EMBEDDER_KEY, device="cpu")
    serving.reload()
    reloaded = asyncio.Event()
    results: list[ReloadResult] = []

    def on_reload(result: ReloadResult) -> None:
        results.append(result)
        reloaded.set()

    stop = asyncio.Event()
    watcher = asyncio.create_task(serving.watch(interval_s=0.01, stop=stop, on_reload=on_reload))
    try:
        await asyncio.to_thread(registry.promote, "v2")
        await asyncio.wait_for(reloaded.wait(), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(watcher, timeout=30)
    assert results[-1] == ReloadResult("v2", changed=True)
    assert serving.model.version == "v2"
    assert np.isfinite(serving.model.predict_matrix(synthetic_data(1)[0])).all()


@pytest.mark.asyncio
async def test_watcher_sees_a_promote_that_landed_before_it_started(
    tmp_path: Path, templates: dict[str, Path]
) -> None:
    registry = registry_with(tmp_path, templates, "v1", "v2")
    registry.promote("v1")
    serving = ServingModel(registry, TIERS, EMBEDDER_KEY, device="cpu")
    serving.reload()
    registry.promote("v2")  # between the load and the watcher's start
    reloaded = asyncio.Event()
    stop = asyncio.Event()
    watcher = asyncio.create_task(
        serving.watch(interval_s=0.01, stop=stop, on_reload=lambda _result: reloaded.set())
    )
    try:
        await asyncio.wait_for(reloaded.wait(), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(watcher, timeout=30)
    assert serving.model.version == "v2"
