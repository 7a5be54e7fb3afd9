"""FAISS partitioned index: isolation, removal, flat-to-HNSW/IVF switch-over, snapshots, threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import pytest

from tierwise.cache.embedder import Matrix, Vector
from tierwise.cache.index import IndexParams, Kind, PartitionedIndex, ivf_lists

Approximate = Literal["hnsw", "ivf"]

DIM = 32


def unit_vectors(count: int, seed: int) -> Matrix:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    result: Matrix = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return result


def near(vector: Vector, seed: int, noise: float = 0.15) -> Vector:
    moved = vector + noise * unit_vectors(1, seed)[0]
    result: Vector = (moved / np.linalg.norm(moved)).astype(np.float32)
    return result


def labels(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.int64)


def test_search_stays_inside_its_partition() -> None:
    index = PartitionedIndex(DIM)
    vectors = unit_vectors(2, seed=1)
    index.add("tenant-a", labels(1, 1), vectors[:1])
    index.add("tenant-b", labels(2, 1), vectors[1:])
    [(label, cosine)] = index.search("tenant-a", vectors[1], k=5)
    assert label == 1 and cosine == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)
    assert [label for label, _ in index.search("tenant-b", vectors[1], k=5)] == [2]
    assert index.search("tenant-c", vectors[1], k=5) == []


def test_remove_and_re_add_are_idempotent() -> None:
    index = PartitionedIndex(DIM)
    vectors = unit_vectors(3, seed=2)
    index.add("p", labels(10, 3), vectors)
    index.add("p", labels(10, 1), vectors[:1])  # already present: skipped
    assert len(index) == 3
    index.remove("p", [10, 999])
    assert [label for label, _ in index.search("p", vectors[0], k=3)] != [10]
    assert 10 not in [label for label, _ in index.search("p", vectors[0], k=3)]
    index.remove("p", [11, 12])
    assert index.partition_keys() == []  # empty partitions are dropped
    assert index.search("p", vectors[0], k=3) == []


APPROXIMATE = pytest.mark.parametrize("kind", ["hnsw", "ivf"])


@APPROXIMATE
def test_switch_over_to_an_approximate_index_keeps_answers(kind: Approximate) -> None:
    params = IndexParams(
        hnsw_after=200, hnsw_m=16, hnsw_ef_construction=64, hnsw_ef_search=64, approximate=kind
    )
    index = PartitionedIndex(DIM, params)
    vectors = unit_vectors(400, seed=3)
    queries = [near(vectors[i], seed=1000 + i) for i in range(0, 400, 10)]
    index.add("p", labels(0, 150), vectors[:150])
    flat_answers = [index.search("p", query, k=1)[0][0] for query in queries[:15]]
    wants = index.add("p", labels(150, 250), vectors[150:])
    assert wants and not index.is_approximate("p")
    before = [index.search("p", query, k=1)[0][0] for query in queries]
    assert index.rebuild("p") and index.is_approximate("p")
    after = [index.search("p", query, k=1)[0][0] for query in queries]
    assert after == before == [i for i in range(0, 400, 10)]
    assert flat_answers == before[:15]


@APPROXIMATE
def test_approximate_removal_uses_tombstones_then_compacts_back_to_flat(kind: Approximate) -> None:
    params = IndexParams(hnsw_after=100, max_tombstone_ratio=0.2, approximate=kind)
    index = PartitionedIndex(DIM, params)
    vectors = unit_vectors(150, seed=4)
    if index.add("p", labels(0, 150), vectors):
        index.rebuild("p")
    assert index.is_approximate("p")
    assert not index.remove("p", labels(0, 10))  # 10 of 150 removed: below the ratio
    for i in range(10):
        assert i not in [label for label, _ in index.search("p", vectors[i], k=5)]
    assert index.remove("p", labels(10, 91))  # 49 left: under half of hnsw_after
    assert index.rebuild("p") and not index.is_approximate("p")
    assert index.partition_size("p") == 49
    assert all(index.search("p", vectors[i], k=1)[0][0] == i for i in range(101, 150))


def test_an_ivf_partition_is_retrained_when_it_outgrows_its_lists() -> None:
    index = PartitionedIndex(DIM, IndexParams(hnsw_after=400, approximate="ivf", ivf_nprobe=4))
    vectors = unit_vectors(2200, seed=8)
    assert index.add("p", labels(0, 500), vectors[:500]) and index.rebuild("p")
    lists_at_500 = faiss.downcast_index(index._partitions["p"].index.index).nlist
    assert lists_at_500 == ivf_lists(500) == 12
    assert not index.add("p", labels(500, 1500), vectors[500:2000])  # 2,000: not yet 4 x 500
    assert index.add("p", labels(2000, 200), vectors[2000:])  # 2,200 > 4 x 500: retrain
    assert index.rebuild("p") and index.is_approximate("p")
    assert faiss.downcast_index(index._partitions["p"].index.index).nlist == ivf_lists(2200) == 56
    assert not index.wants_rebuild("p")
    # Every stored vector is still found as its own nearest neighbour (nprobe 4 of 56 lists).
    found = sum(index.search("p", vectors[i], k=1)[0][0] == i for i in range(0, 2200, 11))
    assert found == 200


def test_auto_uses_hnsw_then_ivf_for_the_largest_partitions() -> None:
    index = PartitionedIndex(DIM, IndexParams(hnsw_after=100, ivf_after=300))
    vectors = unit_vectors(700, seed=9)
    assert index.add("p", labels(0, 200), vectors[:200]) and index.rebuild("p")
    assert index.partition_kind("p") == "hnsw"
    assert index.add("p", labels(200, 200), vectors[200:400]) and index.rebuild("p")
    assert index.partition_kind("p") == "ivf"
    assert index.remove("p", labels(0, 260)) is True  # 140 left: under half of ivf_after, back to HNSW
    assert index.rebuild("p") and index.partition_kind("p") == "hnsw"
    assert all(index.search("p", vectors[i], k=1)[0][0] == i for i in range(260, 400, 7))
    assert index.partition_kind("missing") is None


def test_changes_during_a_rebuild_are_replayed() -> None:
    index = PartitionedIndex(DIM, IndexParams(hnsw_after=50))
    vectors = unit_vectors(80, seed=5)
    index.add("p", labels(0, 60), vectors[:60])
    partition = index._partitions["p"]
    original_build = index._approximate_index

    def build_while_others_write(kind: Kind, build_labels: np.ndarray, build_vectors: np.ndarray) -> object:
        built = original_build(kind, build_labels, build_vectors)
        # Another thread writes while this one builds (the partition lock is free here).
        index.add("p", labels(60, 20), vectors[60:])
        index.remove("p", [0, 61])
        return built

    index._approximate_index = build_while_others_write  # type: ignore[method-assign,assignment]
    assert index.rebuild("p")
    assert index.is_approximate("p") and not partition.rebuilding
    found = {index.search("p", vectors[i], k=1)[0][0] for i in range(80)}
    assert 0 not in found and 61 not in found
    assert {i for i in range(80) if i not in (0, 61)} <= found
    assert index.partition_size("p") == 78


@APPROXIMATE
def test_snapshot_round_trip(tmp_path: Path, kind: Approximate) -> None:
    params = IndexParams(hnsw_after=100, approximate=kind)
    index = PartitionedIndex(DIM, params)
    vectors = unit_vectors(160, seed=6)
    index.add("small", labels(0, 10), vectors[:10])
    if index.add("big", labels(10, 150), vectors[10:]):
        index.rebuild("big")
    index.remove("big", [10, 11])
    path = tmp_path / "index.npz"
    index.save(path, {"generation": 7})
    loaded, manifest = PartitionedIndex.load(path, DIM, params)
    assert manifest == {"generation": 7}
    assert loaded.is_approximate("big") and not loaded.is_approximate("small")
    assert len(loaded) == 158
    for i in (0, 5, 12, 100, 159):
        assert loaded.search("big" if i >= 10 else "small", vectors[i], k=1)[0][0] == i
    assert 10 not in [label for label, _ in loaded.search("big", vectors[10], k=5)]
    with pytest.raises(ValueError):
        PartitionedIndex.load(path, DIM + 1, params)


def test_concurrent_adds_searches_and_rebuilds_from_threads() -> None:
    index = PartitionedIndex(DIM, IndexParams(hnsw_after=60, hnsw_m=8, hnsw_ef_construction=32))
    vectors = unit_vectors(800, seed=7)
    errors: list[BaseException] = []
    partitions = ["a", "b", "c", "d"]

    def writer(worker: int) -> None:
        try:
            for i in range(worker, 800, 4):
                key = partitions[i % 4]
                if index.add(key, labels(i, 1), vectors[i : i + 1]):
                    index.rebuild(key)
                if i % 7 == 0:
                    index.remove(key, [i])
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    def reader(worker: int) -> None:
        try:
            for i in range(400):
                for label, _ in index.search(partitions[(i + worker) % 4], vectors[i], k=3):
                    assert label % 4 == partitions.index(partitions[(i + worker) % 4])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reader, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for key in partitions:
        while index.rebuild(key):
            pass
    expected = {i for i in range(800) if i % 7 != 0}
    assert len(index) == len(expected)
    assert all(index.search(partitions[i % 4], vectors[i], k=1)[0][0] == i for i in sorted(expected))
