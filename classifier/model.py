"""Loading a model version and predicting P(adequate) per tier with onnxruntime.

A version is refused, never half-loaded, when a file's SHA-256 differs from
the manifest, when it was trained on other features or another embedder, when
its tiers are not the configured ones, or, where the server acts on
unfamiliar prompts, when it has no unfamiliarity calibration or one that its
manifest does not vouch for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tierwise.classifier.features import FEATURE_SPEC, FeatureSpec
from tierwise.classifier.manifest import (
    ONNX_FILE,
    ONNX_INPUT,
    ONNX_OUTPUT,
    Manifest,
    ManifestError,
    UtilityCalibration,
    read_manifest,
    sha256_bytes,
    sha256_file,
)
from tierwise.classifier.neighbours import NEIGHBOURS_FILE, NeighbourVote, blend
from tierwise.classifier.unfamiliarity import UNFAMILIARITY_FILE, UnfamiliarityCalibration, measure_scores

if TYPE_CHECKING:
    import onnxruntime

DEFAULT_EMBEDDER_KEY = "sentence-transformers/all-MiniLM-L6-v2@384"


class ModelRefused(ValueError):
    """A model version failed verification; the message says which check and what differed."""


def _describe_spec_difference(expected: FeatureSpec, found: FeatureSpec) -> str:
    if found.version != expected.version:
        return f"feature version {found.version!r}, this server computes {expected.version!r}"
    if found.embedding_dim != expected.embedding_dim:
        return f"embedding dimension {found.embedding_dim}, this server computes {expected.embedding_dim}"
    missing = [n for n in expected.names if n not in found.names]
    extra = [n for n in found.names if n not in expected.names]
    if missing or extra:
        return f"feature names differ (model lacks {missing[:5]}, model has extra {extra[:5]})"
    return "feature names are in a different order"


def verify_manifest(
    manifest: Manifest,
    expected_tiers: Sequence[str] | None,
    embedder_key: str,
    feature_spec: FeatureSpec = FEATURE_SPEC,
) -> None:
    """Raise ModelRefused unless ``manifest`` fits this server's features, embedder and tiers."""
    where = f"model version {manifest.version!r}"
    if manifest.feature_spec != feature_spec:
        raise ModelRefused(f"{where}: {_describe_spec_difference(feature_spec, manifest.feature_spec)}")
    if manifest.embedder_key != embedder_key:
        raise ModelRefused(
            f"{where}: trained on embeddings of {manifest.embedder_key!r}, the server embeds with {embedder_key!r}"
        )
    if expected_tiers is not None and set(manifest.tiers) != set(expected_tiers):
        unknown = sorted(set(expected_tiers) - set(manifest.tiers))
        extra = sorted(set(manifest.tiers) - set(expected_tiers))
        raise ModelRefused(
            f"{where}: tiers do not match the configured tiers "
            f"(configured but not in the model: {unknown}; in the model but not configured: {extra})"
        )


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Raise ModelRefused unless every listed file exists and matches its SHA-256."""
    if ONNX_FILE not in manifest.files:
        raise ModelRefused(f"model version {manifest.version!r}: the manifest does not list {ONNX_FILE}")
    for name, expected in manifest.files.items():
        path = (directory / name).resolve()
        if directory.resolve() not in path.parents:
            raise ModelRefused(
                f"model version {manifest.version!r}: file {name!r} lies outside its directory"
            )
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ModelRefused(f"model version {manifest.version!r}: cannot read {name}: {exc}") from None
        if actual != expected:
            raise ModelRefused(
                f"model version {manifest.version!r}: {name} has SHA-256 {actual}, the manifest says {expected}"
            )


@dataclass(frozen=True, slots=True)
class Assessment:
    """One prompt as the model sees it: P(adequate) per tier, and how unfamiliar the prompt is."""

    p_adequate: dict[str, float]
    unfamiliarity: float | None  # the calibrated measure's score; None when the version has no calibration


def pick_providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers: CUDA first when it is available (or asked for), CPU always."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(f"CUDAExecutionProvider requested but onnxruntime offers only {available}")
    if "CUDAExecutionProvider" in available and device in ("auto", "cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ClassifierModel:
    """One loaded, verified model version; ``predict`` is safe to call from many threads.

    P(adequate) is the ONNX graph's (the trees'), or, when the version carries a
    neighbour memory, its weighted mean with the memory's vote.
    """

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        session: onnxruntime.InferenceSession,
        neighbours: NeighbourVote | None = None,
        unfamiliarity: UnfamiliarityCalibration | None = None,
    ) -> None:
        if (neighbours is None) != (manifest.neighbours is None):
            raise ValueError("a neighbour memory comes with, and only with, a manifest 'neighbours' section")
        if (unfamiliarity is None) != (manifest.unfamiliarity is None):
            raise ValueError("a calibration comes with, and only with, a manifest 'unfamiliarity' section")
        if unfamiliarity is not None and neighbours is None:
            raise ValueError("an unfamiliarity calibration needs the neighbour memory it measures against")
        self.directory = directory
        self.manifest = manifest
        self._session = session
        self._neighbours = neighbours
        self._vote_weight = 0.0 if manifest.neighbours is None else manifest.neighbours.weight
        self.unfamiliarity = unfamiliarity
        self._width = manifest.feature_spec.size
        self._embedding_dim = manifest.feature_spec.embedding_dim
        self.providers: tuple[str, ...] = tuple(session.get_providers())

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def tiers(self) -> tuple[str, ...]:
        return self.manifest.tiers

    @property
    def calibration(self) -> UtilityCalibration | None:
        return self.manifest.calibration

    def _batch(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        batch = np.ascontiguousarray(features, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch.reshape(1, -1)
        if batch.ndim != 2 or batch.shape[1] != self._width:
            raise ValueError(f"features must have {self._width} columns, got shape {batch.shape}")
        return batch

    def _trees(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        (output,) = self._session.run([ONNX_OUTPUT], {ONNX_INPUT: batch})
        return np.asarray(output, dtype=np.float32)

    def tree_matrix(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The ONNX graph's P(adequate) alone, (rows, tiers) (what must match LightGBM)."""
        return self._trees(self._batch(features))

    def predict_matrix(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """P(adequate) as an (rows, tiers) array, columns in ``self.tiers`` order."""
        batch = self._batch(features)
        trees = self._trees(batch)
        if self._neighbours is None:
            return trees
        return blend(trees, self._neighbours.predict(batch[:, : self._embedding_dim]), self._vote_weight)

    def predict(self, features: npt.ArrayLike) -> dict[str, float]:
        """P(adequate) per tier for one feature vector."""
        row = self.predict_matrix(features)
        if row.shape[0] != 1:
            raise ValueError(f"predict takes one feature vector, got {row.shape[0]}; use predict_batch")
        return dict(zip(self.tiers, (float(p) for p in row[0]), strict=True))

    def assess_matrix(
        self, features: npt.ArrayLike
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None]:
        """P(adequate) (rows, tiers) and, with a calibration, each row's unfamiliarity score."""
        calibration = self.unfamiliarity
        if calibration is None or self._neighbours is None:
            return self.predict_matrix(features), None
        batch = self._batch(features)
        trees = self._trees(batch)
        vote, closeness = self._neighbours.predict_with_closeness(
            batch[:, : self._embedding_dim], calibration.k
        )
        scores = measure_scores(calibration.measure, trees, vote, closeness)
        return blend(trees, vote, self._vote_weight), scores

    def assess(self, features: npt.ArrayLike) -> Assessment:
        """P(adequate) per tier and the unfamiliarity score of one feature vector."""
        matrix, scores = self.assess_matrix(features)
        if matrix.shape[0] != 1:
            raise ValueError(f"assess takes one feature vector, got {matrix.shape[0]}")
        p = dict(zip(self.tiers, (float(v) for v in matrix[0]), strict=True))
        return Assessment(p, None if scores is None else float(scores[0]))

    def predict_batch(self, features: npt.ArrayLike) -> list[dict[str, float]]:
        matrix = self.predict_matrix(features)
        return [dict(zip(self.tiers, (float(p) for p in row), strict=True)) for row in matrix]


def load_model(
    directory: str | Path,
    expected_tiers: Sequence[str] | None = None,
    embedder_key: str = DEFAULT_EMBEDDER_KEY,
    device: str = "auto",
    feature_spec: FeatureSpec = FEATURE_SPEC,
    require_unfamiliarity: bool = False,
) -> ClassifierModel:
    """Verify and load the model version in ``directory``; raise ModelRefused when anything is off
    (``require_unfamiliarity``: also when it has no unfamiliarity calibration)."""
    import onnxruntime

    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except ManifestError as exc:
        raise ModelRefused(str(exc)) from None
    verify_manifest(manifest, expected_tiers, embedder_key, feature_spec)
    if require_unfamiliarity and manifest.unfamiliarity is None:
        raise ModelRefused(
            f"model version {manifest.version!r} has no unfamiliarity calibration (no 'unfamiliarity' "
            "section in its manifest): retrain it with `tierwise router train`, or set "
            "routing.classifier.unfamiliar.action: trust_model"
        )
    verify_files(directory, manifest)
    options = onnxruntime.SessionOptions()
    # Single rows are the common case: one thread avoids handoff costs and oversubscription.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        # Read the verified bytes once, so the file cannot change between the check and the load.
        payload = (directory / ONNX_FILE).read_bytes()
        if sha256_bytes(payload) != manifest.files[ONNX_FILE]:
            raise ModelRefused(f"model version {manifest.version!r}: {ONNX_FILE} changed while loading")
        session = onnxruntime.InferenceSession(payload, options, providers=pick_providers(device))
    except ModelRefused:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        raise ModelRefused(f"model version {manifest.version!r}: onnxruntime cannot load it: {exc}") from None
    _check_graph(manifest, session)
    neighbours = _load_neighbours(directory, manifest)
    return ClassifierModel(
        directory, manifest, session, neighbours, _load_unfamiliarity(directory, manifest, neighbours)
    )


def _section_file(directory: Path, manifest: Manifest, section: str, name: str) -> bytes:
    """The bytes of the file a manifest section names, read once and checked against its listed digest."""
    where = f"model version {manifest.version!r}"
    if name not in manifest.files:
        raise ModelRefused(f"{where}: the manifest has a {section} section but does not list {name}")
    try:
        payload = (directory / name).read_bytes()
    except OSError as exc:
        raise ModelRefused(f"{where}: cannot read {name}: {exc}") from None
    if sha256_bytes(payload) != manifest.files[name]:
        raise ModelRefused(f"{where}: {name} changed while loading")
    return payload


def _load_unfamiliarity(
    directory: Path, manifest: Manifest, neighbours: NeighbourVote | None
) -> UnfamiliarityCalibration | None:
    spec = manifest.unfamiliarity
    if spec is None:
        return None
    where = f"model version {manifest.version!r}"
    payload = _section_file(directory, manifest, "unfamiliarity", UNFAMILIARITY_FILE)
    try:
        calibration = UnfamiliarityCalibration.from_bytes(payload)
    except ValueError as exc:
        raise ModelRefused(f"{where}: {UNFAMILIARITY_FILE}: {exc}") from None
    if not spec.matches(calibration):
        raise ModelRefused(
            f"{where}: {UNFAMILIARITY_FILE} holds measure {calibration.measure!r} with threshold "
            f"{calibration.threshold}, the manifest says {spec.measure!r} with {spec.threshold}"
        )
    if neighbours is None:
        raise ModelRefused(
            f"{where}: an unfamiliarity calibration needs the neighbour memory, which it lacks"
        )
    if len(calibration.base_rates) != len(manifest.tiers):
        raise ModelRefused(
            f"{where}: {UNFAMILIARITY_FILE} has {len(calibration.base_rates)} base rates for "
            f"{len(manifest.tiers)} tiers"
        )
    return calibration


def _load_neighbours(directory: Path, manifest: Manifest) -> NeighbourVote | None:
    spec = manifest.neighbours
    if spec is None:
        return None
    where = f"model version {manifest.version!r}"
    payload = _section_file(directory, manifest, "neighbours", NEIGHBOURS_FILE)
    try:
        vote = NeighbourVote.from_bytes(payload)
    except ValueError as exc:
        raise ModelRefused(f"{where}: {NEIGHBOURS_FILE}: {exc}") from None
    found = (vote.dimension, vote.tiers, vote.k, vote.size)
    expected = (manifest.feature_spec.embedding_dim, len(manifest.tiers), spec.k, spec.size)
    if found != expected:
        raise ModelRefused(
            f"{where}: {NEIGHBOURS_FILE} holds (dimension, tiers, k, size) {found}, the manifest says {expected}"
        )
    return vote


def _check_graph(manifest: Manifest, session: onnxruntime.InferenceSession) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    where = f"model version {manifest.version!r}"
    if ONNX_INPUT not in inputs or inputs[ONNX_INPUT][-1] != manifest.feature_spec.size:
        raise ModelRefused(
            f"{where}: the graph does not read {manifest.feature_spec.size} features ({inputs})"
        )
    if ONNX_OUTPUT not in outputs or outputs[ONNX_OUTPUT][-1] != len(manifest.tiers):
        raise ModelRefused(f"{where}: the graph does not output one column per tier ({outputs})")
