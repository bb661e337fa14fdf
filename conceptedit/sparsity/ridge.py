"""The closed-form cross-attention edit of UCE, on plain tensors.

Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761, Eq. 7) edits a linear
projection ``W`` (a cross-attention ``to_k`` / ``to_v``) so that erased keys ``c_i`` map to target
values ``v*_i`` while preserved keys ``c_j`` keep their outputs and ``W`` stays close to ``W_old``:

    min_W  Σ_i e‖W c_i − v*_i‖² + Σ_j p‖W c_j − W_old c_j‖² + λ‖W − W_old‖²_F

whose minimiser solves the normal equations

    W (e Σ_i c_i c_iᵀ + p Σ_j c_j c_jᵀ + λ I) = e Σ_i v*_i c_iᵀ + p Σ_j W_old c_j c_jᵀ + λ W_old.

:func:`uce_closed_form` is that update with the paper's targets ``v*_i = W_old c_guide_i`` (erase
concept ``i`` towards guide concept ``i``). :func:`weighted_ridge_edit` is the general form (any
keys, any targets, one weight per key) that other closed-form methods (e.g. RealEra's neighbour and
beyond-concept terms) build on. Both work on one matrix ``(out, in)`` or a batch of layers
``(L, out, in)``; the keys are shared by every layer (they are text-encoder outputs), so the
``in × in`` system is factorised once and solved for all layers together. Computation is in
float64; the result has ``W_old``'s dtype and device.
"""

from __future__ import annotations

import torch

__all__ = ["uce_closed_form", "weighted_ridge_edit", "normal_equation_residual"]


def _as_keys(x: torch.Tensor | None, dim: int, what: str) -> torch.Tensor | None:
    if x is None:
        return None
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {tuple(x.shape)}")
    return x if x.shape[0] else None


def weighted_ridge_edit(
    W_old: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor | None,
    weights: torch.Tensor | float = 1.0,
    lamb: float = 0.5,
    sources: torch.Tensor | None = None,
) -> torch.Tensor:
    """``W = (Σ_i w_i v_i k_iᵀ + λ W_old)(Σ_i w_i k_i k_iᵀ + λ I)⁻¹``.

    Args:
        W_old: ``(out, in)`` or ``(L, out, in)``.
        keys: ``(n, in)``, shared by all layers.
        values: targets, ``(n, out)`` (same for every layer) or ``(L, n, out)`` (per layer); or None with
            ``sources``.
        weights: one weight per key ``(n,)`` or a scalar.
        lamb: ridge weight λ ≥ 0 pulling ``W`` towards ``W_old``; λ = 0 needs keys spanning ``in``.
        sources: ``(n, in)`` instead of ``values``: the targets are ``v_i = W_old s_i`` (UCE's and RealEra's
            kind), so ``Σ w v kᵀ = W_old (Σ w s kᵀ)`` is formed without the ``(L, n, out)`` values (in-context
            keys give tens of thousands of rows: that tensor would take gigabytes on SD-sized layers).
    """
    if lamb < 0:
        raise ValueError(f"lamb must be >= 0, got {lamb}")
    batched = W_old.dim() == 3
    W = (W_old if batched else W_old[None]).double()
    n_in = W.shape[-1]
    k = keys.double().to(W.device)
    if k.dim() != 2 or k.shape[1] != n_in:
        raise ValueError(f"keys must have shape (n, {n_in}), got {tuple(keys.shape)}")
    if (values is None) == (sources is None):
        raise ValueError("give exactly one of values and sources")
    w = torch.as_tensor(weights, dtype=torch.float64, device=W.device)
    w = w.expand(k.shape[0]) if w.dim() == 0 else w
    if w.shape != (k.shape[0],):
        raise ValueError(f"weights must be a scalar or have shape ({k.shape[0]},), got {tuple(w.shape)}")
    eye = torch.eye(n_in, dtype=torch.float64, device=W.device)
    A = (k.T * w) @ k + lamb * eye  # (in, in), symmetric
    if sources is not None:
        s = sources.double().to(W.device)
        if s.shape != k.shape:
            raise ValueError(f"sources must have the keys' shape {tuple(k.shape)}, got {tuple(sources.shape)}")
        B = W @ ((s.T * w) @ k) + lamb * W  # W_old Σ w s kᵀ + λ W_old: (L, out, in)
    else:
        v = values.double().to(W.device)
        if v.dim() == 2:
            v = v[None].expand(W.shape[0], -1, -1)
        if v.shape != (W.shape[0], k.shape[0], W.shape[1]):
            raise ValueError(f"values must have shape (n, out) or (L, n, out); got {tuple(values.shape)}")
        B = torch.einsum("lno,n,ni->loi", v, w, k) + lamb * W  # (L, out, in)
    # W_new = B A⁻¹  ⇔  A W_newᵀ = Bᵀ (A symmetric): one factorisation for every layer.
    W_new = torch.linalg.solve(A, B.transpose(1, 2)).transpose(1, 2)
    W_new = W_new.to(W_old.dtype)
    return W_new if batched else W_new[0]


