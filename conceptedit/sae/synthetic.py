"""Activations with a planted sparse dictionary: the ground truth for tests and benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def planted_sparse_data(
    n: int,
    d: int,
    n_atoms: int,
    k: int,
    *,
    seed: int = 0,
    noise: float = 0.01,
    offset: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = offset·u + Σ_{j∈S} c_j a_j + noise`` with |S| = k atoms drawn uniformly, c_j ∈ [0.5, 1.5].

    Returns (x ``[n, d]``, atoms ``[n_atoms, d]`` unit-norm). The constant offset makes the
    pre-encoder bias matter; coefficients are positive like real SAE codes.
    """
    gen = torch.Generator().manual_seed(seed)
    atoms = F.normalize(torch.randn(n_atoms, d, generator=gen), dim=-1)
    # k distinct atoms per row, drawn in row blocks so n x n_atoms random numbers never coexist
    block = max(1, (1 << 22) // n_atoms)
    support = torch.cat(
        [torch.rand(min(block, n - s), n_atoms, generator=gen).topk(k, dim=-1).indices for s in range(0, n, block)]
    )
    coef = 0.5 + torch.rand(n, k, generator=gen)
    x = torch.nn.functional.embedding_bag(support, atoms, per_sample_weights=coef, mode="sum")
    x += offset * F.normalize(torch.randn(d, generator=gen), dim=0)
    x += noise * torch.randn(n, d, generator=gen)
    return x, atoms


def dictionary_recovery(learned: torch.Tensor, planted: torch.Tensor) -> float:
    """Mean over planted atoms of the best cosine similarity to any learned atom (rows)."""
    sim = F.normalize(planted, dim=-1) @ F.normalize(learned, dim=-1).T
    return float(sim.max(dim=1).values.mean())
