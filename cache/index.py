"""FAISS inner-product search, one index per cache partition.

A query is only ever compared with vectors of its own partition: each partition
holds its own ``IndexIDMap`` (labels are entry ids), exact (``IndexFlatIP``)
while small and approximate once it holds more than ``hnsw_after`` vectors:
HNSW, then IVF past ``ivf_after`` (``approximate="auto"``, the default; "hnsw"
or "ivf" pin one). IVF keeps k-means lists of about 4·√n vectors and searches
``ivf_nprobe`` of them. Why both: a graph takes new vectors one by one without
losing quality and is very accurate up to a few hundred thousand vectors, but
at a million clustered vectors its recall falls unless it is built with many
links and a wide search, a build of tens of minutes on a small host; IVF
trains and fills in a few minutes there and scans only the lists near the
query (bench/bench_cache.py measures both). An IVF partition is retrained once
it grows ``ivf_regrow`` times past the size it was trained at, so its lists
stay short. Vectors are
L2-normalised, so inner product is cosine similarity.

Thread safety: FAISS does not allow an add or remove concurrent with a search on
the same index, so each partition has a lock held by every operation on it. A
registry lock guards the partition map. Rebuilding a partition (flat to HNSW,
or compacting HNSW tombstones) runs without the partition's lock: it builds from
a copy, then swaps under the lock and replays the adds and removes that came
meanwhile, so searches and inserts are never held up by a build.

``IndexIDMap`` can only delete from an index that renumbers (flat), so vectors
removed from an approximate partition become tombstones that searches exclude
with an ``IDSelector``; a partition whose tombstones pass
``max_tombstone_ratio`` is rebuilt without them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt
from faiss.swigfaiss import SearchParametersHNSW, SearchParametersIVF

from tierwise.cache.embedder import Matrix, Vector

logger = logging.getLogger(__name__)

Labels = npt.NDArray[np.int64]
Kind = Literal["flat", "hnsw", "ivf"]
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class IndexParams:
    hnsw_after: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64
    max_tombstone_ratio: float = 0.2
    approximate: Literal["auto", "hnsw", "ivf"] = "auto"
    ivf_after: int = 250_000
    ivf_nprobe: int = 16
    ivf_regrow: float = 4.0

    def approximate_kind(self, size: int, current: Kind) -> Kind:
        """The approximate index for ``size`` vectors (auto: IVF past ``ivf_after``, back to HNSW only
        under half of it, so a partition near the line is not rebuilt back and forth)."""
        if self.approximate != "auto":
            return self.approximate
        if size > self.ivf_after or (current == "ivf" and size >= self.ivf_after // 2):
            return "ivf"
        return "hnsw"


@dataclass(eq=False)
class _Partition:
    index: Any  # faiss.IndexIDMap over IndexFlatIP, IndexHNSWFlat or IndexIVFFlat
    kind: Kind
    trained_size: int = 0  # IVF: how many vectors its lists were trained on
    live: set[int] = field(default_factory=set)
    tombstones: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    dropped: bool = False
    rebuilding: bool = False
    pending_adds: dict[int, Vector] = field(default_factory=dict)
    pending_removes: set[int] = field(default_factory=set)
    # Cached approximate-search parameters; they hold the tombstone selector, rebuilt when tombstones change.
    search_params: Any = None
    selector_refs: tuple[Any, ...] = ()


def set_faiss_threads(threads: int) -> None:
    """OpenMP threads for FAISS calls made from the calling thread (0 leaves the default)."""
    if threads > 0:
        faiss.omp_set_num_threads(threads)


def ivf_lists(size: int) -> int:
    """IVF lists for ``size`` vectors: about 4·√n (FAISS's guideline), at least one, at most n / 39
    (k-means wants 39 training points per centroid)."""
    return max(1, min(int(4 * np.sqrt(size)), size // 39))


def _flat_index(dim: int) -> Any:
    return faiss.IndexIDMap(faiss.IndexFlatIP(dim))


def _as_matrix(vectors: Matrix, dim: int) -> Matrix:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {matrix.shape}")
    return matrix


class PartitionedIndex:
    def __init__(self, dim: int, params: IndexParams | None = None) -> None:
        self.dim = dim
        self.params = params or IndexParams()
        if self.params.hnsw_after < 1:
            raise ValueError("hnsw_after must be at least 1")
        self._partitions: dict[str, _Partition] = {}
        self._registry = threading.Lock()

    # -- building blocks ----------------------------------------------------------------------------

    def _approximate_index(self, kind: Kind, labels: Labels, vectors: Matrix) -> Any:
        if kind == "ivf":
            return self._ivf_index(labels, vectors)
        hnsw = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.params.hnsw_ef_construction
        hnsw.hnsw.efSearch = self.params.hnsw_ef_search
        index = faiss.IndexIDMap(hnsw)
        if len(labels):
            index.add_with_ids(vectors, labels)
        return index

    def _ivf_index(self, labels: Labels, vectors: Matrix) -> Any:
        lists = ivf_lists(len(labels))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, lists, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        # k-means on at most 64 vectors per list (FAISS's own advice); a fixed seed keeps rebuilds reproducible.
        sample = vectors
        if len(vectors) > 64 * lists:
            sample = vectors[np.random.default_rng(0).choice(len(vectors), 64 * lists, replace=False)]
        ivf.train(np.ascontiguousarray(sample))
        ivf.nprobe = self.params.ivf_nprobe
        index = faiss.IndexIDMap(ivf)
        index.add_with_ids(vectors, labels)
        return index

    def _kind_for(self, partition: _Partition, size: int) -> Kind:
        # Hysteresis: an approximate partition goes back to flat only below half the switch-over size.
        after = self.params.hnsw_after
        if size > after or (partition.kind != "flat" and size >= after // 2):
            return self.params.approximate_kind(size, partition.kind)
        return "flat"

    def _wants_rebuild(self, partition: _Partition) -> bool:
        if partition.rebuilding:
            return False
        size = len(partition.live)
        if self._kind_for(partition, size) != partition.kind:
            return True
        if partition.kind == "ivf" and size > self.params.ivf_regrow * max(partition.trained_size, 1):
            return True  # the lists were trained for far fewer vectors: retrain them
        total = partition.index.ntotal
        return (
            bool(partition.tombstones) and len(partition.tombstones) > self.params.max_tombstone_ratio * total
        )

    def _partition_for_write(self, key: str) -> _Partition:
        with self._registry:
            partition = self._partitions.get(key)
            if partition is None:
                partition = _Partition(_flat_index(self.dim), kind="flat")
                self._partitions[key] = partition
            return partition

    def _drop_if_empty(self, key: str, partition: _Partition) -> None:
        with self._registry, partition.lock:
            if not partition.live and not partition.rebuilding and self._partitions.get(key) is partition:
                partition.dropped = True
                del self._partitions[key]

    @staticmethod
    def _contents(partition: _Partition) -> tuple[Labels, Matrix]:
        """The partition's live labels and vectors (a copy)."""
        total = partition.index.ntotal
        labels = faiss.vector_to_array(partition.index.id_map).astype(np.int64)
        vectors = partition.index.index.reconstruct_n(0, total) if total else np.zeros((0, 0), np.float32)
        if partition.tombstones:
            keep = ~np.isin(labels, np.fromiter(partition.tombstones, dtype=np.int64))
            labels, vectors = labels[keep], vectors[keep]
        return labels, np.ascontiguousarray(vectors, dtype=np.float32)

    @staticmethod
    def _remove_from(partition: _Partition, labels: list[int]) -> None:
        if partition.kind != "flat":
            partition.tombstones.update(labels)
            partition.search_params = None
        else:
            partition.index.remove_ids(np.asarray(labels, dtype=np.int64))

    def _search_params(self, partition: _Partition, k: int) -> Any:
        ivf = partition.kind == "ivf"
        if partition.search_params is None:
            params = SearchParametersIVF() if ivf else SearchParametersHNSW()  # type: ignore[no-untyped-call]
            refs: tuple[Any, ...] = ()
            if partition.tombstones:
                removed = faiss.IDSelectorBatch(np.fromiter(partition.tombstones, dtype=np.int64))
                keep = faiss.IDSelectorNot(removed)
                params.sel = keep
                refs = (removed, keep)
            partition.search_params, partition.selector_refs = params, refs
        if ivf:
            partition.search_params.nprobe = self.params.ivf_nprobe
        else:
            partition.search_params.efSearch = max(self.params.hnsw_ef_search, k)
        return partition.search_params

    # -- public API ---------------------------------------------------------------------------------

    def add(self, partition_key: str, labels: Labels, vectors: Matrix) -> bool:
        """Add vectors (labels already present are skipped); True when the partition wants a rebuild."""
        matrix = _as_matrix(vectors, self.dim)
        label_list = [int(label) for label in np.asarray(labels, dtype=np.int64).reshape(-1)]
        if len(label_list) != len(matrix):
            raise ValueError(f"{len(label_list)} labels for {len(matrix)} vectors")
        while True:
            partition = self._partition_for_write(partition_key)
            with partition.lock:
                if partition.dropped:
                    continue  # emptied and dropped meanwhile: take the new one
                fresh = [row for row, label in enumerate(label_list) if label not in partition.live]
                rows: list[int] = []
                for row in fresh:
                    label = label_list[row]
                    if label in partition.tombstones:
                        # An HNSW tombstone re-added (an idempotent replay of the same entry) is revived.
                        partition.tombstones.discard(label)
                        partition.search_params = None
                    else:
                        rows.append(row)
                    if partition.rebuilding:
                        if label in partition.pending_removes:
                            partition.pending_removes.discard(label)  # the build's copy still holds it
                        else:
                            partition.pending_adds[label] = matrix[row]
                if rows:
                    chosen = np.asarray([label_list[row] for row in rows], dtype=np.int64)
                    partition.index.add_with_ids(matrix[rows], chosen)
                partition.live.update(label_list[row] for row in fresh)
                return self._wants_rebuild(partition)

    def remove(self, partition_key: str, labels: Labels | list[int]) -> bool:
        """Remove labels (absent ones are ignored); True when the partition wants a rebuild."""
        with self._registry:
            partition = self._partitions.get(partition_key)
        if partition is None:
            return False
        with partition.lock:
            present = [int(label) for label in labels if int(label) in partition.live]
            if not present:
                return False
            self._remove_from(partition, present)
            partition.live.difference_update(present)
            if partition.rebuilding:
                for label in present:
                    if partition.pending_adds.pop(label, None) is None:
                        partition.pending_removes.add(label)
            wants = self._wants_rebuild(partition)
            empty = not partition.live
        if empty:
            self._drop_if_empty(partition_key, partition)
            return False
        return wants

    def search(self, partition_key: str, vector: Vector, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` ``(label, cosine)`` pairs from ``partition_key`` only, best first."""
        query = _as_matrix(np.asarray(vector, dtype=np.float32).reshape(1, -1), self.dim)
        with self._registry:
            partition = self._partitions.get(partition_key)
        if partition is None or k < 1:
            return []
        with partition.lock:
            size = len(partition.live)
            if size == 0:
                return []
            k = min(k, size)
            params = self._search_params(partition, k) if partition.kind != "flat" else None
            scores, labels = partition.index.search(query, k, params=params)
        return [
            (int(label), float(score))
            for label, score in zip(labels[0], scores[0], strict=True)
            if label >= 0
        ]

    def rebuild(self, partition_key: str) -> bool:
        """Rebuild a partition that wants it (switch type, drop tombstones, retrain outgrown IVF lists);
        False when there was nothing to do.

        Slow for large partitions, so callers run it off the request path.
        """
        with self._registry:
            partition = self._partitions.get(partition_key)
        if partition is None:
            return False
        with partition.lock:
            if not self._wants_rebuild(partition):
                return False
            labels, vectors = self._contents(partition)
            kind = self._kind_for(partition, len(labels))
            partition.rebuilding = True
        try:
            index = (
                _flat_index(self.dim) if kind == "flat" else self._approximate_index(kind, labels, vectors)
            )
            if kind == "flat" and len(labels):
                index.add_with_ids(vectors, labels)
        except BaseException:
            with partition.lock:
                partition.rebuilding = False
                partition.pending_adds.clear()
                partition.pending_removes.clear()
            raise
        with partition.lock:
            # Replay what changed while building.
            if partition.pending_adds:
                added = np.fromiter(partition.pending_adds, dtype=np.int64)
                index.add_with_ids(np.stack(list(partition.pending_adds.values())), added)
            partition.index, partition.kind = index, kind
            partition.trained_size = len(labels) if kind == "ivf" else 0
            partition.tombstones = set()
            partition.search_params, partition.selector_refs = None, ()
            if partition.pending_removes:
                self._remove_from(partition, sorted(partition.pending_removes))
            partition.pending_adds.clear()
            partition.pending_removes.clear()
            partition.rebuilding = False
            empty = not partition.live
        if empty:
            self._drop_if_empty(partition_key, partition)
        logger.info(
            "rebuilt cache partition %s as %s (%d vectors)",
            partition_key[:12],
            kind,
            len(labels),
        )
        return True

    def wants_rebuild(self, partition_key: str) -> bool:
        with self._registry:
            partition = self._partitions.get(partition_key)
        if partition is None:
            return False
        with partition.lock:
            return self._wants_rebuild(partition)

    def partition_keys(self) -> list[str]:
        with self._registry:
            return list(self._partitions)

    def partition_size(self, partition_key: str) -> int:
        with self._registry:
            partition = self._partitions.get(partition_key)
        if partition is None:
            return 0
        with partition.lock:
            return len(partition.live)

    def is_approximate(self, partition_key: str) -> bool:
        with self._registry:
            partition = self._partitions.get(partition_key)
        return partition is not None and partition.kind != "flat"

    def partition_kind(self, partition_key: str) -> Kind | None:
        with self._registry:
            partition = self._partitions.get(partition_key)
        return None if partition is None else partition.kind

    def __len__(self) -> int:
        with self._registry:
            partitions = list(self._partitions.values())
        return sum(len(partition.live) for partition in partitions)

    # -- snapshots ----------------------------------------------------------------------------------

    def save(self, path: Path, manifest: Mapping[str, object]) -> None:
        """Write every partition (``faiss.serialize_index``, the bytes ``write_index`` writes) atomically."""
        with self._registry:
            items = list(self._partitions.items())
        arrays: dict[str, Any] = {}
        keys: list[str] = []
        for key, partition in items:
            with partition.lock:
                if not partition.live:
                    continue
                number = len(keys)
                arrays[f"index_{number}"] = faiss.serialize_index(partition.index)
                arrays[f"tombstones_{number}"] = np.fromiter(partition.tombstones, dtype=np.int64)
                keys.append(key)
        header = {"format": SNAPSHOT_FORMAT, "dim": self.dim, "partitions": keys, "manifest": dict(manifest)}
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    @classmethod
    def load(
        cls, path: Path, dim: int, params: IndexParams | None = None
    ) -> tuple[PartitionedIndex, dict[str, Any]]:
        """Read a snapshot written by :meth:`save`; raises ``ValueError`` or ``OSError`` when unusable."""
        index = cls(dim, params)
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode("utf-8"))
            if header.get("format") != SNAPSHOT_FORMAT or header.get("dim") != dim:
                raise ValueError(
                    f"snapshot {path} has format {header.get('format')} and dim {header.get('dim')}"
                )
            for number, key in enumerate(header["partitions"]):
                faiss_index = faiss.deserialize_index(data[f"index_{number}"])
                if faiss_index.d != dim or not isinstance(faiss_index, faiss.IndexIDMap):
                    raise ValueError(
                        f"snapshot {path} partition {number} is not an id-mapped index of dim {dim}"
                    )
                tombstones = {int(label) for label in data[f"tombstones_{number}"]}
                inner = faiss.downcast_index(faiss_index.index)
                kind: Kind = (
                    "hnsw"
                    if isinstance(inner, faiss.IndexHNSW)
                    else "ivf"
                    if isinstance(inner, faiss.IndexIVF)
                    else "flat"
                )
                labels = {int(label) for label in faiss.vector_to_array(faiss_index.id_map)}
                index._partitions[key] = _Partition(
                    faiss_index,
                    kind,
                    trained_size=len(labels) if kind == "ivf" else 0,
                    live=labels - tombstones,
                    tombstones=tombstones,
                )
        return index, dict(header["manifest"])
