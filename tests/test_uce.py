"""UCE: the closed-form solver on random tensors, and the plugin on the tiny pipeline.

Locality measure: mean absolute pixel difference (0–255) between base and edited images at the same
seeds. The tiny model is random, so every prompt's keys are alike (cosine ≈ 0.9) and only concepts
passed as ``preserve`` stay put; there the preserved prompt must change < 25 % as much as the concept
prompt. (Locality without a preserve list is measured on the shapes model by the benchmark.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state

from conceptedit.edits import Edit, WeightDeltaEdit
from conceptedit.errors import ConfigError, RequestError
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin
from conceptedit.sparsity.ridge import normal_equation_residual, uce_closed_form, weighted_ridge_edit

SEEDS = [0, 1]


def images(pipe, prompt: str) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in generate(pipe, [prompt] * len(SEEDS), SEEDS)])


# -- the solver ----------------------------------------------------------------------------------
def random_problem(seed: int, layers: int | None = 3, out: int = 6, d: int = 8, n_erase: int = 3, n_keep: int = 2):
    g = torch.Generator().manual_seed(seed)
    shape = (layers, out, d) if layers else (out, d)
    return (
        torch.randn(shape, generator=g),
        torch.randn(n_erase, d, generator=g),
        torch.randn(n_erase, d, generator=g),
        torch.randn(n_keep, d, generator=g),
    )


@pytest.mark.parametrize("layers", [None, 3])
def test_solver_satisfies_its_normal_equations(layers):
    W, erase, guide, keep = random_problem(0, layers)
    lamb, e, p = 0.5, 1.3, 0.7
    W_new = uce_closed_form(W, erase, guide, keep, lamb=lamb, preserve_scale=p, erase_scale=e)
    assert W_new.shape == W.shape and W_new.dtype == W.dtype
    keys = torch.cat([erase, keep])
    values = torch.einsum("...oi,ni->...no", W.double(), torch.cat([guide, keep]).double())
    weights = torch.tensor([e] * len(erase) + [p] * len(keep), dtype=torch.float64)
    assert normal_equation_residual(W_new, W, keys, values, weights, lamb) < 1e-4


def test_solver_batched_equals_per_layer():
    W, erase, guide, keep = random_problem(1, 4)
    batched = uce_closed_form(W, erase, guide, keep)
    for i in range(4):
        assert torch.allclose(batched[i], uce_closed_form(W[i], erase, guide, keep), atol=1e-6)


def test_solver_maps_erased_keys_to_guide_outputs_as_lambda_vanishes():
    W, erase, guide, _ = random_problem(2, None, n_erase=3, d=8)
    W_new = uce_closed_form(W.double(), erase.double(), guide.double(), None, lamb=1e-9)
    assert torch.allclose(erase.double() @ W_new.T, guide.double() @ W.double().T, atol=1e-5)


def test_solver_keeps_preserved_outputs_and_lambda_pulls_to_old_weights():
    W, erase, guide, keep = random_problem(3, None)
    W_new = uce_closed_form(W, erase, guide, keep, lamb=1e-6, preserve_scale=1e4)
    assert torch.allclose(keep @ W_new.T, keep @ W.T, atol=1e-2)
    assert torch.allclose(uce_closed_form(W, erase, guide, keep, lamb=1e8), W, atol=1e-5)
    # one guide row is broadcast to every erase row
    one = uce_closed_form(W, erase, guide[:1], keep)
    assert torch.allclose(one, uce_closed_form(W, erase, guide[:1].expand(3, -1), keep))


def test_weighted_ridge_edit_rejects_bad_shapes():
    W = torch.zeros(4, 5)
    with pytest.raises(ValueError, match="keys"):
        weighted_ridge_edit(W, torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="values"):
        weighted_ridge_edit(W, torch.zeros(2, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="erase"):
        uce_closed_form(W, torch.zeros(0, 5), torch.zeros(1, 5))


# -- the plugin ----------------------------------------------------------------------------------
def test_uce_erases_keeps_preserved_and_round_trips(tiny_pipe, tmp_path):
    before_state = full_state(tiny_pipe)
    base_cat, base_dog = images(tiny_pipe, "a cat"), images(tiny_pipe, "a dog")
    edit = get_plugin("uce")().fit(tiny_pipe, Request(targets=["cat"], preserve=["dog"]))
    assert_same_state(before_state, full_state(tiny_pipe))  # fit leaves the pipeline as it was
    assert isinstance(edit, WeightDeltaEdit) and edit.manifest.plugin == "uce"
    assert edit.tensors and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in edit.tensors)

    edit.save(tmp_path / "uce")
    loaded = Edit.load(tmp_path / "uce")
    assert loaded.tensors.keys() == edit.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], v) for k, v in edit.tensors.items())
    with loaded.apply(tiny_pipe):
        cat_change = np.abs(images(tiny_pipe, "a cat") - base_cat).mean()
        dog_change = np.abs(images(tiny_pipe, "a dog") - base_dog).mean()
    assert cat_change > 1.0, cat_change
    assert dog_change < 0.25 * cat_change, (dog_change, cat_change)
    assert_same_state(before_state, full_state(tiny_pipe))  # removal restores every parameter bit for bit
    assert np.array_equal(images(tiny_pipe, "a cat"), base_cat)


def test_uce_options_and_validation(tiny_pipe):
    plugin = get_plugin("uce")
    only_v = plugin(with_to_k=False, expand_prompts=True, token="all").fit(tiny_pipe, Request(targets=["cat"]))
    assert only_v.tensors and all(".attn2.to_v." in k for k in only_v.tensors)
    assert len(only_v.manifest.extra["erase_prompts"]) == 6
    again = plugin(with_to_k=False, expand_prompts=True, token="all").fit(tiny_pipe, Request(targets=["cat"]))
    assert all(torch.equal(again.tensors[k], v) for k, v in only_v.tensors.items())  # deterministic
    with pytest.raises(ConfigError, match="valid keys"):
        plugin({"lambda": 0.1})
    with pytest.raises(ConfigError):
        plugin(lamb=-1.0)
    with pytest.raises(RequestError, match="guide"):
        plugin(guide="cat").fit(tiny_pipe, Request(targets=["cat"]))


def test_uce_on_sd2_and_refusal_of_other_families():
    from tiny import tiny_pipeline

    from conceptedit.errors import UnsupportedModelError

    edit = get_plugin("uce")().fit(tiny_pipeline(sd2=True), Request(targets=["cat"]))
    assert edit.manifest.base_model["family"] == "sd2" and edit.tensors
    sd3 = type("StableDiffusion3Pipeline", (), {})()  # SDXL is supported: tests/test_sdxl.py
    with pytest.raises(UnsupportedModelError, match="sd1, sd2, sdxl"):
        get_plugin("uce")().fit(sd3, Request(targets=["cat"]))


def test_solving_in_chunks_gives_the_same_edit(tiny_pipe, monkeypatch):
    """Same-shape layers are solved in chunks of LAYERS_PER_SOLVE (memory on SDXL); each layer is solved on
    its own, so the chunk size changes nothing."""
    import torch

    import conceptedit.plugins.uce as uce

    whole = get_plugin("uce")().fit(tiny_pipe, Request(targets=["cat"], preserve=["dog"]))
    monkeypatch.setattr(uce, "LAYERS_PER_SOLVE", 1)
    single = get_plugin("uce")().fit(tiny_pipe, Request(targets=["cat"], preserve=["dog"]))
    assert whole.tensors.keys() == single.tensors.keys() and len(whole.tensors) == 8
    for key in whole.tensors:
        assert torch.allclose(whole.tensors[key], single.tensors[key], atol=1e-6), key
