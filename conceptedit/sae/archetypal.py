"""Relaxed archetypal SAE (Fel et al. 2025, "Archetypal SAE: Adaptive and Stable Dictionary Learning
for Concept Extraction in Large Vision Models", arXiv:2502.12892)."""

from __future__ import annotations

import torch
from torch import nn

from conceptedit.errors import ConfigError
from conceptedit.sae.base import SAE, Codes, SparseCodes, TrainOut, register_sae
from conceptedit.sae.batchtopk import ThresholdInference
from conceptedit.sae.kernels import batch_topk_select, chunked_topk, sparse_decode, sparse_preacts
from conceptedit.sae.topk import auxk_loss


def kmeans(points: torch.Tensor, n: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """A few Lloyd iterations from a random subset: the fixed point set C of the dictionary."""
    n = min(n, points.shape[0])
    cent = points[torch.randperm(points.shape[0], generator=gen)[:n]].clone()
    for _ in range(iters):
        assign = torch.cdist(points, cent).argmin(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=n).clamp_min(1)[:, None]
        moved = torch.bincount(assign, minlength=n) > 0
        cent[moved] = (sums / counts)[moved]
    return cent


@register_sae("archetypal")
class ArchetypalSAE(ThresholdInference, SAE):
    """Atoms are relaxed convex combinations of data points: D = A C + Λ.

    C ``[n_archetypes, d]`` is fixed (k-means centroids of a data sample, set by
    :meth:`init_from_data`), A ``[width, n_archetypes]`` is row-stochastic (projected back onto the
    simplex after each step: clamp ≥ 0, rows sum to 1), Λ ``[width, d]`` is a relaxation kept at
    ‖Λ_j‖ ≤ δ. Encoder: z = ReLU(TopK_k(W_enc (x − b_pre) + b_enc)) (``selection="topk"``) or its
    BatchTopK variant (``selection="batchtopk"``, as the blind-spot analysis uses), x̂ = D z + b_pre.
    Fel et al. 2025, arXiv:2502.12892. Atoms are not unit-norm (the encoder absorbs the scale);
    decoding computes only the atoms a batch selects.
    """

    unit_norm_decoder = False

    def __init__(
        self,
        d_in: int,
        width: int,
        *,
        k: int = 32,
        n_archetypes: int = 1024,
        delta: float = 1.0,
        selection: str = "topk",
        k_aux: int | None = None,
        aux_coef: float = 1 / 32,
        threshold_momentum: float = 0.99,
        **base: object,
    ) -> None:
        if selection not in ("topk", "batchtopk"):
            raise ConfigError(f"selection must be 'topk' or 'batchtopk', got {selection!r}")
        super().__init__(d_in, width, **base)
        del self.W_dec  # atoms are computed from A, C and Λ
        self.k, self.n_archetypes, self.delta = int(min(k, width)), int(n_archetypes), float(delta)
        self.selection = selection
        self.k_aux = int(min(width, k_aux if k_aux is not None else max(1, d_in // 2)))
        self.aux_coef, self.threshold_momentum = float(aux_coef), float(threshold_momentum)
        self.register_buffer("C", torch.randn(self.n_archetypes, d_in, generator=self._gen))
        self.A = nn.Parameter(self._init_weights())
        self.Lam = nn.Parameter(torch.zeros(width, d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self._make_encoder()

    def _init_weights(self) -> torch.Tensor:
        """Each atom starts near one archetype (plus a little mass spread over the others)."""
        a = torch.full((self.width, self.n_archetypes), 0.05 / self.n_archetypes)
        pick = torch.randint(self.n_archetypes, (self.width,), generator=self._gen)
        a[torch.arange(self.width), pick] += 0.95
        return a

    def dictionary(self) -> torch.Tensor:
        return self.A @ self.C + self.Lam

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        super().init_from_data(sample)
        xc = self._scale(sample) - self.b_pre
        cent = kmeans(xc, self.n_archetypes, iters=10, gen=self._gen)
        if cent.shape[0] < self.n_archetypes:
            raise ConfigError(f"need at least n_archetypes={self.n_archetypes} sample rows, got {len(cent)}")
        self.C.copy_(cent)
        # tied init for atoms that are not unit-norm: z_j = <a_j, x> / ||a_j||^2 is x's coefficient
        # along a_j, so z_j a_j has the scale of x
        atoms = self.dictionary()
        self.W_enc.copy_(atoms / atoms.pow(2).sum(-1, keepdim=True).clamp_min(1e-12))

    def _atoms_for(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uniq, inv = torch.unique(idx, return_inverse=True)
        return self.A[uniq] @ self.C + self.Lam[uniq], inv

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        xc = xn - self.b_pre
        w, b = self.W_enc.detach(), self.b_enc.detach()
        if self.selection == "topk":
            ((vals, idx),) = chunked_topk(xc.detach(), w, b, [(self.k, None)], self.chunk_elems)
        else:
            vals, idx = batch_topk_select(xc.detach(), w, b, self.k * xn.shape[0], 2 * self.k, self.chunk_elems)
        self._update_threshold(vals)
        v = sparse_preacts(xc, self.W_enc, self.b_enc, idx, vals)
        atoms, inv = self._atoms_for(idx)
        recon = sparse_decode(inv, v, atoms, self.chunk_elems) + self.b_pre
        aux = {}
        if dead_mask is not None and self.aux_coef > 0 and bool(dead_mask.any()):
            ((av, ai),) = chunked_topk(
                xc.detach(), w, b, [(min(self.k_aux, int(dead_mask.sum())), dead_mask)], self.chunk_elems
            )
            aux["auxk"] = self.aux_coef * auxk_loss(self, xc, (xn - recon).detach(), (av, ai))
        return recon, SparseCodes(idx, v, self.width), aux

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.selection == "topk":
            ((vals, idx),) = chunked_topk(xc, self.W_enc, self.b_enc, [(self.k, None)], self.chunk_elems)
            return vals, idx
        return ThresholdInference._encode(self, xc)

    def decode(self, codes: Codes) -> torch.Tensor:
        if isinstance(codes, SparseCodes):
            atoms, inv = self._atoms_for(codes.indices)
            out = sparse_decode(inv, codes.values, atoms, self.chunk_elems)
            return (out + self.b_pre) / self.input_scale
        return super().decode(codes)

    @torch.no_grad()
    def after_step(self) -> None:
        """Project A back onto row-stochastic matrices and Λ into the δ-ball (per atom)."""
        self.A.clamp_(min=0)
        sums = self.A.sum(-1, keepdim=True)
        self.A.copy_(torch.where(sums > 0, self.A / sums.clamp_min(1e-12), 1.0 / self.n_archetypes))
        norms = self.Lam.norm(dim=-1, keepdim=True)
        self.Lam.mul_(torch.clamp(self.delta / norms.clamp_min(1e-12), max=1.0))
