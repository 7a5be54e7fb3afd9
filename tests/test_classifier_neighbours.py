"""The kNN vote a model version may blend into its trees' P(adequate): what it computes, how it is
stored, and that a memory that does not fit its manifest is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from tests.test_classifier_model import EMBEDDER_KEY, TIERS, fit_small, synthetic_data
from tierwise.classifier import FEATURE_SPEC, ModelRefused, load_model
from tierwise.classifier.manifest import MANIFEST_NAME, read_manifest, sha256_file, write_manifest
from tierwise.classifier.neighbours import NEIGHBOURS_FILE, NeighbourSpec, NeighbourVote
from tierwise.training.dataset import RoutingData
from tierwise.training.fit import project
from tierwise.training.train import Neighbours, fit_neighbours, memory_rows, write_version

DIM = FEATURE_SPEC.embedding_dim


def brute_force_vote(
    memory: npt.NDArray[np.float32], labels: npt.NDArray[np.float64], queries: npt.NDArray[np.float32], k: int
) -> npt.NDArray[np.float64]:
    """The definition, one query at a time: the k most similar memory rows' label means per tier,
    the column's overall mean where none of the k has a label."""
    out = np.empty((len(queries), labels.shape[1]))
    for row, query in enumerate(queries.astype(np.float64)):
        nearest = np.argsort(-(memory.astype(np.float64) @ query), kind="stable")[:k]
        for tier in range(labels.shape[1]):
            known = labels[nearest, tier][~np.isnan(labels[nearest, tier])]
            everything = labels[:, tier][~np.isnan(labels[:, tier])]
            out[row, tier] = known.mean() if len(known) else everything.mean()
    return out


def memory_of(rows: int, seed: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    features, labels = synthetic_data(rows, seed)
    return features[:, :DIM], labels


def test_vote_matches_the_definition_with_missing_labels() -> None:
    embeddings, labels = memory_of(200)
    labels[:, 2] = np.nan
    labels[:5, 2] = 1.0  # a tier with few labels: most queries' neighbours have none and take its rate
    queries, _ = memory_of(30, seed=1)
    vote = NeighbourVote(embeddings, labels, k=7)
    np.testing.assert_allclose(
        vote.predict(queries), brute_force_vote(embeddings, labels, queries, 7), atol=1e-9
    )
    assert set(np.round(vote.predict(queries)[:, 2], 6)) <= {1.0, *(i / 7 for i in range(8))}
    np.testing.assert_allclose(vote.predict(queries[0]), vote.predict(queries[:1]))


def test_vote_round_trips_through_bytes_and_refuses_what_is_not_one() -> None:
    embeddings, labels = memory_of(50)
    vote = NeighbourVote(embeddings, labels, k=5)
    again = NeighbourVote.from_bytes(vote.to_bytes())
    assert (again.k, again.size, again.dimension, again.tiers) == (5, 50, DIM, len(TIERS))
    queries, _ = memory_of(10, seed=2)
    np.testing.assert_array_equal(again.predict(queries), vote.predict(queries))
    with pytest.raises(ValueError, match="not a neighbour memory"):
        NeighbourVote.from_bytes(b"not an npz archive")
    with pytest.raises(ValueError, match="columns"):
        vote.predict(queries[:, :10])
    with pytest.raises(ValueError, match="one label row per memory embedding"):
        NeighbourVote(embeddings, labels[:10], k=5)
    with pytest.raises(ValueError, match="empty"):
        NeighbourVote(embeddings[:0], labels[:0], k=5)
    assert NeighbourVote(embeddings[:3], labels[:3], k=10).k == 3  # k never exceeds the memory


def build_blended(directory: Path, weight: float = 0.5, k: int = 9) -> tuple[Path, NeighbourVote]:
    embeddings, labels = memory_of(180)
    vote = NeighbourVote(embeddings, labels, k)
    write_version(
        directory,
        fit_small(),
        "v-knn",
        EMBEDDER_KEY,
        "data-hash",
        0.5,
        neighbours=Neighbours(vote, NeighbourSpec(vote.k, weight, vote.size)),
    )
    return directory, vote


def test_served_p_is_the_weighted_mean_of_the_trees_and_the_vote(tmp_path: Path) -> None:
    directory, _ = build_blended(tmp_path, weight=0.25)
    model = load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")
    features, _ = synthetic_data(40, seed=5)
    fitted = fit_small()
    trees = fitted.predict_projected(project(FEATURE_SPEC, fitted.projection, features))
    np.testing.assert_allclose(model.tree_matrix(features), trees, atol=1e-5, rtol=0)
    expected = 0.75 * trees + 0.25 * brute_force_vote(*memory_of(180), features[:, :DIM], 9)
    np.testing.assert_allclose(model.predict_matrix(features), expected, atol=1e-5, rtol=0)
    assert model.predict(features[0]) == pytest.approx(dict(zip(TIERS, expected[0], strict=True)), abs=1e-5)
    assert read_manifest(directory).files[NEIGHBOURS_FILE] == sha256_file(directory / NEIGHBOURS_FILE)


def test_a_tampered_or_missing_memory_is_refused(tmp_path: Path) -> None:
    directory, _ = build_blended(tmp_path / "tampered")
    payload = bytearray((directory / NEIGHBOURS_FILE).read_bytes())
    payload[-40] ^= 0xFF
    (directory / NEIGHBOURS_FILE).write_bytes(bytes(payload))
    with pytest.raises(ModelRefused, match=r"neighbours\.npz has SHA-256"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")

    directory, _ = build_blended(tmp_path / "unlisted")
    manifest = read_manifest(directory)
    files = {name: digest for name, digest in manifest.files.items() if name != NEIGHBOURS_FILE}
    write_manifest(directory, replace(manifest, files=files))
    with pytest.raises(ModelRefused, match=r"neighbours section but does not list neighbours\.npz"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


def test_a_memory_that_does_not_fit_its_manifest_is_refused(tmp_path: Path) -> None:
    directory, _ = build_blended(tmp_path / "k", k=9)
    manifest = read_manifest(directory)
    assert manifest.neighbours is not None
    write_manifest(directory, replace(manifest, neighbours=replace(manifest.neighbours, k=5)))
    with pytest.raises(
        ModelRefused, match=r"holds \(dimension, tiers, k, size\) \(384, 3, 9, 180\).*\(384, 3, 5, 180\)"
    ):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")

    directory, _ = build_blended(tmp_path / "garbage")
    (directory / NEIGHBOURS_FILE).write_bytes(b"garbage")
    manifest = read_manifest(directory)
    write_manifest(
        directory,
        replace(
            manifest, files={**manifest.files, NEIGHBOURS_FILE: sha256_file(directory / NEIGHBOURS_FILE)}
        ),
    )
    with pytest.raises(ModelRefused, match=r"neighbours\.npz: not a neighbour memory"):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"file": NEIGHBOURS_FILE, "k": 9, "weight": 0.0, "size": 180},
            r"neighbours\.weight must lie in \(0, 1\]",
        ),
        ({"file": NEIGHBOURS_FILE, "k": 9, "weight": 1.5, "size": 180}, r"neighbours\.weight"),
        ({"file": NEIGHBOURS_FILE, "k": 0, "weight": 0.5, "size": 180}, r"neighbours\.k must be at least 1"),
        ({"file": "../elsewhere.npz", "k": 9, "weight": 0.5, "size": 180}, r"neighbours\.file must be"),
        ({"file": NEIGHBOURS_FILE, "weight": 0.5, "size": 180}, r"KeyError"),
        ([1, 2], r"'neighbours' must be an object or null"),
    ],
)
def test_a_malformed_neighbours_section_is_refused(tmp_path: Path, section: object, message: str) -> None:
    directory, _ = build_blended(tmp_path)
    data = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    data["neighbours"] = section
    (directory / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelRefused, match=message):
        load_model(directory, TIERS, EMBEDDER_KEY, device="cpu")


