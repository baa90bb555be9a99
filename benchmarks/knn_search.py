"""Exact k-NN search of a memory bank: the OpenBLAS kernel faiss picks by itself against the one the
engine sets for it from the CPU's flags.

    .venv/bin/python -m benchmarks.knn_search [--banks 2000 10000 20000] [--batch 8] [--repeats 5]

faiss-cpu's wheel bundles OpenBLAS 0.3.15, which does not know CPUs newer than itself and then runs
its generic SSE3 kernel ("Prescott"); ``shared.engine.scorers.index`` sets ``OPENBLAS_CORETYPE``
from ``/proc/cpuinfo`` before faiss loads. faiss loads once per process, so each setting runs in a
fresh process of its own:

- ``faiss alone``: ``import faiss`` with ``OPENBLAS_CORETYPE`` unset (what the engine did before);
- ``engine``: faiss through ``shared.engine.scorers.index`` (what it does now).

Each times ``IndexFlatL2.search`` for k = 1 of ``--batch`` images' patches (a 28 x 28 grid of
152-dimension features, efficientnet_lite0 stages 2+3 at 224 px) against a bank of each size, one
thread (the scorer's default per model worker), median of ``--repeats``, and reports milliseconds
per image and the kernel OpenBLAS reports. The two must find the same neighbours; the benchmark
checks the distances agree. Prints one JSON object at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

from benchmarks.harness import print_report, print_row

GRID_PATCHES = 28 * 28
PATCH_DIMS = 152

CHILD_TEMPLATE = r"""
import json, sys, time
import numpy as np
banks, batch, repeats, engine = json.loads(sys.argv[1])
if not engine:
    import faiss  # loaded before the engine sees it: the kernel is faiss's own choice
from shared.engine.scorers.index import faiss_module, faiss_blas_kernel
faiss = faiss_module()  # configured as the engine configures it (BLAS path, one thread)
kernel = faiss_blas_kernel()
rng = np.random.default_rng(0)
queries = rng.standard_normal((batch * GRID_PATCHES, PATCH_DIMS)).astype(np.float32)
rows = []
for size in banks:
    index = faiss.IndexFlatL2(PATCH_DIMS)
    index.add(rng.standard_normal((size, PATCH_DIMS)).astype(np.float32))
    distances, _ = index.search(queries, 1)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        index.search(queries, 1)
        times.append(time.perf_counter() - began)
    rows.append({"bank": size, "ms_per_image": float(np.median(times)) * 1000 / batch,
                 "distance_checksum": float(np.sqrt(np.maximum(distances, 0)).sum())})
print(json.dumps({"kernel": kernel, "rows": rows}))
"""
CHILD = CHILD_TEMPLATE.replace("GRID_PATCHES", str(GRID_PATCHES)).replace("PATCH_DIMS", str(PATCH_DIMS))


def run_child(banks: list[int], batch: int, repeats: int, *, engine: bool) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([banks, batch, repeats, engine])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--banks", type=int, nargs="+", default=[2000, 10000, 20000])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    alone = run_child(args.banks, args.batch, args.repeats, engine=False)
    engine = run_child(args.banks, args.batch, args.repeats, engine=True)
    rows = []
    for before, after in zip(alone["rows"], engine["rows"], strict=True):  # type: ignore[call-overload]
        checksum_gap = abs(before["distance_checksum"] - after["distance_checksum"])
        row = {
            "bank": before["bank"],
            "faiss_alone_ms_per_image": round(before["ms_per_image"], 2),
            "engine_ms_per_image": round(after["ms_per_image"], 2),
            "speed_up": round(before["ms_per_image"] / after["ms_per_image"], 2),
            "same_distances": checksum_gap <= 1e-5 * max(1.0, abs(before["distance_checksum"])),
        }
        print_row(f"bank {row['bank']}", row)
        rows.append(row)
    return print_report(
        {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "kernel_faiss_alone": alone["kernel"],
            "kernel_engine": engine["kernel"],
            "batch": args.batch,
            "rows": rows,
        }
    )


if __name__ == "__main__":
    sys.exit(main())
