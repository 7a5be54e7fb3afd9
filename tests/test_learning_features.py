"""What retraining learns from is what the server saw: the features a running server stores for a
request (its embedding + prompt statistics, in the traffic store) equal the features training
computes from the same prompt text (``load_routing_data``: embedding of ``embedding_input``,
``prompt_statistics``, the first tier's token count)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.harness import AUTH, build_config, config_dict, running_server
from tests.trained_registry import routerbench_slice
from tests.upstream import ScriptedUpstream
from tierwise.classifier.features import EMBEDDING_DIM, embedding_input
from tierwise.router.service import shared_embedder
from tierwise.training.dataset import load_routing_data
from tierwise.v1 import tierwise_pb2 as pb

SCORE_COLUMNS = {"small": "mistralai/mistral-7b-chat", "large": "gpt-4-1106-preview"}


@pytest.mark.asyncio
async def test_served_request_features_equal_training_features_of_the_same_prompt(
    shared_data: Path, tmp_path: Path
) -> None:
    data_dir = routerbench_slice(shared_data, tmp_path / "data", 3)
    async with ScriptedUpstream() as upstream:
        upstream.script(text="B")
        config = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
        # An explicit encoding on the first tier: training must count tokens as the pipeline does.
        config["tiers"][0]["encoding"] = "o200k_base"
        config["cache"] = {"enabled": True}  # the embedder runs: the sample carries the request's embedding
        config["learning"] = {"traffic": {"store_prompts_tenants": ["acme"], "flush_interval_s": 0.05}}
        settings = build_config(config)
        data = load_routing_data(
            data_dir,
            settings,
            lambda: shared_embedder("cpu"),
            "sentence-transformers/all-MiniLM-L6-v2@384",
            tmp_path / "embeddings",
            score_col_map=SCORE_COLUMNS,
        )
        assert any(embedding_input(t) != t for t in data.texts)  # few-shot prompts: the clipped path too
        async with running_server(settings) as svc:
            ids = {}
            for text in data.texts:
                reply = await svc.stub.Complete(
                    pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)]), metadata=AUTH
                )
                ids[reply.request_id] = text
            traffic = svc.server.service.accounting.learning.traffic
            assert traffic is not None and await traffic.flush(timeout_s=30)
            samples = await traffic.samples(0, time.time() + 1)
    assert sorted(s.request_id for s in samples) == sorted(ids)
    row_of = {text: i for i, text in enumerate(data.texts)}
    for sample in samples:
        row = row_of[ids[sample.request_id]]
        served = sample.features()
        assert served is not None
        trained = data.features[row]
        assert sample.input_tokens == data.input_tokens[row]
        # Statistics: the same function over the same text and count, bit for bit.
        np.testing.assert_array_equal(served[EMBEDDING_DIM:], trained[EMBEDDING_DIM:])
        # Embedding: the same model over the same clipped text (batching may move the last bits).
        np.testing.assert_allclose(served[:EMBEDDING_DIM], trained[:EMBEDDING_DIM], atol=1e-5)
