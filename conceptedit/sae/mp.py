"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse
Representations with Matching Pursuit", arXiv:2506.03093)."""

from __future__ import annotations

import torch

from conceptedit.sae.base import SAE, SparseCodes, TrainOut, register_sae
from conceptedit.sparsity.mp import matching_pursuit_select


@register_sae("mp")
class MatchingPursuitSAE(SAE):
    """Encoder = k steps of matching pursuit on the decoder's own atoms:

        r₀ = x − b_pre;  for t = 1..k:  j_t = argmax_j ⟨d_j, r_{t−1}⟩,  z_t = ⟨d_{j_t}, r_{t−1}⟩,
        r_t = r_{t−1} − z_t d_{j_t};   x̂ = Σ_t z_t d_{j_t} + b_pre  (= x − r_k).

    Costa et al. 2025, arXiv:2506.03093. There is no separate encoder (the dictionary is the
    encoder), atoms stay unit-norm. The k argmax steps run without autograd in bounded chunks; the
    coefficients are then recomputed differentiably over the k selected atoms only. When the Gram
    matrix fits (width² ≤ ``gram_max_elems``) the correlations are updated through it instead of
    recomputed, so selection costs one dense pass plus k gathers. The greedy step
    takes the largest signed inner product (non-negative codes whenever one exists), an atom may be
    picked more than once (its coefficients add up). No auxiliary dead-latent loss.
    """

    #: use the Gram-matrix update when width² is at most this many elements (runtime setting)
    gram_max_elems: int = 1 << 26

    def __init__(self, d_in: int, width: int, *, k: int = 32, **base: object) -> None:
        base.pop("tied_init", None)  # the encoder is the decoder
        super().__init__(d_in, width, **base)
        self.k = int(min(k, width))

    @torch.no_grad()
    def _gram(self, n_rows: int) -> torch.Tensor | None:
        """``W_dec W_decᵀ`` when it fits and pays off (k·N ≥ width: cheaper than k dense passes)."""
        if self.width**2 > self.gram_max_elems or self.k * n_rows < self.width:
            return None
        return self.W_dec @ self.W_dec.T

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """First-step correlations ⟨d_j, s·x − b_pre⟩ (what the first greedy step ranks)."""
        return (self._scale(x) - self.b_pre) @ self.W_dec.T

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        xc = xn - self.b_pre
        w = self.W_dec.detach()
        _, idx = matching_pursuit_select(xc.detach(), w, self.k, self.chunk_elems, self._gram(xn.shape[0]))
        # only the selected atoms take part in autograd; unbind once (per-step slicing would make
        # autograd allocate a full [N, k, d] gradient for every step)
        atoms = self.W_dec[idx].unbind(1)
        residual, coefs = xc, []
        for atom in atoms:
            z = (atom * residual).sum(-1)
            residual = residual - z[:, None] * atom
            coefs.append(z)
        recon = xn - residual
        return recon, SparseCodes(idx, torch.stack(coefs, 1), self.width), {}

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return matching_pursuit_select(xc, self.W_dec, self.k, self.chunk_elems, self._gram(xc.shape[0]))
