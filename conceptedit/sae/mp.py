"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse
Representations with Matching Pursuit", arXiv:2506.03093)."""

from __future__ import annotations

import torch

from conceptedit.sae.base import SAE, SparseCodes, register_sae
from conceptedit.sae.kernels import matching_pursuit_select


@register_sae("mp")
class MatchingPursuitSAE(SAE):
    """Encoder = k steps of matching pursuit on the decoder's own atoms:

        r₀ = x − b_pre;  for t = 1..k:  j_t = argmax_j ⟨d_j, r_{t−1}⟩,  z_t = ⟨d_{j_t}, r_{t−1}⟩,
        r_t = r_{t−1} − z_t d_{j_t};   x̂ = Σ_t z_t d_{j_t} + b_pre  (= x − r_k).

    Costa et al. 2025, arXiv:2506.03093. There is no separate encoder (the dictionary is the
    encoder), atoms stay unit-norm. The k argmax steps run without autograd in bounded chunks
    (each step is one dense pass over the dictionary, so encoding costs k× a TopK encoder); the
    coefficients are then recomputed differentiably over the k selected atoms only. The greedy step
    takes the largest signed inner product (non-negative codes whenever one exists), an atom may be
    picked more than once (its coefficients add up). No auxiliary dead-latent loss.
    """

    def __init__(self, d_in: int, width: int, *, k: int = 32, **base: object) -> None:
        base.pop("tied_init", None)  # the encoder is the decoder
        super().__init__(d_in, width, **base)
        self.k = int(min(k, width))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """First-step correlations ⟨d_j, s·x − b_pre⟩ (what the first greedy step ranks)."""
        return (self._scale(x) - self.b_pre) @ self.W_dec.T

    def _train_forward(self, xn, dead_mask):  # noqa: ANN001, ANN202
        xc = xn - self.b_pre
        _, idx = matching_pursuit_select(xc.detach(), self.W_dec.detach(), self.k, self.chunk_elems)
        atoms = self.W_dec[idx]  # [N, k, d]: only the selected atoms take part in autograd
        residual, coefs = xc, []
        for t in range(self.k):
            z = (atoms[:, t] * residual).sum(-1)
            residual = residual - z[:, None] * atoms[:, t]
            coefs.append(z)
        recon = xn - residual
        return recon, SparseCodes(idx, torch.stack(coefs, 1), self.width), {}

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return matching_pursuit_select(xc, self.W_dec, self.k, self.chunk_elems)
