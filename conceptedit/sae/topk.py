"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv:2406.04093)."""

from __future__ import annotations

import torch

from conceptedit.sae.base import SAE, SparseCodes, TrainOut, normalized_mse, register_sae
from conceptedit.sae.kernels import chunked_topk, sparse_decode, sparse_preacts


def auxk_loss(
    sae: SAE, xc: torch.Tensor, residual: torch.Tensor, aux: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """AuxK: reconstruct the main residual from the top-k_aux *dead* latents (normalised MSE).

    Gives dead latents a gradient so they come back; Gao et al. weight it by 1/32.
    """
    vals, idx = aux
    v = sparse_preacts(xc, sae.W_enc, sae.b_enc, idx, vals)
    e_hat = sparse_decode(idx, v, sae.dictionary(), sae.chunk_elems)
    return torch.nan_to_num(normalized_mse(residual, e_hat), nan=0.0)


@register_sae("topk")
class TopKSAE(SAE):
    """z = ReLU(TopK_k(W_enc (x − b_pre) + b_enc)),  x̂ = W_dec z + b_pre.

    Gao et al. 2024, arXiv:2406.04093. Loss = FVU + aux_coef · AuxK, where AuxK reconstructs the
    residual with the top ``k_aux`` latents among those dead for the trainer's ``dead_after_tokens``
    (default k_aux = d_in // 2, aux_coef = 1/32). Training uses the sparse kernels: one dense
    encoder matmul (chunked, no autograd) and everything else over the k selected latents.
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        *,
        k: int = 32,
        k_aux: int | None = None,
        aux_coef: float = 1 / 32,
        **base: object,
    ) -> None:
        super().__init__(d_in, width, **base)
        self.k = int(min(k, width))
        self.k_aux = int(min(width, k_aux if k_aux is not None else max(1, d_in // 2)))
        self.aux_coef = float(aux_coef)
        self._make_encoder()

    def _select(
        self, xc: torch.Tensor, dead_mask: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        want_aux = dead_mask is not None and self.aux_coef > 0 and bool(dead_mask.any())
        # never ask for more aux latents than are dead: the padding would only cost gather/scatter work
        k_aux = min(self.k_aux, int(dead_mask.sum())) if want_aux else 0
        reqs = [(self.k, None)] + ([(k_aux, dead_mask)] if want_aux else [])
        res = chunked_topk(xc.detach(), self.W_enc.detach(), self.b_enc.detach(), reqs, self.chunk_elems)
        return res[0], (res[1] if want_aux else None)

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        xc = xn - self.b_pre
        (vals, idx), aux_sel = self._select(xc, dead_mask)
        v = sparse_preacts(xc, self.W_enc, self.b_enc, idx, vals)
        recon = sparse_decode(idx, v, self.W_dec, self.chunk_elems) + self.b_pre
        aux = {}
        if aux_sel is not None:
            aux["auxk"] = self.aux_coef * auxk_loss(self, xc, (xn - recon).detach(), aux_sel)
        return recon, SparseCodes(idx, v, self.width), aux

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ((vals, idx),) = chunked_topk(xc, self.W_enc, self.b_enc, [(self.k, None)], self.chunk_elems)
        return vals, idx
