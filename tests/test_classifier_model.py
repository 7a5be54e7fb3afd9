"""Model versions: ONNX matches LightGBM, and a version that does not fit is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tierwise.classifier import FEATURE_SPEC, ModelRefused, UtilityCalibration, load_model
from tierwise.classifier.manifest import MANIFEST_NAME, ONNX_FILE, read_manifest, write_manifest
from tierwise.training.fit import Candidate, FittedModel, fit_candidate, project
from tierwise.training.train import write_version

TIERS = ("small", "medium", "large")
EMBEDDER_KEY = "sentence-transformers/all-MiniLM-L6-v2@384"


def synthetic_data(rows: int, seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """Features of FEATURE_SPEC's width; a tier is adequate more often the stronger it is and the
    larger the first statistic is."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(rows, FEATURE_SPEC.embedding_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    statistics = rng.normal(size=(rows, FEATURE_SPEC.size - FEATURE_SPEC.embedding_dim)).astype(np.float32)
    features = np.hstack([embeddings, statistics])
    signal = 2 * statistics[:, 0]
    labels = np.column_stack(
        [(signal + rng.normal(size=rows) + offset > 0).astype(np.float64) for offset in (-0.5, 0.3, 1.2)]
    )
    labels[rng.random(size=labels.shape) < 0.03] = np.nan  # missing scores stay missing
    return features, labels


def fit_small(layout: str = "per_tier", pca: int = 4, seed: int = 0) -> FittedModel:
    features, labels = synthetic_data(240, seed)
    candidate = Candidate(
        layout="joint" if layout == "joint" else "per_tier",
        pca_components=pca,
        num_leaves=4,
        min_data_in_leaf=10,
        rounds=25,
        learning_rate=0.2,
    )
    return fit_candidate(
        candidate, FEATURE_SPEC, TIERS, features[:180], labels[:180], features[180:], labels[180:]
    )


def build_version(
    directory: Path,
    version: str = "v1",
    layout: str = "per_tier",
    calibration: UtilityCalibration | None = None,
    seed: int = 0,
    gate: float | None = None,
) -> Path:
    """A complete, loadable model version in ``directory``."""
    from dataclasses import replace

    fitted = fit_small(layout, seed=seed)
    manifest = write_version(directory, fitted, version, EMBEDDER_KEY, "data-hash", 0.5)
    metrics = {} if gate is None else {"gate": {"name": "aiq_classifier_threshold", "value": gate}}
    write_manifest(directory, replace(manifest, calibration=calibration, metrics=metrics))
    return directory


@pytest.mark.parametrize(("layout", "pca"), [("per_tier", 4), ("joint", 4), ("per_tier", 0)])
def test_onnx_matches_lightgbm(tmp_path: Path, layout: str, pca: int) -> None:
    fitted = fit_small(layout, pca)
    write_version(tmp_path, fitted, "v1", EMBEDDER_KEY, "data-hash", 0.5)
    model = load_model(tmp_path, TIERS, EMBEDDER_KEY, device="cpu")
    features, _ = synthetic_data(64, seed=7)
    reference = fitted.predict_projected(project(FEATURE_SPEC, fitted.projection, features))
    served = model.predict_matrix(features)
    assert served.shape == (64, len(TIERS))
    np.testing.assert_allclose(served, reference, atol=1e-5, rtol=0)
    # the model learned the signal: a higher first statistic, a higher P(adequate)
    assert np.corrcoef(features[:, FEATURE_SPEC.embedding_dim], served[:, 0])[0, 1] > 0.5


def test_predict_single_and_batch(tmp_path: Path) -> None:
    model = load_model(build_version(tmp_path), TIERS, EMBEDDER_KEY, device="cpu")
    features, _ = synthetic_data(3, seed=3)
    one = model.predict(features[0])
    assert set(one) == set(TIERS) and all(0.0 <= p <= 1.0 for p in one.values())
    batch = model.predict_batch(features)
    assert len(batch) == 3 and batch[0] == pytest.approx(one)
    with pytest.raises(ValueError, match="columns"):
        model.predict_matrix(features[:, :10])
    with pytest.raises(ValueError, match="predict_batch"):
        model.predict(features)
    assert model.version == "v1" and model.providers[-1] == "CPUExecutionProvider"


