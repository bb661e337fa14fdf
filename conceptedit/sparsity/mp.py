"""Matching pursuit (Mallat & Zhang 1993): greedy sparse coding without refitting, on plain tensors.

The SAE backend's ``mp`` architecture (:mod:`conceptedit.sae.mp`) encodes with it; it lives here beside
the other sparse-coding solvers (:mod:`~conceptedit.sparsity.lasso`, :mod:`~conceptedit.sparsity.omp`,
which refits the least squares on the support at each step). Selection runs over bounded blocks of
(rows × atoms) so that a dictionary of 2^19 atoms never materialises a dense score matrix.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_CHUNK_ELEMS", "block_sizes", "matching_pursuit_select"]

#: Default bound on the number of pre-activation elements held at once (16 MiB in float32).
DEFAULT_CHUNK_ELEMS = 1 << 22


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + size)) for s in range(0, n, max(1, size))]


def block_sizes(n_rows: int, width: int, chunk_elems: int, min_latents: int = 1) -> tuple[int, int]:
    """(row block, latent block) whose product stays under ``chunk_elems`` where possible."""
    lat = min(width, max(min_latents, chunk_elems // max(1, min(n_rows, 64))))
    rows = max(1, chunk_elems // lat)
    return rows, lat


@torch.no_grad()
def matching_pursuit_select(
    xc: torch.Tensor,
    atoms: torch.Tensor,
    k: int,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    gram: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k greedy steps: pick the atom with the largest inner product with the residual, subtract it.

    Returns (coefficients, indices) ``[N, k]``; an atom may be picked twice (codes then add up).
    With the Gram matrix ``gram = atoms @ atoms.T`` the correlations are updated in place
    (``s ← s − z·G[j]``, exact since ``r ← r − z·d_j``): one dense pass instead of k.
    """
    n, width = xc.shape[0], atoms.shape[0]
    vals = torch.empty(n, k, dtype=xc.dtype, device=xc.device)
    idx = torch.empty(n, k, dtype=torch.long, device=xc.device)
    if gram is not None:
        for r0, r1 in _blocks(n, max(1, chunk_elems // (2 * width))):
            scores = xc[r0:r1] @ atoms.T
            for t in range(k):
                v, j = scores.max(dim=-1)
                vals[r0:r1, t], idx[r0:r1, t] = v, j
                scores -= v[:, None] * gram[j]
        return vals, idx
    residual = xc.clone()
    row_block, lat_block = block_sizes(n, width, chunk_elems)
    for t in range(k):
        for r0, r1 in _blocks(n, row_block):
            best_v = torch.full((r1 - r0,), float("-inf"), dtype=xc.dtype, device=xc.device)
            best_i = torch.zeros(r1 - r0, dtype=torch.long, device=xc.device)
            for c0, c1 in _blocks(width, lat_block):
                bv, bi = (residual[r0:r1] @ atoms[c0:c1].T).max(dim=-1)
                better = bv > best_v
                best_v = torch.where(better, bv, best_v)
                best_i = torch.where(better, bi + c0, best_i)
            vals[r0:r1, t] = best_v
            idx[r0:r1, t] = best_i
        residual -= vals[:, t, None] * atoms[idx[:, t]]
    return vals, idx
