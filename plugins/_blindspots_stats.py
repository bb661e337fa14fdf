"""The statistics of the blind-spot analysis: per-concept energy, real vs generated, with FDR control.

Bohacek, Fel et al. 2025 (arXiv 2506.19708) compare, per SAE concept k, its energy (the per-image sum
of its codes over tokens, averaged over images) on real images and on images generated for the same
captions, through δ(k) = E_gen / (E_real + E_gen) ∈ [0, 1]: δ ≈ 0 means the model rarely produces a
concept the data has (suppressed), δ ≈ 1 that it over-produces one (exaggerated). The paper reads
δ against fixed thresholds (0.1 / 0.9). Here every concept also gets a paired test (real image i and
generated image i share a caption), an effect size, a bootstrap interval for δ and Benjamini–Hochberg
control of the false-discovery rate across concepts, so that "suppressed" means "significantly less
often, at the chosen FDR", not "below a threshold on a noisy ratio".

Significance alone is not enough at a few hundred pairs: on the shapes model at n = 512 (benchmarks/
blindspots_shapes.py) 25 of 249 tested concepts were significant at FDR 0.05 with δ between 0.38 and
0.66 and |d_z| ≤ 0.25 (background shades, colour tints: real but negligible drifts), 4 of them named
(r ≥ 0.3) by a common shape or colour. So a concept is also required to shift by at least ``min_shift`` in δ
(|δ − 0.5| ≥ min_shift; 0.1 means the generated energy is ≥ 1.5× or ≤ 2/3 of the real one), the
fold-change-plus-FDR rule of volcano plots and a milder form of the paper's 0.1 / 0.9 rule. Concepts
significant but below the margin keep ``significant = True`` and the label ``faithful``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps

from conceptedit.errors import RequestError


def image_energy(codes_dense: torch.Tensor, image_of_row: torch.Tensor, n_images: int) -> torch.Tensor:
    """Per-image energy ``[n_images, width]``: the sum of each concept's codes over the image's tokens."""
    out = torch.zeros(n_images, codes_dense.shape[1], dtype=torch.float64)
    return out.index_add_(0, image_of_row.long(), codes_dense.to(torch.float64))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values): concept k is a discovery at FDR α when q[k] ≤ α."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(n)
    q[order] = np.minimum(ranked, 1.0)
    return q


@dataclass(frozen=True)
class ConceptStat:
    concept: int
    real_energy: float  # mean per-image energy on real images
    gen_energy: float
    delta: float  # E_gen / (E_real + E_gen); 0.5 = faithful
    delta_low: float  # bootstrap percentile interval of delta
    delta_high: float
    effect: float  # paired standardised mean difference (gen - real) / sd(diff), Cohen's d_z
    log2_ratio: float  # log2((E_gen + eps) / (E_real + eps))
    p: float
    q: float
    label: str  # suppressed | exaggerated | faithful | inactive
    significant: bool = False  # q ≤ fdr, whatever the size of the shift

    def to_dict(self) -> dict[str, float | int | str]:
        return dict(self.__dict__)


def concept_stats(
    real: torch.Tensor | np.ndarray,
    gen: torch.Tensor | np.ndarray,
    *,
    fdr: float = 0.05,
    bootstrap: int = 1000,
    ci: float = 0.95,
    min_active: int = 3,
    min_shift: float = 0.0,
    seed: int = 0,
) -> list[ConceptStat]:
    """Compare per-image energies ``[n, K]`` of paired real and generated images, concept by concept.

    p-values come from a paired t-test on the per-image differences (two-sided); concepts active in
    fewer than ``min_active`` images of either side's union are ``inactive`` and not tested (they
    would only spend FDR budget). Labels: ``suppressed`` / ``exaggerated`` when q ≤ ``fdr`` (BH over
    the tested concepts) and |δ − 0.5| ≥ ``min_shift``, in the direction of the sign of the mean
    difference, else ``faithful``.
    """
    if not 0 <= min_shift < 0.5:
        raise RequestError(f"min_shift must be in [0, 0.5), got {min_shift}")
    r = np.asarray(real, dtype=np.float64)
    g = np.asarray(gen, dtype=np.float64)
    if r.ndim != 2 or r.shape != g.shape:
        raise RequestError(f"real and generated energies must be [n, K] of the same shape, got {r.shape}, {g.shape}")
    n, k = r.shape
    if n < 2:
        raise RequestError(f"need at least 2 real/generated pairs to compare, got {n}")
    mr, mg = r.mean(0), g.mean(0)
    delta = np.divide(mg, mr + mg, out=np.full(k, 0.5), where=(mr + mg) > 0)
    diff = g - r
    sd = diff.std(0, ddof=1)
    effect = np.divide(diff.mean(0), sd, out=np.zeros(k), where=sd > 0)
    eps = 1e-6 * max(float(np.concatenate([mr, mg]).max()), 1e-12)
    log2_ratio = np.log2((mg + eps) / (mr + eps))
    active = ((r > 0) | (g > 0)).sum(0) >= min_active
    tested = active & (sd > 0)
    p = np.ones(k)
    if tested.any():
        t = diff[:, tested].mean(0) / (sd[tested] / np.sqrt(n))
        p[tested] = 2 * sps.t.sf(np.abs(t), df=n - 1)
    q = np.ones(k)
    q[tested] = benjamini_hochberg(p[tested])
    # bootstrap over pairs: resampling weights [B, n] times energies gives the resampled means at once
    rng = np.random.default_rng(seed)
    low, high = delta.copy(), delta.copy()
    if bootstrap > 0:
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap) / n
        br, bg = w @ r, w @ g
        bd = np.divide(bg, br + bg, out=np.full_like(bg, 0.5), where=(br + bg) > 0)
        alpha = (1 - ci) / 2
        low, high = np.quantile(bd, alpha, axis=0), np.quantile(bd, 1 - alpha, axis=0)
    out = []
    for j in range(k):
        if not active[j]:
            label = "inactive"
        elif q[j] <= fdr and abs(delta[j] - 0.5) >= min_shift:
            label = "suppressed" if mg[j] < mr[j] else "exaggerated"
        else:
            label = "faithful"
        out.append(
            ConceptStat(
                j,
                float(mr[j]),
                float(mg[j]),
                float(delta[j]),
                float(low[j]),
                float(high[j]),
                float(effect[j]),
                float(log2_ratio[j]),
                float(p[j]),
                float(q[j]),
                label,
                bool(active[j] and q[j] <= fdr),
            )
        )
    return out


def memorisation_flags(
    real_feats: torch.Tensor, gen_feats: torch.Tensor, quantile: float = 0.01
) -> tuple[list[bool], list[int], list[float], float]:
    """Generated images that are near copies of a real (training) image.

    A generated image is flagged when its nearest real image (cosine distance of pooled features) is
    closer than the ``quantile`` of real-to-real nearest-neighbour distances: a generation closer to
    one training image than almost any two training images are to each other. Returns (flags,
    nearest real index, distance, threshold).
    """
    rf = torch.nn.functional.normalize(real_feats.double(), dim=-1)
    gf = torch.nn.functional.normalize(gen_feats.double(), dim=-1)
    rr = 1 - rf @ rf.T
    rr.fill_diagonal_(float("inf"))
    nn_real = rr.min(1).values
    threshold = float(torch.quantile(nn_real[torch.isfinite(nn_real)], quantile)) if len(rf) > 1 else 0.0
    gr = 1 - gf @ rf.T
    dist, idx = gr.min(1)
    flags = [bool(d < threshold) for d in dist]
    return flags, [int(i) for i in idx], [float(d) for d in dist], threshold


def _label_corr(energy: np.ndarray, labels: list[dict[str, str | bool]]) -> tuple[list[str], np.ndarray]:
    """Ground-truth labels ``key=value`` and their Pearson correlation ``[labels, K]`` with each concept's
    per-image energy on real images."""
    present = [{f"{k}={v}" for k, v in row.items()} for row in labels]
    keys = sorted(set().union(*present))
    ind = np.array([[key in row for key in keys] for row in present], dtype=np.float64)
    e = np.asarray(energy, dtype=np.float64)
    ec = e - e.mean(0)
    ic = ind - ind.mean(0)
    num = ic.T @ ec  # [labels, K]
    den = np.sqrt((ic**2).sum(0))[:, None] * np.sqrt((ec**2).sum(0))[None, :]
    return keys, np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def label_correlations(energy: np.ndarray, labels: list[dict[str, str | bool]]) -> list[tuple[str, float]]:
    """For each concept, the ground-truth label (``key=value``) whose indicator correlates best with its
    per-image energy on real images (Pearson), and the correlation."""
    if not labels:
        return []
    keys, corr = _label_corr(energy, labels)
    best = corr.argmax(0)
    return [(keys[b], float(corr[b, j])) for j, b in enumerate(best)]


def label_concepts(energy: np.ndarray, labels: list[dict[str, str | bool]]) -> dict[str, tuple[int, float]]:
    """For each ground-truth label, the concept whose energy correlates best with it, and the correlation.

    The other direction from :func:`label_correlations`: a label (striped, a mark) may be no concept's
    best label and still be carried by one concept more than by any other; this is where to read it."""
    if not labels:
        return {}
    keys, corr = _label_corr(energy, labels)
    best = corr.argmax(1)
    return {key: (int(best[i]), float(corr[i, best[i]])) for i, key in enumerate(keys)}