def uce_closed_form(
    W_old: torch.Tensor,
    erase_embs: torch.Tensor,
    guide_embs: torch.Tensor,
    preserve_embs: torch.Tensor | None = None,
    lamb: float = 0.5,
    preserve_scale: float = 1.0,
    erase_scale: float = 1.0,
) -> torch.Tensor:
    """UCE's edit (paper Eq. 7; reference ``trainscripts/uce_sd_erase.py``):

    ``W = (e Σ_i v*_i c_iᵀ + p Σ_j W_old c_j c_jᵀ + λ W_old)(e Σ_i c_i c_iᵀ + p Σ_j c_j c_jᵀ + λ I)⁻¹``
    with ``v*_i = W_old g_i``.

    Args:
        W_old: ``(out, in)`` or a batch of layers ``(L, out, in)``.
        erase_embs: ``(n, in)`` token embeddings ``c_i`` of the concepts to erase.
        guide_embs: ``(n, in)`` embeddings ``g_i`` whose outputs the erased ones should produce
            (one row, or one per erase row).
        preserve_embs: ``(m, in)`` embeddings whose outputs must stay as they were, or None.
        lamb: λ (reference default 0.5). preserve_scale: p (default 1). erase_scale: e (default 1).
    Returns:
        ``W_new`` with ``W_old``'s shape and dtype.
    """
    n_in = W_old.shape[-1]
    erase = _as_keys(erase_embs, n_in, "erase_embs")
    if erase is None:
        raise ValueError("uce_closed_form needs at least one erase embedding")
    guide = _as_keys(guide_embs, n_in, "guide_embs")
    if guide is None or guide.shape[0] not in (1, erase.shape[0]):
        raise ValueError(f"guide_embs must have 1 or {erase.shape[0]} rows")
    guide = guide.expand(erase.shape[0], -1)
    preserve = _as_keys(preserve_embs, n_in, "preserve_embs")
    keys, sources, weights = [erase], [guide], [torch.full((erase.shape[0],), float(erase_scale))]
    if preserve is not None:
        keys.append(preserve)
        sources.append(preserve)
        weights.append(torch.full((preserve.shape[0],), float(preserve_scale)))
    k = torch.cat([x.double() for x in keys])
    src = torch.cat([x.double() for x in sources]).to(W_old.device)
    values = torch.einsum("...oi,ni->...no", W_old.double(), src)  # v* = W_old g (per layer)
    return weighted_ridge_edit(W_old, k, values, torch.cat(weights), lamb)


def normal_equation_residual(
    W_new: torch.Tensor,
    W_old: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    weights: torch.Tensor | float,
    lamb: float,
) -> torch.Tensor:
    """Max abs entry of ``W_new(Σ w k kᵀ + λI) − (Σ w v kᵀ + λ W_old)`` (0 at the optimum), for tests."""
    k, W, Wo = keys.double(), W_new.double(), W_old.double()
    w = torch.as_tensor(weights, dtype=torch.float64).expand(k.shape[0])
    lhs = W @ ((k.T * w) @ k + lamb * torch.eye(k.shape[1], dtype=torch.float64))
    rhs = torch.einsum("...no,n,ni->...oi", values.double(), w, k) + lamb * Wo
    return (lhs - rhs).abs().max()
