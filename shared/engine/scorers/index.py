"""The faiss index behind a memory bank: exact, PCA candidates re-ranked exactly, or approximate."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from shared.engine.config import INDEX_KINDS, IndexKind
from shared.engine.runtimes import cpu_flags
from shared.errors import ConfigError

_FAISS: Any = None
_FAISS_IMPORT = threading.Lock()
# faiss-cpu's wheel bundles its own OpenBLAS (0.3.15), which falls back to its generic SSE3 kernel
# ("Prescott") on CPUs newer than itself, e.g. Sapphire Rapids: an image's exact search against a
# 2,000-patch bank then took 26.3 ms instead of 4.5 ms (benchmarks/knn_search.py). OpenBLAS
# takes the kernel from OPENBLAS_CORETYPE when set, so it is set from the CPU's own flags before
# faiss loads (never to a kernel the CPU cannot run); a value the user set is kept.
OPENBLAS_CORE_ENV = "OPENBLAS_CORETYPE"
_AVX512_KERNEL_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
# faiss's OpenMP threads for searches. One unless the caller says otherwise: on an oversubscribed
# machine two OpenMP threads spin against each other (a 256-query search took 366 ms instead of
# 65 ms with one). On a dedicated 2-core machine two halve it (12 vs 23 ms); the scorer sets
# LINEGUARD_SCORER__SEARCH_THREADS per model worker (default 1: one worker per core instead).
_SEARCH_THREADS = 1


def set_search_threads(threads: int) -> None:
    """Number of OpenMP threads faiss may use per search (default 1)."""
    global _SEARCH_THREADS
    if threads < 1:
        raise ConfigError("search threads must be at least 1")
    _SEARCH_THREADS = threads


def openblas_core_for(cpu_flags: frozenset[str]) -> str | None:
    """The OpenBLAS kernel for a CPU with these ``/proc/cpuinfo`` flags, or None to let OpenBLAS
    choose (CPUs without AVX2 and FMA, and other architectures)."""
    if cpu_flags >= _AVX512_KERNEL_FLAGS:
        return "SkylakeX"
    if cpu_flags >= {"avx2", "fma"}:
        return "Haswell"
    return None


def _import_faiss() -> Any:
    """``import faiss`` (once), its OpenBLAS told which kernel this CPU runs (see OPENBLAS_CORE_ENV)."""
    global _FAISS
    if _FAISS is None:
        with _FAISS_IMPORT:
            if _FAISS is None:
                core = openblas_core_for(cpu_flags())
                if core is not None and not os.environ.get(OPENBLAS_CORE_ENV):
                    # Left set: an OpenBLAS loaded later gets the same kernel, which this CPU runs.
                    os.environ[OPENBLAS_CORE_ENV] = core
                import faiss

                faiss.cvar.distance_compute_blas_threshold = 0
                _FAISS = faiss
    return _FAISS


def faiss_blas_kernel() -> str | None:
    """The kernel faiss's own OpenBLAS runs (e.g. "SkylakeX"), None if it reports none."""
    from threadpoolctl import threadpool_info

    faiss_module()
    for library in threadpool_info():
        if library.get("internal_api") == "openblas" and "faiss" in str(library.get("filepath", "")):
            return str(library.get("architecture"))
    return None


def faiss_module() -> Any:
    """faiss, configured once: the BLAS path for every query count (3-8x faster at ~1k queries);
    this thread's OpenMP threads set on every call (OpenMP keeps the count per thread)."""
    faiss = _import_faiss()
    faiss.omp_set_num_threads(_SEARCH_THREADS)
    return faiss


def build_index(
    bank: np.ndarray,
    kind: IndexKind = "flat",
    seed: int = 0,
    reduced_dims: int = 128,
    refine_factor: int = 8,
) -> object:
    """A faiss index over ``bank``.

    ``flat``: exact search. ``pca-refine``: candidates (``refine_factor`` x k per query) from an
    exact search in a PCA space of ``reduced_dims`` fitted on the bank, re-ranked with exact
    full-dimension distances; the distances returned are exact, and so is the neighbour whenever
    it is among the candidates (recall measured in docs/benchmarks.md). ``hnsw``/``ivf``:
    approximate, for banks of hundreds of thousands of patches.
    """
    faiss = faiss_module()
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    dim = bank.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatL2(dim)
    elif kind == "pca-refine":
        if refine_factor < 1:
            raise ConfigError("refine_factor must be at least 1")
        if not 0 < reduced_dims < dim:
            raise ConfigError(f"reduced_dims must be between 1 and the feature dimension {dim - 1}")
        # PCA needs at least as many bank vectors as dimensions to estimate the subspace.
        if len(bank) < dim:
            raise ConfigError(f"pca-refine needs a bank of at least {dim} patches, got {len(bank)}")
        pca = faiss.PCAMatrix(dim, reduced_dims)
        candidates = faiss.IndexPreTransform(pca, faiss.IndexFlatL2(reduced_dims))
        index = faiss.IndexRefineFlat(candidates)
        index.k_factor = float(refine_factor)
        index.train(bank)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 64
    elif kind == "ivf":
        n_lists = max(1, int(np.sqrt(len(bank))))
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, n_lists)
        index.cp.seed = seed
        index.train(bank)
        index.nprobe = max(1, n_lists // 8)
        index.make_direct_map()
    else:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    index.add(bank)
    return index


class KnnBank:
    """A class's memory bank behind a faiss index; a patch's score is its mean distance to the
    ``k`` nearest bank patches."""

    def __init__(self, index: object, k: int = 1) -> None:
        self.index = index
        self.k = k
        self._vectors: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.index.ntotal)  # type: ignore[attr-defined]

    @property
    def dim(self) -> int:
        return int(self.index.d)  # type: ignore[attr-defined]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances and ids of the ``k`` nearest bank vectors of each query."""
        faiss_module()
        sq_dist, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[attr-defined]
        return np.sqrt(np.maximum(sq_dist, 0.0)), ids

    def patch_scores(self, features: np.ndarray) -> np.ndarray:
        """``(B, N, D)`` -> ``(B, N)`` mean distance to the k nearest bank patches."""
        batch, n_patches, dim = features.shape
        dist, _ = self.search(features.reshape(-1, dim), self.k)
        return dist.mean(axis=1).reshape(batch, n_patches)

    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self.index.reconstruct_n(0, self.size)  # type: ignore[attr-defined]
        return self._vectors

    def write(self, path: Path) -> None:
        faiss = faiss_module()
        faiss.write_index(self.index, str(path))

    @classmethod
    def from_bytes(cls, data: bytes, k: int) -> KnnBank:
        """The index serialised in ``data`` (a verified file's bytes; faiss parses them in memory)."""
        faiss = faiss_module()
        buffer = np.frombuffer(data, dtype=np.uint8)
        return cls(faiss.deserialize_index(buffer), k)
