"""SAE architectures: parametrised over the registry, so a newly registered one is tested at once."""

from __future__ import annotations

import pytest
import torch

from conceptedit.errors import ConfigError
from conceptedit.sae import SAE_ARCHITECTURES, SAETrainer, SparseCodes, TrainConfig, create_sae
from conceptedit.sae.kernels import (
    batch_topk_select,
    chunked_topk,
    feature_choice_select,
    sparse_decode,
    sparse_preacts,
)
from conceptedit.sae.synthetic import dictionary_recovery, planted_sparse_data

ARCHS = sorted(SAE_ARCHITECTURES)
D, WIDTH, N_ATOMS, K = 32, 96, 48, 3

# Per-architecture settings for the planted-dictionary recovery test and the bar it must meet (mean
# over planted atoms of the best cosine to a learned atom). k-sparse families get the planted k and
# 240 steps; the L1/L0-penalised ones need a penalty and more (cheap, dense) steps to become sparse
# (measured: L0 ~8 for ReLU, ~3 for JumpReLU). The archetypal SAE's atoms live near the hull of
# data points (each a mix of k planted atoms) plus a δ-bounded relaxation, so its bar is 0.85.
# An architecture missing from this table is trained with its defaults and must reach 0.9.
RECOVERY: dict[str, tuple[dict, dict, float]] = {
    "topk": ({"k": K}, {}, 0.9),
    "batchtopk": ({"k": K}, {}, 0.9),
    "mutual_choice": ({"k": K}, {}, 0.9),
    "mp": ({"k": K}, {}, 0.9),
    "feature_choice": ({"k": K}, {}, 0.9),
    "jumprelu": ({"l0_coef": 1e-2, "bandwidth": 0.2}, {"steps": 600, "lr": 1e-2}, 0.9),
    "relu": ({"l1_coef": 3e-2}, {"steps": 600, "lr": 1e-2}, 0.9),
    "archetypal": ({"k": K, "n_archetypes": 128}, {}, 0.85),
}


def small_kw(arch: str) -> dict:
    return dict(RECOVERY.get(arch, ({}, {}, 0.9))[0])


@pytest.fixture(scope="module")
def planted() -> tuple[torch.Tensor, torch.Tensor]:
    return planted_sparse_data(12288, D, N_ATOMS, K, seed=1)


def trained(arch: str, x: torch.Tensor, steps: int = 240, lr: float = 3e-3, **extra: object):
    sae = create_sae(arch, D, WIDTH, **{**small_kw(arch), **extra})
    cfg = TrainConfig(
        token_budget=512 * steps,
        batch_size=512,
        lr=lr,
        warmup_steps=10,
        progress=False,
        dead_after_tokens=10_000,
        init_rows=2048,
    )
    SAETrainer(sae, x, cfg).train()
    return sae


