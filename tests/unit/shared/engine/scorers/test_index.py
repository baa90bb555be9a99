"""faiss indexes behind the memory bank: the exact one, PCA candidates re-ranked exactly, approximate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.engine.runtimes import cpu_flags
from shared.engine.scorers.index import OPENBLAS_CORE_ENV, KnnBank, build_index, openblas_core_for

DIM = 96


def structured(n: int, seed: int) -> np.ndarray:
    """Patch-like features: most variance in a few directions, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(0).normal(size=(DIM, DIM)).astype(np.float32)
    scales = (1.0 / np.arange(1, DIM + 1) ** 0.8).astype(np.float32)
    return (rng.normal(size=(n, DIM)).astype(np.float32) * scales) @ basis


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    return structured(3000, seed=1)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return structured(400, seed=2)


def test_pca_refine_returns_exact_distances_of_the_true_neighbours(
    bank: np.ndarray, queries: np.ndarray
) -> None:
    exact_dist, exact_ids = KnnBank(build_index(bank, "flat"), 1).search(queries, 3)
    refined = KnnBank(build_index(bank, "pca-refine", reduced_dims=32, refine_factor=8), 1)
    dist, ids = refined.search(queries, 3)
    assert (ids[:, 0] == exact_ids[:, 0]).mean() >= 0.99
    # Every distance returned is a true full-dimension distance to the id returned.
    true = np.linalg.norm(bank[ids] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(dist, true, rtol=1e-4, atol=1e-4)
    assert (dist >= exact_dist - 1e-4).all()  # never nearer than the real nearest


def test_pca_refine_with_one_candidate_per_neighbour_is_approximate(
    bank: np.ndarray, queries: np.ndarray
) -> None:
    """The refine factor is what buys exactness: without candidates to re-rank recall drops."""
    _, exact_ids = KnnBank(build_index(bank, "flat"), 1).search(queries, 1)
    _, coarse = KnnBank(build_index(bank, "pca-refine", reduced_dims=8, refine_factor=1), 1).search(
        queries, 1
    )
    _, refined = KnnBank(build_index(bank, "pca-refine", reduced_dims=8, refine_factor=32), 1).search(
        queries, 1
    )
    assert (coarse[:, 0] == exact_ids[:, 0]).mean() < (refined[:, 0] == exact_ids[:, 0]).mean()


def test_pca_refine_round_trips_through_its_index_file(
    bank: np.ndarray, queries: np.ndarray, tmp_path: Path
) -> None:
    original = KnnBank(build_index(bank, "pca-refine", reduced_dims=24, refine_factor=4), 2)
    original.write(tmp_path / "bank.faiss")
    reloaded = KnnBank.from_bytes((tmp_path / "bank.faiss").read_bytes(), 2)
    assert reloaded.index.k_factor == 4  # type: ignore[attr-defined]
    np.testing.assert_array_equal(reloaded.patch_scores(queries[None]), original.patch_scores(queries[None]))
    np.testing.assert_array_equal(reloaded.vectors(), bank)  # the exact vectors, not a PCA reconstruction


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_most_true_neighbours(
    bank: np.ndarray, queries: np.ndarray, kind: str
) -> None:
    exact_dist, _ = KnnBank(build_index(bank, "flat"), 1).search(queries, 1)
    dist, _ = KnnBank(build_index(bank, kind), 1).search(queries, 1)  # type: ignore[arg-type]
    assert (dist >= exact_dist - 1e-3).all()
    assert np.isclose(dist, exact_dist, rtol=1e-4).mean() >= 0.8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reduced_dims": DIM}, "reduced_dims"),
        ({"reduced_dims": 0}, "reduced_dims"),
        ({"refine_factor": 0}, "refine_factor"),
    ],
)
def test_bad_pca_refine_settings_are_refused(bank: np.ndarray, changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_index(bank, "pca-refine", **changes)  # type: ignore[arg-type]


def test_pca_refine_needs_a_bank_at_least_as_large_as_the_dimension() -> None:
    with pytest.raises(ValueError, match="at least 96 patches"):
        build_index(structured(50, seed=3), "pca-refine", reduced_dims=16)


def test_unknown_index_kind_is_refused(bank: np.ndarray) -> None:
    with pytest.raises(ValueError, match="choose one of flat, pca-refine, hnsw, ivf"):
        build_index(bank, "annoy")  # type: ignore[arg-type]


# -- faiss's own OpenBLAS: the kernel this CPU runs, not the generic fallback ------------------------

AVX512 = frozenset(
    {"fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
)


def test_the_openblas_kernel_follows_the_cpus_flags() -> None:
    assert openblas_core_for(AVX512) == "SkylakeX"
    assert openblas_core_for(AVX512 - {"avx512bw"}) == "Haswell"  # SkylakeX needs all five
    assert openblas_core_for(frozenset({"sse2", "avx", "avx2", "fma"})) == "Haswell"
    assert openblas_core_for(frozenset({"sse2", "avx", "avx2"})) is None  # no FMA: OpenBLAS chooses
    assert openblas_core_for(frozenset()) is None  # not x86, or flags unknown


def _kernel_in_a_new_process(env: dict[str, str]) -> str:
    """faiss's OpenBLAS kernel as a fresh process (a service) gets it: faiss loads once per process."""
    code = "from shared.engine.scorers.index import faiss_blas_kernel; print(faiss_blas_kernel())"
    clean = {k: v for k, v in os.environ.items() if k != OPENBLAS_CORE_ENV}
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(openblas_core_for(cpu_flags()) is None, reason="a CPU without AVX2 and FMA")
def test_faiss_runs_the_kernel_of_this_cpu_unless_the_user_chose_one() -> None:
    assert _kernel_in_a_new_process({}) == openblas_core_for(cpu_flags())
    assert _kernel_in_a_new_process({OPENBLAS_CORE_ENV: "Haswell"}) == "Haswell"


def test_the_flat_index_finds_the_exact_nearest_patches(bank: np.ndarray, queries: np.ndarray) -> None:
    dist, ids = KnnBank(build_index(bank, "flat"), 1).search(queries, 2)
    every = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None, :, :]) ** 2).sum(-1))
    nearest = np.sort(every, axis=1)[:, :2]
    np.testing.assert_allclose(dist, nearest, rtol=1e-4, atol=1e-4)
    assert (ids[:, 0] == every.argmin(axis=1)).mean() >= 0.999
