"""``tierwise router retrain``: judged traffic joins the training set; a worse candidate is not promoted; a
promoted one is hot-swapped by a running server with no failed request."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.trained_registry import routerbench_slice
from tests.upstream import ScriptedUpstream
from tierwise.classifier.features import EMBEDDING_DIM, STATISTIC_NAMES
from tierwise.classifier.model import load_model
from tierwise.classifier.registry import ModelRegistry
from tierwise.router.config import Config
from tierwise.router.feedback.store import FeedbackRecord, SqliteFeedbackStore
from tierwise.router.learning.traffic import TrafficSample
from tierwise.router.learning.traffic_sqlite import SqliteTrafficStore
from tierwise.router.service import shared_embedder
from tierwise.training.dataset import RoutingData, load_routing_data
from tierwise.training.judged import judged_rows, read_judgments
from tierwise.training.retrain import metric_value, retrain
from tierwise.training.routerbench import split_of
from tierwise.training.train import train
from tierwise.v1 import tierwise_pb2 as pb

ROWS_PER_FILE = 120
SCORE_COLUMNS = {"small": "mistralai/mistral-7b-chat", "large": "gpt-4-1106-preview"}


def learning_config(store: Path, registry: Path, url: str = "http://127.0.0.1:1", **retrain: Any) -> Config:
    data = config_dict(store, f"{url}/v1", url)
    data["routing"] = {
        "policy": "classifier",
        "classifier": {"registry": str(registry), "watch_interval_s": 0.05},
    }
    data["learning"] = {"retrain": {"weak": "small", "strong": "large", **retrain}}
    return build_config(data)


@pytest.fixture(scope="module")
def base(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, embeddings: Path
) -> tuple[Path, RoutingData]:
    """A RouterBench slice for the harness's tiers, loaded once (embeddings in the run's shared cache)."""
    root = tmp_path_factory.mktemp("retrain")
    data = routerbench_slice(shared_data, root / "data", ROWS_PER_FILE)
    config = learning_config(root / "var", root / "unused")
    loaded = load_routing_data(
        data,
        config,
        lambda: shared_embedder("cpu"),
        "sentence-transformers/all-MiniLM-L6-v2@384",
        embeddings,
        score_col_map=SCORE_COLUMNS,
    )
    return root, loaded


def serving_registry(root: Path, base: RoutingData, config: Config, *, seen_gate_rows: bool = False) -> str:
    """Train and serve a version; ``seen_gate_rows`` also trains on the validation split's labels (the
    gate's rows) and selects on the test split instead: an incumbent that ranks the gate's prompts well,
    which a candidate has to match."""
    if seen_gate_rows:
        splits = base.splits.copy()
        splits[base.splits == "validation"] = "train"
        splits[base.splits == "test"] = "validation"
        base = replace(base, splits=splits)
    version = train([], config, root, prepared=base, seed=1).version
    ModelRegistry(root).promote(version, force=True)
    return version


def train_split_ids(count: int) -> list[str]:
    """Request ids the hash split puts in the train split (so none is held out)."""
    ids = (f"req-{i:05d}" for i in itertools.count())
    return list(itertools.islice((i for i in ids if split_of(i) == "train"), count))


def sample_for(request_id: str, features: np.ndarray) -> TrafficSample:
    """A traffic sample of a request served by the small tier, with these features."""
    return TrafficSample(
        request_id,
        1000.0,
        "acme",
        "",
        "",
        "",
        "small",
        "small-model",
        "v0",
        "miss",
        10,
        1,
        features[:EMBEDDING_DIM].astype("<f4").tobytes(),
        features[EMBEDDING_DIM:].astype("<f4").tobytes(),
    )


def write_judged_traffic(config: Config, base: RoutingData, scores: np.ndarray) -> None:
    """What a server writes for judged requests: traffic samples (features) and judge feedback per tier."""
    rows = np.flatnonzero(base.splits == "train")
    ids = train_split_ids(len(rows))
    traffic = SqliteTrafficStore(config.store.path / "traffic.sqlite3")
    feedback = SqliteFeedbackStore(config.store.path / "feedback.sqlite3")
    traffic.write(
        [
            replace(sample_for(rid, base.features[row]), input_tokens=int(base.input_tokens[row]))
            for rid, row in zip(ids, rows, strict=True)
        ]
    )
    traffic.close()

    async def record() -> None:
        for rid, row in zip(ids, rows, strict=True):
            for j, tier in enumerate(config.tier_names):
                if not np.isnan(scores[row, j]):
                    meta = {"tier": tier, "role": "served" if j == 0 else "shadow"}
                    await feedback.record(
                        FeedbackRecord(rid, "acme", float(scores[row, j]), "judge", metadata=meta)
                    )
        await feedback.aclose()

    asyncio.run(record())


def test_a_worse_candidate_is_not_promoted(base: tuple[Path, RoutingData], tmp_path: Path) -> None:
    _, data = base
    config = learning_config(tmp_path / "var", tmp_path / "registry", judgment_weight=20.0)
    serving = serving_registry(tmp_path / "registry", data, config, seen_gate_rows=True)
    # Judges that say the opposite of the recorded scores, weighted heavily: the candidate learns them.
    write_judged_traffic(config, data, 1.0 - data.scores)
    outcome = retrain(config, base=data)
    assert not outcome.promoted, outcome.reason
    assert ModelRegistry(tmp_path / "registry").serving_version() == serving
    models = outcome.report["models"]
    assert models["candidate"]["value"] < models["serving"]["value"]
    assert "keeping " + serving in outcome.reason
    assert outcome.report["training_rows"]["judged"] > 0
    # The gate read the base validation split (every judged id here hashes to train), never the test split
    # that router eval and router simulate report: its values are the two models' validation APGR.
    validation = data.split("validation")
    assert outcome.report["gate_rows"] == {"base_validation": len(validation), "judged_held_out": 0}
    registry = ModelRegistry(tmp_path / "registry")
    for name, version in (("candidate", outcome.candidate or ""), ("serving", serving)):
        model = load_model(registry.version_dir(version), config.tier_names, device="cpu")
        on_validation = metric_value(model, validation, config, config.learning.retrain)[0]
        assert models[name]["value"] == pytest.approx(on_validation)
        assert models[name]["base_validation_value"] == pytest.approx(on_validation)
    directory = ModelRegistry(tmp_path / "registry").version_dir(outcome.candidate or "")
    saved = json.loads((directory / "retrain-report.json").read_text())
    assert saved["promoted"] is False and saved["reason"] == outcome.reason
    assert (directory / "retrain-report.png").stat().st_size > 1000
    # Nothing new since that run: the next run does not retrain.
    again = retrain(config, base=data)
    assert again.candidate is None and "0 new judgments" in again.reason


@pytest.mark.asyncio
async def test_a_promoted_model_is_served_by_a_running_server_without_a_failed_request(
    base: tuple[Path, RoutingData], tmp_path: Path
) -> None:
    _, data = base
    async with ScriptedUpstream() as upstream:
        upstream.script(text="ok")
        # tolerance 1: this test is about the swap, not the gate
        config = learning_config(tmp_path / "var", tmp_path / "registry", upstream.base_url, tolerance=1.0)
        first = serving_registry(tmp_path / "registry", data, config)
        await asyncio.to_thread(write_judged_traffic, config, data, data.scores)
        async with running_server(config) as svc:
            stop = asyncio.Event()
            versions: list[str] = []
            failures: list[grpc.aio.AioRpcError] = []

            async def traffic() -> None:
                prompts = itertools.cycle(
                    ["Write a Python function to sort a list.", "Which gas do plants absorb?"]
                )
                while not stop.is_set():
                    request = pb.CompleteRequest(
                        messages=[pb.ChatMessage(role="user", content=next(prompts))]
                    )
                    try:
                        reply = await svc.stub.Complete(request, metadata=AUTH, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        failures.append(exc)
                    else:
                        versions.append(reply.decision.model_version)

            clients = [asyncio.create_task(traffic()) for _ in range(3)]
            outcome = await asyncio.to_thread(retrain, config, base=data)
            assert outcome.promoted, outcome.reason
            async with asyncio.timeout(30):
                while not versions or versions[-1] != outcome.candidate:
                    await asyncio.sleep(0.05)
            seen = len(versions)
            async with asyncio.timeout(30):
                while len(versions) < seen + 5:
                    await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*clients)
    assert failures == []
    assert versions[0] == first and versions[-1] == outcome.candidate
    assert set(versions) == {first, outcome.candidate}


def test_judged_repeats_of_one_prompt_stay_on_one_side_of_the_split(tmp_path: Path) -> None:
    config = learning_config(tmp_path / "var", tmp_path / "registry")
    ids = [f"req-{i:05d}" for i in range(40)]
    assert len({split_of(i) for i in ids}) == 3  # by request id they would scatter over every split
    traffic = SqliteTrafficStore(config.store.path / "traffic.sqlite3")
    vector = np.ones(EMBEDDING_DIM + len(STATISTIC_NAMES), dtype="<f4")
    traffic.write(
        [
            replace(sample_for(rid, vector), prompt_key="same-prompt" if i % 2 else f"prompt-{i}")
            for i, rid in enumerate(ids)
        ]
    )
    traffic.close()
    feedback = SqliteFeedbackStore(config.store.path / "feedback.sqlite3")

    async def record() -> None:
        for rid in ids:
            await feedback.record(FeedbackRecord(rid, "acme", 1.0, "judge", metadata={"tier": "small"}))
        await feedback.aclose()

    asyncio.run(record())
    rows = judged_rows(config, read_judgments(config, 0, 1e12).records, 1.0)
    assert rows is not None and len(rows) == 40
    split = dict(zip(rows.sample_ids, rows.splits, strict=True))
    assert {split[rid] for i, rid in enumerate(ids) if i % 2} == {split_of("same-prompt")}
    assert all(split[rid] == split_of(f"prompt-{i}") for i, rid in enumerate(ids) if not i % 2)
    # Each row carries its prompt key: the cold start's cross-fitting groups one prompt's repeats by it.
    key = dict(zip(rows.sample_ids, rows.prompts(), strict=True))
    assert {key[rid] for i, rid in enumerate(ids) if i % 2} == {"same-prompt"}
    assert len({key[rid] for i, rid in enumerate(ids) if not i % 2}) == 20

    # The shares are configurable: with no judged validation share, every prompt trains or is held out.
    shares = learning_config(
        tmp_path / "var", tmp_path / "registry", judged_validation=0.0, judged_held_out=0.1
    )
    rows = judged_rows(shares, read_judgments(shares, 0, 1e12).records, 1.0)
    assert rows is not None and "validation" not in set(rows.splits)
    expected = {f"prompt-{i}": split_of(f"prompt-{i}", fractions=(0.9, 0.0, 0.1)) for i in range(0, 40, 2)}
    split = dict(zip(rows.sample_ids, rows.splits, strict=True))
    assert all(split[rid] == expected[f"prompt-{i}"] for i, rid in enumerate(ids) if not i % 2)
    with pytest.raises(ValueError, match="leave a share"):
        learning_config(tmp_path / "var", tmp_path / "registry", judged_validation=0.5, judged_held_out=0.5)
