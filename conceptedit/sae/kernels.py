"""Memory-bounded selection and sparse encode/decode kernels shared by every SAE architecture.

Why: a dictionary of 2^19 latents times a batch of tokens is gigabytes of dense pre-activations
(the ItD reference allocates ~8 GB per batch). Here selection runs over bounded blocks of
(rows x latents) without autograd and keeps only the winners; the differentiable part then touches
only the selected (row, latent) pairs, forward and backward:

* :func:`sparse_preacts` recomputes nothing: it returns the selected pre-activations and, in the
  backward pass, sends gradients only to the selected encoder rows (``W_enc[idx]``, ``b_enc[idx]``);
* :func:`sparse_decode` is ``embedding_bag(mode="sum")`` over the selected atoms; its backward only
  writes the selected decoder rows.

The dense equivalents cost 2·N·W·d flops per matmul; these cost 2·N·m·d with m selected per row.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# chunking helpers and matching pursuit live with the other solvers; re-exported for the SAE modules
from conceptedit.sparsity.mp import DEFAULT_CHUNK_ELEMS, _blocks, block_sizes, matching_pursuit_select  # noqa: F401


@torch.no_grad()
def chunked_topk(
    xc: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    requests: list[tuple[int, torch.Tensor | None]],
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-row top-k of ``relu(xc @ weight.T + bias)`` for several (k, allowed-latent mask) requests.

    One pass over the pre-activations serves all requests (e.g. TopK and AuxK over dead latents),
    so the dense matmul is paid once. Values are ReLU-ed: a selected entry with a non-positive
    pre-activation comes back as 0 (and gets no gradient later). Returns (values, indices) per
    request, sorted by value, each ``[N, min(k, allowed)]``.
    """
    n, width = xc.shape[0], weight.shape[0]
    k_max = max(k for k, _ in requests)
    row_block, lat_block = block_sizes(n, width, chunk_elems, min_latents=k_max)
    out: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in requests]
    for r0, r1 in _blocks(n, row_block):
        cands: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in requests]
        for c0, c1 in _blocks(width, lat_block):
            pre = xc[r0:r1] @ weight[c0:c1].T
            if bias is not None:
                pre += bias[c0:c1]
            for j, (k, mask) in enumerate(requests):
                p = pre if mask is None else pre.masked_fill(~mask[c0:c1], float("-inf"))
                v, i = p.topk(min(k, c1 - c0), dim=-1, sorted=False)
                cands[j].append((v, i + c0))
        for j, (k, _) in enumerate(requests):
            v = torch.cat([c[0] for c in cands[j]], dim=1)
            i = torch.cat([c[1] for c in cands[j]], dim=1)
            if v.shape[1] > k:
                v, pos = v.topk(k, dim=-1)
                i = i.gather(1, pos)
            else:
                v, pos = v.sort(dim=-1, descending=True)
                i = i.gather(1, pos)
            out[j].append((v.clamp_min(0.0), i))
    return [(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])) for outs in out]


