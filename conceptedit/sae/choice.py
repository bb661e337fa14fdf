"""Mutual Choice and Feature Choice SAEs (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual
Choice & Feature Choice Sparse Autoencoders", arXiv:2411.02124)."""

from __future__ import annotations

import math

import torch

from conceptedit.sae.base import SAE, SparseCodes, TrainOut, register_sae
from conceptedit.sae.batchtopk import BatchTopKSAE, ThresholdInference
from conceptedit.sae.kernels import chunked_threshold, feature_choice_select, sparse_decode, sparse_preacts


@register_sae("mutual_choice")
class MutualChoiceSAE(BatchTopKSAE):
    """Mutual choice: the k·B budget is allocated freely over the (token × latent) matrix.

    z = ReLU(TopK_{k·B over all tokens and latents}(W_enc (x − b_pre) + b_enc)), x̂ = W_dec z + b_pre.
    Ayonrinde 2024, arXiv:2411.02124. The allocation is the same as BatchTopK's (global top k·B);
    this class exists under the paper's name and shares BatchTopK's exact selection, threshold for
    inference and AuxK dead-latent loss. The paper's aux_zipf_loss is not implemented.
    """


@register_sae("feature_choice")
class FeatureChoiceSAE(ThresholdInference, SAE):
    """Feature choice: every latent takes its top-m tokens of the batch, m = ceil(k·B / width).

    z[n, j] = a[n, j] · 1[n ∈ TopM_m(a[:, j])] with a = ReLU(W_enc (x − b_pre) + b_enc);
    x̂ = W_dec z + b_pre. Ayonrinde 2024, arXiv:2411.02124. Tokens get a variable number of latents
    (k on average); no latent can die while it has positive pre-activations, so there is no AuxK
    term. Inference: a single token has no batch, so each latent fires above its own learned cut (a
    running average of the smallest activation it selected per training batch).
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        *,
        k: int = 32,
        threshold_momentum: float = 0.99,
        **base: object,
    ) -> None:
        super().__init__(d_in, width, **base)
        self.k = int(min(k, width))
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.full((width,), -1.0))
        self._make_encoder()

    @torch.no_grad()
    def _update_threshold(self, vals: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        """Per latent: running average of the smallest activation it selected in a batch."""
        if not self.training or idx is None:
            return
        sel = vals > 0
        low = torch.full((self.width,), float("inf"), dtype=vals.dtype, device=vals.device)
        low.scatter_reduce_(0, idx[sel], vals[sel], reduce="amin")
        hit = torch.isfinite(low)
        fresh = hit & (self.threshold < 0)
        old = hit & ~fresh
        self.threshold[fresh] = low[fresh]
        mom = self.threshold_momentum
        self.threshold[old] = mom * self.threshold[old] + (1 - mom) * low[old]

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A latent fires when it exceeds its own learned cut (never-selected latents never fire)."""
        th = torch.where(self.threshold < 0, torch.full_like(self.threshold, float("inf")), self.threshold)
        return chunked_threshold(xc, self.W_enc, self.b_enc, th, self.chunk_elems)

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        xc = xn - self.b_pre
        m = max(1, math.ceil(self.k * xn.shape[0] / self.width))
        vals, idx = feature_choice_select(xc.detach(), self.W_enc.detach(), self.b_enc.detach(), m, self.chunk_elems)
        self._update_threshold(vals, idx)
        v = sparse_preacts(xc, self.W_enc, self.b_enc, idx, vals)
        recon = sparse_decode(idx, v, self.dictionary(), self.chunk_elems) + self.b_pre
        return recon, SparseCodes(idx, v, self.width), {}
