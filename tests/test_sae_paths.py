"""The SAE's training path (``forward`` / ``training_loss``) and inference path (``encode`` / ``decode``, used by
plugins) compute the same thing, with a pre-encoder bias far from zero (a bias used in one path only, or
subtracted in one and not the other, changes the reconstruction by about its own size)."""

from __future__ import annotations

import pytest
import torch

from conceptedit.sae import SAE_ARCHITECTURES, create_sae

D, WIDTH = 32, 96
# training selects latents over the whole batch (by design), inference per row: their codes differ
BATCH_LEVEL_SELECTION = {"batchtopk", "feature_choice", "mutual_choice"}


def sae_with_offset_bias(arch: str):
    kw: dict = {} if arch in ("relu", "jumprelu") else {"k": 3}
    if "n_archetypes" in SAE_ARCHITECTURES[arch].hparam_names():
        kw["n_archetypes"] = 128
    sae = create_sae(arch, D, WIDTH, **kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, D, generator=g) + 5.0
    sae.init_from_data(x)
    with torch.no_grad():
        sae.b_pre.add_(torch.randn(D, generator=g))
    assert sae.b_pre.abs().max() > 3
    return sae, x


@pytest.mark.parametrize("arch", sorted(SAE_ARCHITECTURES))
def test_decode_of_training_codes_is_the_training_reconstruction(arch: str) -> None:
    sae, x = sae_with_offset_bias(arch)
    with torch.no_grad():
        out = sae(x)
        torch.testing.assert_close(sae.decode(out.codes), out.recon, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(set(SAE_ARCHITECTURES) - BATCH_LEVEL_SELECTION))
def test_inference_reconstruction_is_the_training_reconstruction(arch: str) -> None:
    sae, x = sae_with_offset_bias(arch)
    with torch.no_grad():
        torch.testing.assert_close(sae.decode(sae.encode(x)), sae(x).recon, rtol=1e-5, atol=1e-4)