def pack_coo(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length (row, latent, value) triples -> padded ``[n_rows, max_count]`` (index, value).

    Padding entries have value 0 and index 0, so gather-sum decoding ignores them.
    """
    counts = torch.bincount(rows, minlength=n_rows)
    m = max(1, int(counts.max()) if counts.numel() else 1)
    order = torch.argsort(rows, stable=True)
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    starts[1:] = counts.cumsum(0)
    pos = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    idx = torch.zeros(n_rows, m, dtype=torch.long, device=rows.device)
    val = torch.zeros(n_rows, m, dtype=vals.dtype, device=rows.device)
    idx[rows, pos] = cols
    val[rows, pos] = vals
    return val, idx


@torch.no_grad()
def chunked_threshold(
    xc: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: torch.Tensor | float,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries with ``pre > threshold`` (scalar or per latent), as padded (values, indices)."""
    n, width = xc.shape[0], weight.shape[0]
    row_block, lat_block = block_sizes(n, width, chunk_elems)
    th = torch.as_tensor(threshold, dtype=xc.dtype, device=xc.device)
    rs, cs, vs = [], [], []
    for r0, r1 in _blocks(n, row_block):
        for c0, c1 in _blocks(width, lat_block):
            pre = xc[r0:r1] @ weight[c0:c1].T
            if bias is not None:
                pre += bias[c0:c1]
            t = th[c0:c1] if th.ndim else th
            keep = (pre > t) & (pre > 0)
            r, c = keep.nonzero(as_tuple=True)
            rs.append(r + r0)
            cs.append(c + c0)
            vs.append(pre[r, c])
    return pack_coo(torch.cat(rs), torch.cat(cs), torch.cat(vs), n)


def _scatter_rows(idx: torch.Tensor, weights: torch.Tensor, rhs: torch.Tensor, n_out: int) -> torch.Tensor:
    """``out[idx[n, s]] += weights[n, s] * rhs[n]`` without materialising the [N, m, d] products.

    A CSR (n_out x N) matrix times ``rhs``: each output row is written by one thread, so the
    result is deterministic (needed for bit-exact resume).
    """
    n, m = idx.shape
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    cols = torch.arange(n, device=idx.device).repeat_interleave(m)[order]
    crow = torch.zeros(n_out + 1, dtype=torch.long, device=idx.device)
    crow[1:] = torch.bincount(flat, minlength=n_out).cumsum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mat = torch.sparse_csr_tensor(crow, cols, weights.reshape(-1)[order], (n_out, n))
        return mat @ rhs


def _gather_dot(idx: torch.Tensor, table: torch.Tensor, rhs: torch.Tensor, chunk_elems: int) -> torch.Tensor:
    """``out[n, s] = <table[idx[n, s]], rhs[n]>`` in row blocks of bounded size."""
    n, m = idx.shape
    rows = max(1, chunk_elems // max(1, m * table.shape[1]))
    out = torch.empty(n, m, dtype=rhs.dtype, device=rhs.device)
    for r0, r1 in _blocks(n, rows):
        out[r0:r1] = torch.bmm(table[idx[r0:r1]], rhs[r0:r1, :, None]).squeeze(-1)
    return out


class _SparsePreacts(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xc: Tensor, weight: Tensor, bias: Tensor | None, idx: Tensor, vals: Tensor) -> Tensor:
        ctx.save_for_backward(xc, weight, idx, vals)
        ctx.has_bias = bias is not None
        return vals.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        xc, weight, idx, vals = ctx.saved_tensors
        g = grad * (vals != 0).to(grad.dtype)  # ReLU / unselected entries pass no gradient
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(idx, weight, per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            gw = _scatter_rows(idx, g, xc, weight.shape[0])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = torch.zeros(weight.shape[0], dtype=g.dtype, device=g.device).index_add_(
                0, idx.reshape(-1), g.reshape(-1)
            )
        return gx, gw, gb, None, None


def sparse_preacts(
    xc: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor, vals: torch.Tensor
) -> torch.Tensor:
    """Differentiable selected pre-activations ``vals[n,s] = <weight[idx[n,s]], xc[n]> + bias[idx]``.

    ``vals`` must be what a selection kernel computed from the same tensors (this function does not
    recompute them); entries equal to 0 (ReLU-ed or padding) get no gradient.
    """
    return _SparsePreacts.apply(xc, weight, bias, idx, vals)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, idx: Tensor, vals: Tensor, weight: Tensor, chunk_elems: int) -> Tensor:
        ctx.save_for_backward(idx, vals, weight)
        ctx.chunk_elems = chunk_elems
        return F.embedding_bag(idx, weight, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        idx, vals, weight = ctx.saved_tensors
        gv = gw = None
        if ctx.needs_input_grad[1]:
            gv = _gather_dot(idx, weight, grad, ctx.chunk_elems)
        if ctx.needs_input_grad[2]:
            gw = _scatter_rows(idx, vals, grad, weight.shape[0])
        return None, gv, gw, None


def sparse_decode(
    idx: torch.Tensor, vals: torch.Tensor, weight: torch.Tensor, chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> torch.Tensor:
    """``sum_s vals[n, s] * weight[idx[n, s]]``; gradients reach only the selected rows of ``weight``."""
    return _SparseDecode.apply(idx, vals, weight, chunk_elems)


@torch.no_grad()
def batch_topk_select(
    xc: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    k_total: int,
    per_row: int,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k_total`` positive entries of the whole (rows x latents) matrix, per-row padded.

    Each row first proposes its top ``per_row`` candidates; if a row's last candidate is still above
    the global cut, that row might hold more winners, so candidates are doubled and the pass is
    repeated (rare in practice). Memory stays at ``N x per_row`` plus one chunk.
    """
    width = weight.shape[0]
    m = min(width, max(1, per_row))
    while True:
        ((v, i),) = chunked_topk(xc, weight, bias, [(m, None)], chunk_elems)
        flat = v.reshape(-1)
        kt = min(k_total, flat.numel())
        cut = flat.topk(kt).values[-1] if kt > 0 else flat.new_tensor(float("inf"))
        if m >= width or not bool((v[:, -1] > cut).any()):
            break
        m = min(width, 2 * m)
    keep = (v >= cut) & (v > 0)
    v = torch.where(keep, v, torch.zeros_like(v))
    m_used = max(1, int(keep.sum(1).max()))
    return v[:, :m_used].contiguous(), i[:, :m_used].contiguous()


@torch.no_grad()
def feature_choice_select(
    xc: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    per_latent: int,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each latent takes its top ``per_latent`` rows of the batch (positive entries only)."""
    n, width = xc.shape[0], weight.shape[0]
    lat_block = max(1, chunk_elems // max(1, n))
    m = min(n, per_latent)
    rs, cs, vs = [], [], []
    for c0, c1 in _blocks(width, lat_block):
        pre = xc @ weight[c0:c1].T
        if bias is not None:
            pre += bias[c0:c1]
        v, r = pre.topk(m, dim=0)  # [m, block]
        c = torch.arange(c0, c1, device=xc.device).expand(m, -1)
        keep = v > 0
        rs.append(r[keep])
        cs.append(c[keep])
        vs.append(v[keep])
    return pack_coo(torch.cat(rs), torch.cat(cs), torch.cat(vs), n)


def geometric_median(points: torch.Tensor, iters: int = 8, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: a robust centre for the pre-encoder bias (a few iterations suffice)."""
    y = points.mean(0)
    for _ in range(iters):
        w = 1.0 / (points - y).norm(dim=-1).clamp_min(eps)
        y = (w[:, None] * points).sum(0) / w.sum()
    return y