def test_registry_and_create_errors() -> None:
    assert {
        "topk",
        "batchtopk",
        "jumprelu",
        "relu",
        "mp",
        "archetypal",
        "mutual_choice",
        "feature_choice",
    } <= set(ARCHS)
    with pytest.raises(ConfigError, match="choose one of"):
        create_sae("nope", 8, 16)
    with pytest.raises(ConfigError, match="valid:"):
        create_sae("topk", 8, 16, kk=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_and_gradients(arch: str) -> None:
    sae = create_sae(arch, D, WIDTH, **small_kw(arch))
    x = torch.randn(40, D)
    out = sae(x)
    assert out.recon.shape == x.shape
    loss, stats, fired = sae.training_loss(x, torch.ones(WIDTH, dtype=torch.bool))
    loss.backward()
    assert fired.shape == (WIDTH,) and stats["l0"] > 0
    grads = {n: p.grad for n, p in sae.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    assert float(grads["b_pre"].abs().sum()) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_forward_is_the_inference_path(arch: str, planted) -> None:
    """``sae.eval()(x)`` is ``decode(encode(x))``, row by row independent of the batch (PyTorch convention);
    train mode keeps the differentiable training path."""
    sae = trained(arch, planted[0], steps=4)  # learned inference thresholds for the batch-level selectors
    x = planted[0][:64]
    out = sae.eval()(x)
    codes = sae.encode(x)
    torch.testing.assert_close(out.recon, sae.decode(codes), rtol=0, atol=0)
    torch.testing.assert_close(out.codes.to_dense(), codes.to_dense(), rtol=0, atol=0)
    torch.testing.assert_close(sae(x[:5]).recon, out.recon[:5], rtol=1e-5, atol=1e-5)  # no batch coupling
    assert out.aux_losses == {}
    trained_out = sae.train()(x)
    torch.testing.assert_close(trained_out.recon, sae.train_forward(x).recon)
    assert trained_out.recon.requires_grad


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_encode_equals_unchunked(arch: str, planted) -> None:
    """Tiny chunks (many row and latent blocks) give exactly the codes of one big block."""
    sae = trained(arch, planted[0], steps=4)
    x = planted[0][:300]
    sae.chunk_elems = 1 << 30
    ref = sae.encode(x).to_dense()
    sae.chunk_elems = 97  # forces latent blocks smaller than the width and single-row blocks
    got = sae.encode(x).to_dense()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (ref != 0).sum(-1).float().mean() > 0


@pytest.mark.parametrize("arch", [a for a in ARCHS if a in ("topk", "archetypal")])
def test_chunked_topk_encode_equals_dense_reference(arch: str) -> None:
    sae = create_sae(arch, D, WIDTH, **small_kw(arch), chunk_elems=50)
    x = torch.randn(64, D) * 3
    pre = sae.pre_acts(x).detach()
    codes = sae.encode(x)
    # each selected value is the pre-activation at its latent, and the selection is a top-k set
    # (compared through values, so near-ties between duplicate random atoms cannot flip the test)
    torch.testing.assert_close(codes.values, pre.gather(1, codes.indices).clamp_min(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(codes.values, pre.topk(sae.k, dim=-1).values.clamp_min(0), rtol=1e-5, atol=1e-4)
    assert codes.indices.unique(dim=1).shape[1] == sae.k


@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_decode_equals_dense_decode(arch: str, planted) -> None:
    sae = trained(arch, planted[0], steps=4)
    codes = sae.encode(planted[0][:200])
    dense = (codes.to_dense() @ sae.dictionary() + sae.b_pre) / sae.input_scale
    torch.testing.assert_close(sae.decode(codes), dense, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(codes.to_dense()), dense, rtol=1e-4, atol=1e-4)


def test_sparse_kernels_match_dense_autograd() -> None:
    torch.manual_seed(0)
    n, w, d, k = 50, 70, 12, 5
    xc = torch.randn(n, d, requires_grad=True)
    W_enc = torch.randn(w, d, requires_grad=True)
    b_enc = torch.randn(w, requires_grad=True)
    W_dec = torch.randn(w, d, requires_grad=True)
    target = torch.randn(n, d)
    # sparse path
    ((vals, idx),) = chunked_topk(xc.detach(), W_enc.detach(), b_enc.detach(), [(k, None)], chunk_elems=64)
    v = sparse_preacts(xc, W_enc, b_enc, idx, vals)
    loss = (sparse_decode(idx, v, W_dec, chunk_elems=30) - target).pow(2).sum()
    sparse_grads = torch.autograd.grad(loss, [xc, W_enc, b_enc, W_dec])
    # dense reference: same selection as a mask
    pre = xc @ W_enc.T + b_enc
    mask = torch.zeros(n, w).scatter_(1, idx, 1.0)
    z = torch.relu(pre) * mask
    loss_ref = (z @ W_dec - target).pow(2).sum()
    dense_grads = torch.autograd.grad(loss_ref, [xc, W_enc, b_enc, W_dec])
    torch.testing.assert_close(loss.detach(), loss_ref.detach(), rtol=1e-5, atol=1e-4)
    for got, ref in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_batch_topk_select_is_exact_even_when_one_row_dominates() -> None:
    torch.manual_seed(0)
    n, w, d, k = 16, 64, 8, 2
    xc = torch.randn(n, d)
    xc[3] *= 50  # row 3 holds far more than 2*k of the batch's winners: forces the doubling pass
    W = torch.randn(w, d)
    vals, idx = batch_topk_select(xc, W, None, k * n, per_row=2 * k, chunk_elems=40)
    got = torch.zeros(n, w).scatter_add_(1, idx, vals)
    pre = (xc @ W.T).clamp_min(0)
    top = pre.flatten().topk(k * n)
    ref = torch.zeros(n * w)
    ref[top.indices] = top.values
    torch.testing.assert_close(got, ref.view(n, w))
    assert (got[3] != 0).sum() > 2 * k


def test_feature_choice_select_gives_each_latent_its_top_rows() -> None:
    torch.manual_seed(0)
    xc, W = torch.randn(30, 6), torch.randn(20, 6)
    vals, idx = feature_choice_select(xc, W, None, per_latent=3, chunk_elems=50)
    got = torch.zeros(30, 20).scatter_add_(1, idx, vals)
    pre = xc @ W.T
    v, r = pre.topk(3, dim=0)
    ref = torch.zeros(30, 20).scatter_(0, r, v.clamp_min(0))
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("n", [20, 200])  # 20 rows: k dense passes; 200 rows: the Gram-matrix update
def test_matching_pursuit_encode_matches_reference_loop(n: int) -> None:
    sae = create_sae("mp", D, WIDTH, k=4, chunk_elems=500)
    assert (sae._gram(n) is None) == (n == 20)
    x = torch.randn(n, D)
    codes = sae.encode(x)
    r = x - sae.b_pre
    ref = torch.zeros(n, WIDTH)
    for _ in range(4):
        s = r @ sae.W_dec.T
        v, j = s.max(-1)
        ref[torch.arange(n), j] += v
        r = r - v[:, None] * sae.W_dec[j]
    torch.testing.assert_close(codes.to_dense(), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(codes, SparseCodes)


@pytest.mark.parametrize("arch", ARCHS)
def test_recovers_planted_dictionary(arch: str, planted) -> None:
    x, atoms = planted
    _, train_kw, threshold = RECOVERY.get(arch, ({}, {}, 0.9))
    sae = trained(arch, x, **train_kw)
    score = dictionary_recovery(sae.dictionary().detach(), atoms)
    untrained = dictionary_recovery(create_sae(arch, D, WIDTH, **small_kw(arch)).dictionary().detach(), atoms)
    assert score >= threshold, f"{arch}: recovery {score:.3f} < {threshold} (untrained: {untrained:.3f})"
    assert untrained < threshold  # the bar is not met by chance


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_never_allocates_dense_preactivations(arch: str) -> None:
    """The largest single allocation while encoding is bounded by the chunk budget plus the codes
    themselves, far below the dense [N, width] pre-activation matrix."""
    from torch.profiler import ProfilerActivity, profile

    n, width, chunk = 512, 8192, 1 << 16
    kw = small_kw(arch)
    if "n_archetypes" in SAE_ARCHITECTURES[arch].hparam_names():
        kw["n_archetypes"] = 64
    sae = create_sae(arch, D, width, chunk_elems=chunk, **kw)
    x = torch.randn(n, D)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        codes = sae.encode(x)
    largest = max(e.cpu_memory_usage for e in prof.events())
    codes_bytes = codes.indices.numel() * (8 + 4)
    dense_bytes = n * width * 4
    assert largest <= 8 * chunk * 4 + 2 * codes_bytes, (largest, codes_bytes)
    if codes_bytes < dense_bytes / 4:  # k-sparse codes: nothing close to the dense matrix
        assert largest < dense_bytes / 8, (largest, dense_bytes)
