"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders", arXiv:2412.06410)."""

from __future__ import annotations

import torch

from conceptedit.sae.base import SAE, SparseCodes, TrainOut, register_sae
from conceptedit.sae.kernels import (
    batch_topk_select,
    chunked_threshold,
    chunked_topk,
    sparse_decode,
    sparse_preacts,
)
from conceptedit.sae.topk import auxk_loss


class ThresholdInference:
    """Mixin: a batch-level selector trains; inference uses a learned global threshold.

    The threshold is a running average (momentum ``threshold_momentum``) of the smallest selected
    activation per training batch, so a single prompt is encoded the same way as it would be in a
    batch. Until it has been set (untrained SAE), inference falls back to per-row top-k.
    """

    threshold: torch.Tensor

    @torch.no_grad()
    def _update_threshold(self, vals: torch.Tensor) -> None:
        if not self.training:
            return
        pos = vals[vals > 0]
        if pos.numel() == 0:
            return
        low = pos.min()
        if float(self.threshold) < 0:
            self.threshold.copy_(low)
        else:
            self.threshold.mul_(self.threshold_momentum).add_((1 - self.threshold_momentum) * low)

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if float(self.threshold) < 0:
            ((vals, idx),) = chunked_topk(xc, self.W_enc, self.b_enc, [(self.k, None)], self.chunk_elems)
            return vals, idx
        return chunked_threshold(xc, self.W_enc, self.b_enc, self.threshold, self.chunk_elems)


@register_sae("batchtopk")
class BatchTopKSAE(ThresholdInference, SAE):
    """z = ReLU(BatchTopK_{k·B}(W_enc (x − b_pre) + b_enc)),  x̂ = W_dec z + b_pre.

    Bussmann et al. 2024, arXiv:2412.06410: during training the k·B largest activations of the
    whole batch are kept (rows get a variable number of latents, k on average); at inference a
    learned threshold θ replaces the batch: z = a · 1[a > θ]. AuxK on dead latents as in TopK.
    Selection is exact and memory-bounded (see ``kernels.batch_topk_select``).
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        *,
        k: int = 32,
        k_aux: int | None = None,
        aux_coef: float = 1 / 32,
        threshold_momentum: float = 0.99,
        **base: object,
    ) -> None:
        super().__init__(d_in, width, **base)
        self.k = int(min(k, width))
        self.k_aux = int(min(width, k_aux if k_aux is not None else max(1, d_in // 2)))
        self.aux_coef = float(aux_coef)
        self.threshold_momentum = float(threshold_momentum)
        self.register_buffer("threshold", torch.tensor(-1.0))
        self._make_encoder()

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        xc = xn - self.b_pre
        w, b = self.W_enc.detach(), self.b_enc.detach()
        vals, idx = batch_topk_select(xc.detach(), w, b, self.k * xn.shape[0], 2 * self.k, self.chunk_elems)
        self._update_threshold(vals)
        v = sparse_preacts(xc, self.W_enc, self.b_enc, idx, vals)
        recon = sparse_decode(idx, v, self.dictionary(), self.chunk_elems) + self.b_pre
        aux = {}
        if dead_mask is not None and self.aux_coef > 0 and bool(dead_mask.any()):
            ((av, ai),) = chunked_topk(
                xc.detach(), w, b, [(min(self.k_aux, int(dead_mask.sum())), dead_mask)], self.chunk_elems
            )
            aux["auxk"] = self.aux_coef * auxk_loss(self, xc, (xn - recon).detach(), (av, ai))
        return recon, SparseCodes(idx, v, self.width), aux
