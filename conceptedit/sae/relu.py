"""ReLU + L1 SAE (Cunningham et al. 2023, arXiv:2309.08600; Bricken et al. 2023; decoder-norm-weighted
L1 as in Anthropic's "Towards Monosemanticity" and its April 2024 training update)."""

from __future__ import annotations

import torch

from conceptedit.sae.base import SAE, TrainOut, register_sae
from conceptedit.sae.kernels import chunked_threshold


@register_sae("relu")
class ReLUSAE(SAE):
    """z = ReLU(W_enc (x − b_pre) + b_enc),  x̂ = W_dec z + b_pre.

    Loss = FVU + l1_coef · E Σ_j z_j ‖W_dec[j]‖ (the decoder-norm-weighted L1 of Conerly et al.
    2024). The norm weighting is what stops the optimiser from shrinking codes by growing atoms,
    so decoder rows are *not* renormalised for this architecture. Training is dense (every positive
    pre-activation is a code); ``encode`` is chunked and returns sparse codes.
    """

    unit_norm_decoder = False
    sparse_training = False

    def __init__(self, d_in: int, width: int, *, l1_coef: float = 3e-3, **base: object) -> None:
        super().__init__(d_in, width, **base)
        self.l1_coef = float(l1_coef)
        # about half the latents are active at init: a full-size tied encoder would make the first
        # reconstructions sums of ~width/2 atoms, so the encoder starts scaled by d_in / width
        self._make_encoder(scale=min(1.0, d_in / width))

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        z = torch.relu((xn - self.b_pre) @ self.W_enc.T + self.b_enc)
        recon = z @ self.W_dec + self.b_pre
        l1 = (z * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return recon, z, {"l1": self.l1_coef * l1}

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return chunked_threshold(xc, self.W_enc, self.b_enc, 0.0, self.chunk_elems)
