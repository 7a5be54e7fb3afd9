"""The learned pair classifier, served with onnxruntime: P(one answer serves both texts).

A model directory holds ``manifest.json``, the ONNX file and the feature assets it
names (word document frequencies, the embedding projection). The manifest pins each
file's SHA-256, the feature layout and the embedder the vectors came from; any
mismatch refuses the model with ``VerifierModelError`` instead of serving verdicts
from features the model was never trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tierwise.cache.extras import MissingExtra
from tierwise.cache.verifier_cross import (
    CrossEncoder,
    CrossEncoderError,
    CrossEncoderSpec,
    single_thread_session,
    verifier_tokenizer_path,
)
from tierwise.cache.verifier_features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    EmbeddingProjection,
    FeatureAssetError,
    FeatureAssets,
    Vector,
    pair_features,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 2
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "verifier"


class VerifierModelError(RuntimeError):
    """A verifier model that must not be served: missing, tampered, or built for other features."""


@dataclass(frozen=True, slots=True)
class VerifierManifest:
    """What a trained verifier promises; ``threshold`` and ``min_cosine`` were chosen on validation."""

    model_file: str
    idf_file: str
    projection_file: str
    sha256: Mapping[str, str]
    feature_version: int
    feature_names: tuple[str, ...]
    embedder_key: str
    threshold: float
    min_cosine: float
    hard_rules: tuple[str, ...]
    # Rules whose differences do not reject outright but raise the bar to ``soft_rule_threshold``
    # (on QQP-like text most named-entity and number differences are rephrasings of one question).
    soft_rules: tuple[str, ...] = ()
    soft_rule_threshold: float = 1.0
    cross_encoder: CrossEncoderSpec | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> tuple[str, ...]:
        base = (self.model_file, self.idf_file, self.projection_file)
        return base if self.cross_encoder is None else (*base, self.cross_encoder.model_file)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model_file": self.model_file,
            "idf_file": self.idf_file,
            "projection_file": self.projection_file,
            "sha256": dict(self.sha256),
            "feature_version": self.feature_version,
            "feature_names": list(self.feature_names),
            "embedder_key": self.embedder_key,
            "threshold": self.threshold,
            "min_cosine": self.min_cosine,
            "hard_rules": list(self.hard_rules),
            "soft_rules": list(self.soft_rules),
            "soft_rule_threshold": self.soft_rule_threshold,
            **({} if self.cross_encoder is None else {"cross_encoder": self.cross_encoder.to_json()}),
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: Path) -> VerifierManifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise VerifierModelError(
                f"{source}: manifest format {data.get('format')!r} is not {MANIFEST_FORMAT}"
            )
        known = {
            "format",
            "model_file",
            "idf_file",
            "projection_file",
            "sha256",
            "feature_version",
            "feature_names",
            "embedder_key",
            "threshold",
            "min_cosine",
            "hard_rules",
            "soft_rules",
            "soft_rule_threshold",
            "cross_encoder",
        }
        try:
            manifest = cls(
                model_file=str(data["model_file"]),
                idf_file=str(data["idf_file"]),
                projection_file=str(data["projection_file"]),
                sha256={str(name): str(digest).lower() for name, digest in dict(data["sha256"]).items()},
                feature_version=int(data["feature_version"]),
                feature_names=tuple(str(name) for name in data["feature_names"]),
                embedder_key=str(data["embedder_key"]),
                threshold=float(data["threshold"]),
                min_cosine=float(data["min_cosine"]),
                hard_rules=tuple(str(name) for name in data["hard_rules"]),
                soft_rules=tuple(str(name) for name in data.get("soft_rules", ())),
                soft_rule_threshold=float(data.get("soft_rule_threshold", 1.0)),
                cross_encoder=(
                    CrossEncoderSpec.from_json(data["cross_encoder"]) if data.get("cross_encoder") else None
                ),
                extra={key: value for key, value in data.items() if key not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VerifierModelError(f"{source}: malformed manifest ({exc!r})") from exc
        for name in manifest.files:
            if Path(name).name != name or name in ("", ".", ".."):
                raise VerifierModelError(f"{source}: model files must be bare file names, got {name!r}")
            if name not in manifest.sha256:
                raise VerifierModelError(f"{source}: no SHA-256 pinned for {name!r}")
        if not (0.0 <= manifest.threshold <= 1.0 and math.isfinite(manifest.min_cosine)):
            raise VerifierModelError(f"{source}: threshold must lie in [0, 1] and min_cosine be finite")
        if not manifest.threshold <= manifest.soft_rule_threshold <= 1.0:
            raise VerifierModelError(f"{source}: soft_rule_threshold must lie in [threshold, 1]")
        if set(manifest.soft_rules) & set(manifest.hard_rules):
            raise VerifierModelError(f"{source}: a rule cannot be both hard and soft")
        return manifest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> VerifierManifest:
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VerifierModelError(f"no verifier manifest at {path}") from None
    except (OSError, ValueError) as exc:
        raise VerifierModelError(f"cannot read verifier manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise VerifierModelError(f"{path}: manifest must be a JSON object")
    return VerifierManifest.from_json(data, path)


class VerifierModel:
    """An ONNX pair classifier whose file and features were checked against its manifest."""

    def __init__(self, directory: Path = DEFAULT_MODEL_DIR, expected_embedder_key: str | None = None) -> None:
        self.directory = directory
        self.manifest = read_manifest(directory)
        payloads = {
            name: _read_pinned(directory, name, self.manifest.sha256[name]) for name in self.manifest.files
        }
        model_path = directory / self.manifest.model_file
        payload = payloads[self.manifest.model_file]
        if self.manifest.feature_version != FEATURE_VERSION or self.manifest.feature_names != FEATURE_NAMES:
            raise VerifierModelError(
                f"verifier model {model_path} was trained on feature layout v{self.manifest.feature_version} "
                f"{list(self.manifest.feature_names)}, this code computes v{FEATURE_VERSION} {list(FEATURE_NAMES)}"
            )
        if expected_embedder_key is not None and expected_embedder_key != self.manifest.embedder_key:
            raise VerifierModelError(
                f"verifier model {model_path} was trained on cosines of {self.manifest.embedder_key}, "
                f"but the cache embeds with {expected_embedder_key}"
            )
        try:
            self.assets = FeatureAssets.from_bytes(payloads[self.manifest.idf_file])
            self.projection = EmbeddingProjection.from_bytes(payloads[self.manifest.projection_file])
        except FeatureAssetError as exc:
            raise VerifierModelError(f"verifier model {directory}: {exc}") from exc
        try:
            self._session = single_thread_session(payload)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad graphs
            raise VerifierModelError(f"onnxruntime cannot load verifier model {model_path}: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] != len(FEATURE_NAMES):
            raise VerifierModelError(
                f"verifier model {model_path} expects inputs {[(i.name, i.shape) for i in inputs]}, "
                f"not one [N, {len(FEATURE_NAMES)}] matrix"
            )
        self._input_name = inputs[0].name
        names = [output.name for output in self._session.get_outputs()]
        if "probabilities" not in names:
            raise VerifierModelError(f"verifier model {model_path} has no 'probabilities' output: {names}")
        self._output_name = "probabilities"
        self.cross_encoder: CrossEncoder | None = None
        spec = self.manifest.cross_encoder
        if spec is not None:
            try:
                self.cross_encoder = CrossEncoder(
                    payloads[spec.model_file], spec, verifier_tokenizer_path(directory)
                )
            except (CrossEncoderError, MissingExtra) as exc:
                raise VerifierModelError(f"verifier model {directory}: {exc}") from exc

    def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """P(same answer) for each feature row."""
        matrix = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, len(FEATURE_NAMES))
        (probabilities,) = self._session.run([self._output_name], {self._input_name: matrix})
        return np.asarray(probabilities, dtype=np.float32)[:, 1]

    def probability(
        self, query_text: str, candidate_text: str, cosine: float, vectors: tuple[Vector, Vector]
    ) -> float:
        """The pair classifier's P(same answer) (the cross-encoder, if any, is asked separately)."""
        row = pair_features(query_text, candidate_text, cosine, vectors, self.assets, self.projection)
        return float(self.predict(row)[0])


def _read_pinned(directory: Path, name: str, pinned: str) -> bytes:
    """The file's bytes, only if they hash to what the manifest pins."""
    path = directory / name
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise VerifierModelError(f"cannot read verifier file {path}: {exc}") from exc
    actual = hashlib.sha256(payload).hexdigest()
    if actual != pinned:
        raise VerifierModelError(
            f"verifier file {path} has SHA-256 {actual}, but its manifest pins {pinned}:"
            " refusing a file that is not the one that was evaluated"
        )
    return payload
