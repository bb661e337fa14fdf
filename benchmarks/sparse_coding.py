"""Sparse coding throughput: conceptedit.sparsity vs scikit-learn vs SPAMS, side by side in one run.

For each d ∈ {768, 32×128 = 4096 (a flattened shapes-model prompt embedding)}, K ∈ {1,000, 5,000}
unit-norm random atoms, a batch of 256 signals (each a 5-atom combination plus noise) and 1 and 2
threads, it codes the batch with
- lasso: ``conceptedit.sparsity.lasso`` (float32, FISTA), ``sklearn.decomposition.sparse_encode``
  (``lasso_cd``, float64) and ``spams.lasso`` (mode 2) on the same problem
  ``½‖y − Dᵀw‖² + λ‖w‖₁`` (λ = 0.1·‖y‖ median; scikit-learn's ``Lasso`` alpha = λ/d);
- OMP with 10 atoms: ``conceptedit.sparsity.omp``, ``sparse_encode(algorithm="omp")``, ``spams.omp``.
and prints vectors/s plus the mean objective relative to the best of the three (``Δobj``; equal
objective means |Δobj| ≤ 1e-3). Each timing is the best of ``--repeats`` runs. The lasso tolerance of
conceptedit is the duality-gap rule ``gap ≤ tol·‖y‖²`` with tol = 1e-4 (scikit-learn's default).

    python benchmarks/sparse_coding.py            # full grid (a few minutes on 2 cores)
    python benchmarks/sparse_coding.py --quick    # d = 128, K = 300, batch 64: seconds

One JSON document goes to ``benchmarks/results/sparse_coding.json``. SPAMS comes from the
``spams-bin`` wheel (the ``spams`` sdist does not build on Python 3.11: distutils.msvccompiler).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptedit.sparsity import lasso, omp

try:
    import spams  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - optional
    spams = None
from sklearn.decomposition import sparse_encode
from threadpoolctl import threadpool_limits


def _problem(d: int, K: int, B: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((K, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    W = np.zeros((B, K))
    for b in range(B):
        W[b, rng.choice(K, 5, replace=False)] = rng.standard_normal(5)
    X = W @ D + 0.05 * rng.standard_normal((B, d))
    return X, D


def _lasso_obj(X: np.ndarray, D: np.ndarray, W: np.ndarray, lam: float) -> float:
    return float(np.mean(0.5 * ((X - W @ D) ** 2).sum(1) + lam * np.abs(W).sum(1)))


def _omp_obj(X: np.ndarray, D: np.ndarray, W: np.ndarray) -> float:
    return float(np.mean(((X - W @ D) ** 2).sum(1)))


def _time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_case(d: int, K: int, B: int, threads: int, repeats: int, n_nonzero: int = 10) -> list[dict[str, Any]]:
    X, D = _problem(d, K, B)
    lam = 0.1 * float(np.median(np.linalg.norm(X, axis=1)))
    Xt, Dt = torch.from_numpy(X).float(), torch.from_numpy(D).float()
    torch.set_num_threads(threads)
    solvers: dict[str, dict[str, Callable[[], np.ndarray]]] = {
        "lasso": {
            "conceptedit": lambda: lasso(Xt, Dt, lam / d, tol=1e-4).codes.double().numpy(),
            "sklearn": lambda: sparse_encode(X, D, algorithm="lasso_cd", alpha=lam, n_jobs=1, max_iter=5000),
        },
        "omp": {
            "conceptedit": lambda: omp(Xt, Dt, n_nonzero).double().numpy(),
            "sklearn": lambda: sparse_encode(X, D, algorithm="omp", n_nonzero_coefs=n_nonzero, n_jobs=1),
        },
    }
    if spams is not None:
        Xf, Df = np.asfortranarray(X.T), np.asfortranarray(D.T)
        solvers["lasso"]["spams"] = lambda: spams.lasso(
            Xf, D=Df, lambda1=lam, lambda2=0.0, mode=2, numThreads=threads
        ).T.toarray()
        solvers["omp"]["spams"] = lambda: spams.omp(Xf, D=Df, L=n_nonzero, numThreads=threads).T.toarray()
    rows = []
    with threadpool_limits(threads):
        for problem, impls in solvers.items():
            res = {}
            for name, fn in impls.items():
                secs, W = _time(fn, repeats)
                obj = _lasso_obj(X, D, W, lam) if problem == "lasso" else _omp_obj(X, D, W)
                res[name] = (secs, obj)
            best = min(o for _, o in res.values())
            for name, (secs, obj) in res.items():
                rows.append(
                    {
                        "problem": problem,
                        "solver": name,
                        "d": d,
                        "K": K,
                        "batch": B,
                        "threads": threads,
                        "vectors_per_s": B / secs,
                        "objective": obj,
                        "rel_obj_vs_best": (obj - best) / abs(best) if best else 0.0,
                    }
                )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d = 128, K = 300, batch 64, 1 thread")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/sparse_coding.json")
    args = ap.parse_args()
    if args.quick:
        grid, B, threads = [(128, 300)], 64, [1]
    else:
        grid, B, threads = [(768, 1000), (768, 5000), (4096, 1000), (4096, 5000)], 256, [1, 2]
    rows: list[dict[str, Any]] = []
    print(f"{'problem':6} {'solver':12} {'d':>5} {'K':>5} {'thr':>3} {'vec/s':>9} {'Δobj':>9}")
    for d, K in grid:
        for t in threads:
            for r in run_case(d, K, B, t, args.repeats):
                rows.append(r)
                print(
                    f"{r['problem']:6} {r['solver']:12} {d:5} {K:5} {t:3} {r['vectors_per_s']:9.1f} "
                    f"{r['rel_obj_vs_best']:9.1e}",
                    flush=True,
                )
    doc = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "spams": None if spams is None else "spams-bin",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({"loadavg": doc["machine"]["loadavg"], "spams": doc["spams"]}))


if __name__ == "__main__":
    main()
