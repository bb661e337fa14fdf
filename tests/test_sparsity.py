"""Sparse-coding solvers vs scikit-learn's objectives (random and degenerate problems)."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.linear_model as sklm  # noqa: E402  (test extra: the reference objectives)
import torch

from conceptedit.errors import ConceptEditError
from conceptedit.sparsity import elastic_net, lasso, objective, omp, spams_to_sklearn


def _problem(seed: int, d: int, K: int, B: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(K, d, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)
    w = torch.zeros(B, K, dtype=torch.float64)
    for b in range(B):
        idx = torch.randperm(K, generator=g)[:3]
        w[b, idx] = torch.randn(3, generator=g, dtype=torch.float64)
    x = w @ D + 0.05 * torch.randn(B, d, generator=g, dtype=torch.float64)
    return x.to(dtype), D.to(dtype)


def _sk_objective(x, D, alpha, l1_ratio, positive) -> np.ndarray:
    out = []
    for y in x.double().numpy():
        m = sklm.ElasticNet(
            alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, positive=positive, tol=1e-12, max_iter=200000
        )
        m.fit(D.double().numpy().T, y)
        out.append(objective(torch.from_numpy(y), D.double(), torch.from_numpy(m.coef_), alpha, l1_ratio).item())
    return np.array(out)


def _degenerate(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "random":
        return _problem(0, 20, 15, 4)
    if kind == "k_gt_d":
        return _problem(1, 10, 40, 4)
    if kind == "duplicates":
        x, D = _problem(2, 16, 12, 4)
        return x, torch.cat([D, D[:4], 2 * D[4:6]])
    if kind == "zero_signal":
        x, D = _problem(3, 16, 12, 3)
        x[1] = 0
        return x, D
    raise AssertionError(kind)


@pytest.mark.parametrize("working_set", [None, 4])
@pytest.mark.parametrize("kind", ["random", "k_gt_d", "duplicates", "zero_signal"])
@pytest.mark.parametrize(("l1_ratio", "positive"), [(1.0, False), (0.7, False), (1.0, True)])
def test_elastic_net_matches_sklearn_objective(kind, l1_ratio, positive, working_set):
    x, D = _degenerate(kind)
    alpha = 0.01
    res = elastic_net(x, D, alpha, l1_ratio, positive=positive, tol=1e-10, max_iter=50000, working_set=working_set)
    ours = objective(x, D, res.codes, alpha, l1_ratio).numpy()
    ref = _sk_objective(x, D, alpha, l1_ratio, positive)
    assert res.converged.all()
    if positive:
        assert (res.codes >= 0).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lasso_float32_and_float64(dtype):
    x, D = _problem(4, 64, 100, 8, dtype)
    res = lasso(x, D, 0.005, tol=1e-7 if dtype == torch.float32 else 1e-10)  # K > 64: working set
    assert res.codes.dtype == dtype and res.codes.shape == (8, 100)
    ref = _sk_objective(x, D, 0.005, 1.0, False)
    np.testing.assert_allclose(objective(x, D, res.codes, 0.005).numpy(), ref, rtol=1e-4)
    one = lasso(x[0], D, 0.005, tol=1e-10 if dtype == torch.float64 else 1e-7)
    assert one.codes.shape == (100,)


def test_lasso_large_alpha_gives_zero_codes():
    x, D = _problem(5, 16, 20, 3)
    alpha_max = float((x @ D.T).abs().max()) / 16
    res = lasso(x, D, 1.01 * alpha_max)
    assert (res.codes == 0).all()


def test_spams_scaling_matches():
    x, D = _problem(6, 30, 25, 2)
    lam1, lam2 = 0.05 * 0.95, 0.05 * 0.05
    alpha, rho = spams_to_sklearn(lam1, lam2, 30)
    res = elastic_net(x, D, alpha, rho, tol=1e-12, max_iter=50000)
    w = res.codes
    spams_obj = 0.5 * ((x - w @ D) ** 2).sum(1) + lam1 * w.abs().sum(1) + 0.5 * lam2 * (w * w).sum(1)
    np.testing.assert_allclose(spams_obj.numpy(), 30 * objective(x, D, w, alpha, rho).numpy(), rtol=1e-10)


def _sk_omp_residual(x, D, n_nonzero=None, tol=None) -> np.ndarray:
    out = []
    for y in x.double().numpy():
        m = sklm.OrthogonalMatchingPursuit(n_nonzero_coefs=n_nonzero, tol=tol, fit_intercept=False)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.fit(D.double().numpy().T, y)
        out.append(float(((y - m.coef_ @ D.double().numpy()) ** 2).sum()))
    return np.array(out)


@pytest.mark.parametrize("kind", ["random", "k_gt_d", "duplicates", "zero_signal"])
def test_omp_matches_sklearn(kind):
    x, D = _degenerate(kind)
    codes = omp(x, D, 5)
    assert ((codes != 0).sum(1) <= 5).all()
    ours = ((x - codes @ D) ** 2).sum(1).numpy()
    np.testing.assert_allclose(ours, _sk_omp_residual(x, D, 5), rtol=1e-4, atol=1e-10)


def test_omp_tol_and_gram_free_path(monkeypatch):
    import importlib

    omp_mod = importlib.import_module("conceptedit.sparsity.omp")

    x, D = _problem(7, 32, 60, 5, torch.float32)
    ref = _sk_omp_residual(x, D, tol=0.05)
    ours = ((x - omp(x, D, tol=0.05) @ D) ** 2).sum(1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(omp_mod, "GRAM_MAX_ELEMS", 0)
    ours2 = ((x - omp(x, D, 6) @ D) ** 2).sum(1).numpy()
    np.testing.assert_allclose(ours2, _sk_omp_residual(x, D, 6), rtol=1e-4, atol=1e-6)


def test_omp_full_support_recovers_exact_sparse_signal():
    g = torch.Generator().manual_seed(8)
    D = torch.randn(50, 40, generator=g, dtype=torch.float64)
    w = torch.zeros(50, dtype=torch.float64)
    w[[3, 17, 41]] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    codes = omp(w @ D, D, 3)
    torch.testing.assert_close(codes, w)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, D: lasso(x, D, -1.0),
        lambda x, D: elastic_net(x, D, 0.1, 1.5),
        lambda x, D: lasso(x[:, :5], D, 0.1),
        lambda x, D: lasso(x.float(), D, 0.1),
        lambda x, D: lasso(x, D[:0], 0.1),
        lambda x, D: lasso(x * float("nan"), D, 0.1),
        lambda x, D: lasso(x, D, 0.1, tol=0),
        lambda x, D: omp(x, D, 0),
        lambda x, D: omp(x, D, 1000),
        lambda x, D: omp(x, D, tol=-1.0),
        lambda x, D: spams_to_sklearn(0.0, 0.0, 10),
    ],
)
def test_bad_inputs_are_one_line_errors(call):
    x, D = _problem(9, 12, 10, 2)
    with pytest.raises(ConceptEditError) as e:
        call(x, D)
    assert "\n" not in str(e.value)


def test_working_set_closes_the_gap_without_the_full_fallback():
    from conceptedit.sparsity.lasso import _working_set

    x, D = _problem(10, 64, 300, 6)
    codes = torch.zeros(6, 300, dtype=torch.float64)
    gap, iters = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.long)
    a1 = 0.01 * 64
    open_rows = _working_set(x, D, codes, x @ D.T, (x * x).sum(1), a1, 0.0, False, 1e-8, 5000, 8, gap, iters)
    assert open_rows.numel() == 0 and (codes != 0).sum(1).max() < 64
    np.testing.assert_allclose(objective(x, D, codes, 0.01).numpy(), _sk_objective(x, D, 0.01, 1.0, False), rtol=1e-4)