def test_tampered_model_file_is_refused(tmp_path: Path) -> None:
    directory = build_version(tmp_path)
    payload = bytearray((directory / ONNX_FILE).read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    (directory / ONNX_FILE).write_bytes(bytes(payload))
    with pytest.raises(ModelRefused, match=r"model\.onnx has SHA-256 .* the manifest says"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


def test_tampered_booster_file_is_refused(tmp_path: Path) -> None:
    directory = build_version(tmp_path)
    booster = directory / "lightgbm" / "small.txt"
    booster.write_text(booster.read_text() + "\n", encoding="utf-8")
    with pytest.raises(ModelRefused, match=r"lightgbm/small\.txt has SHA-256"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    directory = build_version(tmp_path)
    (directory / "projection.npz").unlink()
    with pytest.raises(ModelRefused, match=r"cannot read projection\.npz"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


def test_tier_mismatch_is_refused_naming_the_tiers(tmp_path: Path) -> None:
    directory = build_version(tmp_path)
    with pytest.raises(
        ModelRefused, match=r"configured but not in the model: \['huge'\].*not configured: \['large'\]"
    ):
        load_model(directory, ("small", "medium", "huge"), EMBEDDER_KEY, device="cpu")


def test_embedder_and_feature_mismatch_are_refused(tmp_path: Path) -> None:
    directory = build_version(tmp_path)
    with pytest.raises(ModelRefused, match="trained on embeddings of"):
        load_model(directory, TIERS, "other-model@384", device="cpu")
    data = json.loads((directory / MANIFEST_NAME).read_text())
    data["feature_spec"]["version"] = "prompt-stats-0"
    (directory / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelRefused, match="feature version 'prompt-stats-0'"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")
    data["feature_spec"]["version"] = FEATURE_SPEC.version
    data["feature_spec"]["names"] = list(reversed(data["feature_spec"]["names"]))
    (directory / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelRefused, match="different order"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


def test_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    directory = build_version(tmp_path)
    (directory / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelRefused, match="not valid JSON"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")
    with pytest.raises(ModelRefused, match="cannot read"):
        load_model(tmp_path / "absent", TIERS, EMBEDDER_KEY, device="cpu")


def test_manifest_round_trip_keeps_calibration(tmp_path: Path) -> None:
    calibration = UtilityCalibration((0.0, 0.5, 1.0), (100.0, 10.0, 0.0))
    directory = build_version(tmp_path, calibration=calibration)
    manifest = read_manifest(directory)
    assert manifest.calibration == calibration
    assert manifest.tiers == TIERS and manifest.feature_spec == FEATURE_SPEC
    assert set(manifest.files) == {ONNX_FILE, "projection.npz", *(f"lightgbm/{t}.txt" for t in TIERS)}
    model = load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")
    assert model.calibration is not None and model.calibration.lambda_for(0.25) == pytest.approx(55.0)


def test_utility_calibration_interpolates_and_clamps() -> None:
    calibration = UtilityCalibration((0.2, 0.6, 0.9), (1000.0, 100.0, 0.0))
    assert calibration.lambda_for(0.0) == 1000.0
    assert calibration.lambda_for(0.4) == pytest.approx(550.0)
    assert calibration.lambda_for(0.95) == 0.0
    with pytest.raises(ValueError, match="ascend"):
        UtilityCalibration((0.5, 0.2), (1.0, 2.0))
    with pytest.raises(ValueError, match="negative"):
        UtilityCalibration((0.5,), (-1.0,))


def test_onnx_agrees_with_lightgbm_on_inputs_at_the_split_thresholds(tmp_path: Path) -> None:
    """Inputs a float32 step either side of every threshold: where rounding a threshold would flip a split.

    LightGBM reads any |x| <= 1e-35 as 0 (its zero threshold), so splits at zero are probed with
    0 and small values either side instead."""
    fitted = fit_small("per_tier", pca=0)
    write_version(tmp_path, fitted, "v1", EMBEDDER_KEY, "data-hash", 0.5)
    model = load_model(tmp_path, TIERS, EMBEDDER_KEY, device="cpu")
    splits: list[tuple[int, float]] = []

    def walk(node: dict[str, object]) -> None:
        if "split_feature" in node:
            splits.append((int(str(node["split_feature"])), float(str(node["threshold"]))))
            walk(node["left_child"])  # type: ignore[arg-type]
            walk(node["right_child"])  # type: ignore[arg-type]

    for booster in fitted.boosters:
        for tree in booster.dump_model()["tree_info"]:
            walk(tree["tree_structure"])
    base, _ = synthetic_data(1, seed=11)
    rows = []
    for feature, threshold in splits[:200]:
        at = np.float32(threshold)
        probes = (np.nextafter(at, np.float32(-np.inf)), at, np.nextafter(at, np.float32(np.inf)))
        if abs(threshold) < 1e-34:  # LightGBM splits at zero with a threshold of +-1e-35
            probes = (np.float32(-1e-6), np.float32(0.0), np.float32(1e-6))
        for value in probes:
            row = base[0].copy()
            row[feature] = value
            rows.append(row)
    features = np.stack(rows)
    np.testing.assert_allclose(
        model.predict_matrix(features), fitted.predict_projected(features), atol=1e-5, rtol=0
    )
