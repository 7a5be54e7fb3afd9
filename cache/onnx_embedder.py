"""all-MiniLM-L6-v2 as an ONNX graph run by onnxruntime: the embedder without torch on the request path.

``tierwise cache export-embedder`` writes a directory holding the graph (the transformer, mean
pooling over the attention mask and L2 normalisation, fp32), the packaged ``tokenizer.json`` and a
manifest pinning both by SHA-256. The export refuses to write unless the graph's vectors match
sentence-transformers' to cosine >= ``PARITY_MIN_COSINE`` on a fixed set of texts, so an export is
the same vector space as :class:`~tierwise.cache.embedder.SentenceEmbedder`: it reports the same
:class:`EmbedderInfo` (key), and cache snapshots and the verifier made with one serve the other.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tierwise.cache.embedder import EmbedderInfo, Matrix, length_groups

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "embedder.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "tierwise-onnx-embedder/1"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
PARITY_MIN_COSINE = 0.9999
"""Least cosine between an export's vector and sentence-transformers' for any parity text: the
export's drift stays far below the gaps cache thresholds separate (dynamic int8 drifted to 0.915)."""
DEFAULT_DIR = Path("var/onnx-embedder")
EXPORT_HINT = (
    "run `tierwise cache export-embedder --out {path}` to produce it (in an install with the train extra:"
    " pip install 'tierwise[train]'; the server itself needs only the export)"
)


class OnnxEmbedderError(RuntimeError):
    """An ONNX embedder that must not be served: missing, tampered, or not what it claims to be."""


@dataclass(frozen=True, slots=True)
class OnnxEmbedderManifest:
    """``manifest.json``: which model was exported, and the files it was exported to, pinned."""

    model_name: str
    dim: int
    max_tokens: int
    model_sha256: str
    tokenizer_sha256: str
    source: Mapping[str, Any]
    """The packaged model's identity (package, version, weights' SHA-256) and the parity check's result."""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_name": self.model_name,
            "dim": self.dim,
            "max_tokens": self.max_tokens,
            "model_file": MODEL_FILE,
            "model_sha256": self.model_sha256,
            "tokenizer_file": TOKENIZER_FILE,
            "tokenizer_sha256": self.tokenizer_sha256,
            "source": dict(self.source),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OnnxEmbedderManifest:
        if data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        return cls(
            model_name=str(data["model_name"]),
            dim=int(data["dim"]),
            max_tokens=int(data["max_tokens"]),
            model_sha256=str(data["model_sha256"]).lower(),
            tokenizer_sha256=str(data["tokenizer_sha256"]).lower(),
            source=dict(data.get("source", {})),
        )


def _pinned_bytes(path: Path, expected_sha256: str, hint: str) -> bytes:
    """The file's bytes, read once, so what is loaded is what was checked."""
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise OnnxEmbedderError(f"cannot read {path}: {exc}; {hint}") from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected_sha256:
        raise OnnxEmbedderError(
            f"{path} has SHA-256 {actual}, but the manifest pins {expected_sha256}: the file was changed"
            f" after the export; {hint}"
        )
    return payload


def read_manifest(directory: Path) -> OnnxEmbedderManifest:
    hint = EXPORT_HINT.format(path=directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise OnnxEmbedderError(f"no ONNX embedder at {directory} ({MANIFEST_FILE} missing); {hint}")
    try:
        return OnnxEmbedderManifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxEmbedderError(f"unreadable manifest {path}: {exc}; {hint}") from None


def execution_providers(device: str, available: list[str]) -> list[str]:
    """onnxruntime providers for ``device`` (auto: CUDA when onnxruntime-gpu offers it, else CPU)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not has_cuda:
        raise OnnxEmbedderError(
            "cache.device is cuda, but this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        )
    if device not in ("auto", "cuda"):
        raise OnnxEmbedderError(f"cache.device must be auto, cpu or cuda, got {device!r}")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else ["CPUExecutionProvider"]


class OnnxEmbedder:
    """A :class:`~tierwise.cache.embedder.TextEmbedder` over an export whose files match its manifest."""

    def __init__(self, directory: Path, device: str = "auto", threads: int = 0, batch_size: int = 64) -> None:
        """``threads``: onnxruntime's intra-op threads (0: its default, one per core)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        hint = EXPORT_HINT.format(path=directory)
        self.manifest = manifest = read_manifest(directory)
        definition = _pinned_bytes(directory / TOKENIZER_FILE, manifest.tokenizer_sha256, hint)
        graph = _pinned_bytes(directory / MODEL_FILE, manifest.model_sha256, hint)
        self._tokenizer = Tokenizer.from_str(definition.decode("utf-8"))
        # The packaged file pads and truncates to 128; the model reads 256, as sentence-transformers does.
        self._tokenizer.enable_truncation(manifest.max_tokens, strategy="longest_first")
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = execution_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(graph, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise OnnxEmbedderError(f"onnxruntime cannot load {directory / MODEL_FILE}: {exc}") from None
        names = tuple(node.name for node in self._session.get_inputs())
        if sorted(names) != sorted(INPUT_NAMES):
            raise OnnxEmbedderError(f"{directory / MODEL_FILE} inputs are {names}, expected {INPUT_NAMES}")
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.info = EmbedderInfo(manifest.model_name, manifest.dim)
        self.max_seq_length = manifest.max_tokens
        self._batch_size = batch_size

    def encode(self, texts: list[str]) -> Matrix:
        out = np.zeros((len(texts), self.info.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(texts)  # padded to the longest: trimmed per pass below
        lengths = [sum(e.attention_mask) for e in encodings]
        for rows in padding_bounded_passes(lengths, self._batch_size):
            width = max(lengths[i] for i in rows)
            inputs = {
                "input_ids": np.array([encodings[i].ids[:width] for i in rows], dtype=np.int64),
                "attention_mask": np.array(
                    [encodings[i].attention_mask[:width] for i in rows], dtype=np.int64
                ),
                "token_type_ids": np.array([encodings[i].type_ids[:width] for i in rows], dtype=np.int64),
            }
            (vectors,) = self._session.run([OUTPUT_NAME], inputs)
            out[rows] = vectors
        return out


def padding_bounded_passes(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices per forward pass: at most ``batch_size`` rows, none padded past twice its length
    (one 256-piece text in a pass of short ones would make each of them cost as much as it)."""
    return length_groups(range(len(lengths)), lengths.__getitem__, 2, most=batch_size)


@functools.cache
def shared_onnx_embedder(directory: Path, device: str, threads: int = 0) -> OnnxEmbedder:
    """One session per process, export and device: it is read-only and onnxruntime runs it from any thread."""
    return OnnxEmbedder(directory, device, threads)
