"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders", arXiv:2407.14435)."""

from __future__ import annotations

import math
from typing import Any

import torch

from conceptedit.sae.base import SAE, TrainOut, register_sae
from conceptedit.sae.kernels import chunked_threshold


def _kernel(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel K(u) = 1[|u| < 1/2] used by the straight-through pseudo-derivatives."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """z = a · H(a − θ); ∂z/∂a = H(a − θ); ∂z/∂θ = −(θ/ε) K((a − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(a, theta)
        ctx.eps = eps
        return a * (a > theta).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        a, theta = ctx.saved_tensors
        ga = grad * (a > theta).to(a.dtype)
        gt = -(theta / ctx.eps) * _kernel((a - theta) / ctx.eps) * grad
        return ga, gt.sum(0), None


class _Step(torch.autograd.Function):
    """H(a − θ) with ∂/∂a = 0 and ∂/∂θ = −(1/ε) K((a − θ)/ε): trains θ for the L0 penalty."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(a, theta)
        ctx.eps = eps
        return (a > theta).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        a, theta = ctx.saved_tensors
        gt = -(1.0 / ctx.eps) * _kernel((a - theta) / ctx.eps) * grad
        return None, gt.sum(0), None


@register_sae("jumprelu")
class JumpReLUSAE(SAE):
    """z = JumpReLU_θ(W_enc (x − b_pre) + b_enc) = a · H(a − θ),  x̂ = W_dec z + b_pre.

    Rajamanoharan et al. 2024, arXiv:2407.14435. Loss = FVU + l0_coef · E‖z‖₀; θ = exp(log θ) per
    latent is trained through straight-through estimators with a rectangle kernel of bandwidth ε.
    Training is dense (the number of active latents is not fixed and is large early on);
    ``encode`` is chunked and returns sparse codes.
    """

    sparse_training = False

    def __init__(
        self,
        d_in: int,
        width: int,
        *,
        l0_coef: float = 1e-3,
        bandwidth: float = 0.05,
        init_threshold: float = 0.1,
        **base: object,
    ) -> None:
        super().__init__(d_in, width, **base)
        self.l0_coef, self.bandwidth = float(l0_coef), float(bandwidth)
        self.init_threshold = float(init_threshold)
        self.log_threshold = torch.nn.Parameter(torch.full((width,), math.log(self.init_threshold)))
        # about half the latents are active at init: a full-size tied encoder would make the first
        # reconstructions sums of ~width/2 atoms, so the encoder starts scaled by d_in / width
        self._make_encoder(scale=min(1.0, d_in / width))

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        a = (xn - self.b_pre) @ self.W_enc.T + self.b_enc
        theta = self.log_threshold.exp()
        z = _JumpReLU.apply(a, theta, self.bandwidth)
        recon = z @ self.W_dec + self.b_pre
        l0 = _Step.apply(a, theta, self.bandwidth).sum(-1).mean()
        return recon, z, {"l0_penalty": self.l0_coef * l0}

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return chunked_threshold(xc, self.W_enc, self.b_enc, self.log_threshold.exp(), self.chunk_elems)