def test_a_version_without_a_memory_serves_its_trees(tmp_path: Path) -> None:
    fitted = fit_small()
    manifest = write_version(tmp_path, fitted, "v-trees", EMBEDDER_KEY, "data-hash", 0.5)
    assert manifest.neighbours is None and NEIGHBOURS_FILE not in manifest.files
    model = load_model(tmp_path, TIERS, EMBEDDER_KEY, device="cpu")
    features, _ = synthetic_data(8, seed=9)
    np.testing.assert_array_equal(model.predict_matrix(features), model.tree_matrix(features))


def routing_rows(count: int, seed: int = 0) -> RoutingData:
    features, labels = synthetic_data(count, seed)
    return RoutingData(
        tiers=TIERS,
        sample_ids=tuple(f"prompt-{seed}-{i}" for i in range(count)),
        texts=tuple(f"text {i}" for i in range(count)),
        tasks=("task",) * count,
        splits=np.full(count, "train"),
        scores=labels,
        costs=np.ones_like(labels),
        expected_costs=np.ones_like(labels),
        input_tokens=np.full(count, 10, dtype=np.int64),
        embeddings=features[:, :DIM],
        features=features,
        data_hash="synthetic",
    )


def test_the_memory_keeps_a_fixed_subset_past_its_limit() -> None:
    rows = routing_rows(60)
    assert memory_rows(rows, limit=60) is rows
    kept = memory_rows(rows, limit=25)
    assert len(kept) == 25 and set(kept.sample_ids) <= set(rows.sample_ids)
    reversed_rows = rows.subset(np.ones(60, dtype=bool))
    reversed_rows = replace(reversed_rows, sample_ids=reversed_rows.sample_ids[::-1])
    assert set(memory_rows(reversed_rows, limit=25).sample_ids) == set(kept.sample_ids)  # not row order
    neighbours = fit_neighbours(rows, routing_rows(20, seed=1), 0.5, 0.5, limit=25)
    assert (neighbours.spec.size, neighbours.vote.size) == (25, 25)
    assert neighbours.spec.k in (5, 10, 20)  # pick_k's choices that fit 25 rows
