"""ESD on the tiny pipeline: presets, determinism, a pipeline left as it was, artifacts that round-trip.

Fits here are short (a few iterations, 4 sampling steps) to stay fast; the paper's defaults run in the
benchmark. Locality measure: mean absolute pixel difference (0–255) at the same seeds. The tiny model
is random (every prompt's conditioning is alike), so the check is only that the concept prompt moves
at least as much as the empty prompt; locality proper is measured on the shapes model by the benchmark.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state

from conceptedit.edits import Edit, LoRAEdit, WeightDeltaEdit
from conceptedit.errors import ConfigError
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.plugins.esd import esd_module_names
from conceptedit.registry import get_plugin

SEEDS = [0, 1]
FAST = dict(iterations=6, num_inference_steps=4, lr=1e-3)


def images(pipe, prompt: str) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in generate(pipe, [prompt] * len(SEEDS), SEEDS)])


def test_presets_select_the_reference_layers(tiny_pipe):
    unet = tiny_pipe.unet
    x = esd_module_names(unet, "esd-x")
    strict = esd_module_names(unet, "esd-x-strict")
    u = esd_module_names(unet, "esd-u")
    everything = esd_module_names(unet, "esd-all")
    assert x and all("attn2" in n for n in x)
    assert strict and set(strict) < set(x) and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in strict)
    assert u and not any("attn2" in n for n in u) and any("attn1" in n for n in u) and "conv_in" in u
    assert set(x) | set(u) == set(everything) and not set(x) & set(u)


def test_esd_erases_leaves_pipeline_alone_and_round_trips(tiny_pipe, tmp_path):
    before_state = full_state(tiny_pipe)
    base_cat, base_empty = images(tiny_pipe, "a cat"), images(tiny_pipe, "")
    calls = []
    edit = get_plugin("esd")(FAST).fit(tiny_pipe, Request(targets=["cat"]), progress=lambda f, m: calls.append(f))
    assert calls and calls[-1] == 1.0
    assert_same_state(before_state, full_state(tiny_pipe))  # fit trains a copy
    assert isinstance(edit, WeightDeltaEdit) and edit.manifest.config["train_method"] == "esd-x"
    assert edit.tensors and all(".attn2." in k for k in edit.tensors)

    again = get_plugin("esd")(FAST).fit(tiny_pipe, Request(targets=["cat"]))
    assert all(torch.equal(again.tensors[k], v) for k, v in edit.tensors.items())  # seeded

    edit.save(tmp_path / "esd")
    loaded = Edit.load(tmp_path / "esd")
    assert all(torch.equal(loaded.tensors[k], v) for k, v in edit.tensors.items())
    with loaded.apply(tiny_pipe):
        cat_change = np.abs(images(tiny_pipe, "a cat") - base_cat).mean()
        empty_change = np.abs(images(tiny_pipe, "") - base_empty).mean()
    assert cat_change > 0.5 and cat_change >= empty_change, (cat_change, empty_change)
    assert_same_state(before_state, full_state(tiny_pipe))
    assert np.array_equal(images(tiny_pipe, "a cat"), base_cat)


def test_esd_lora_artifact_and_options(tiny_pipe, tmp_path):
    before_state = full_state(tiny_pipe)
    cfg = dict(FAST, artifact="lora", train_method="esd-x-strict", sampler="trained", erase_from="a dog")
    edit = get_plugin("esd")(cfg).fit(tiny_pipe, Request(targets=["cat"]))
    assert isinstance(edit, LoRAEdit)
    assert edit.manifest.extra["lr"] == 1e-2  # LoRA's own lr: 10 x the full mode's unless lora_lr is set
    assert get_plugin("esd")(dict(cfg, lora_lr=3e-4)).config.lora_lr == 3e-4
    assert edit.modules and all(m.endswith(("attn2.to_k", "attn2.to_v")) for m in edit.modules)
    assert_same_state(before_state, full_state(tiny_pipe))
    edit.save(tmp_path / "lora")
    loaded = Edit.load(tmp_path / "lora")
    assert isinstance(loaded, LoRAEdit)
    assert all(torch.equal(loaded.tensors[k], v) for k, v in edit.tensors.items())
    base = images(tiny_pipe, "a cat")
    with loaded.apply(tiny_pipe):
        assert not np.array_equal(images(tiny_pipe, "a cat"), base)
    assert_same_state(before_state, full_state(tiny_pipe))


def test_sampler_option_picks_the_model_that_samples(tiny_pipe, monkeypatch):
    """sampler=frozen samples x_t with the pipeline's own UNet, sampler=trained with the model being trained
    (the pipeline's UNet with the trained layers swapped in, never the frozen one): what each call of
    sample_until saw is recorded."""
    import conceptedit.plugins.esd as esd
    from conceptedit.plugins._training import _CastLayer

    real, used = esd.sample_until, []

    def recording(unet, *args, **kwargs):
        swapped = [m.trained for m in unet.modules() if isinstance(m, _CastLayer)]
        used.append((unet, swapped))
        return real(unet, *args, **kwargs)

    monkeypatch.setattr(esd, "sample_until", recording)
    cfg = dict(FAST, iterations=2, num_inference_steps=2)
    get_plugin("esd")(cfg).fit(tiny_pipe, Request(targets=["cat"]))
    assert len(used) == 2 and all(u is tiny_pipe.unet and not swapped for u, swapped in used)
    used.clear()
    get_plugin("esd")(dict(cfg, sampler="trained")).fit(tiny_pipe, Request(targets=["cat"]))
    n_layers = len(esd_module_names(tiny_pipe.unet, "esd-x"))
    assert len(used) == 2 and all(len(swapped) == n_layers for _, swapped in used)
    assert all(a is b for a, b in zip(used[0][1], used[1][1], strict=True))  # the same layers, trained on
    assert not any(isinstance(m, _CastLayer) for m in tiny_pipe.unet.modules())  # swapped back


def test_trained_layers_swap_in_like_a_whole_copy_and_are_always_restored(tiny_pipe):
    """The student is the pipeline's UNet with float32 copies of only the trained layers swapped in: its
    forward and its gradients equal those of a whole float32 copy (the previous implementation), bit for
    bit on a float32 model; no gradient reaches the pipeline; layers and requires_grad flags are restored,
    also when the block raises. esd-u swaps conv_in and the time embedding too."""
    from conceptedit.conditioning import conditioning, predict_noise
    from conceptedit.plugins._training import parameter_names_of, swapped_in, trainable_copy, trainable_layers

    unet = tiny_pipe.unet
    names = esd_module_names(unet, "esd-u")
    layers = trainable_layers(unet, names)
    trained = parameter_names_of(unet, names)
    assert [n for n, _ in layers.named_parameters()] == trained  # nothing else is copied
    whole = trainable_copy(unet)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in layers.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
            whole.get_parameter(n).copy_(p)
    for n, p in layers.named_parameters():
        p.requires_grad_(True)
        whole.get_parameter(n).requires_grad_(True)
    unet.conv_in.bias.requires_grad_(False)  # mixed flags, to see them restored
    flags = [p.requires_grad for p in unet.parameters()]
    modules = dict(unet.named_modules())
    with torch.no_grad():
        cond = conditioning(tiny_pipe, ["a cat"])
    x = torch.randn((1, unet.config.in_channels, 8, 8), generator=gen)
    t = torch.tensor(500)

    with swapped_in(unet, layers, names) as student:
        pred = predict_noise(student, x, t, cond)
        pred.square().mean().backward()
    ref = predict_noise(whole, x, t, cond)
    ref.square().mean().backward()
    assert torch.equal(pred, ref)
    for n, p in layers.named_parameters():
        assert torch.equal(p.grad, whole.get_parameter(n).grad), n
    assert all(p.grad is None for p in unet.parameters())
    assert not torch.equal(pred, predict_noise(unet, x, t, cond))  # the frozen UNet again, unchanged
    for _ in range(2):  # after a normal exit, then after an exception inside the block
        now = dict(unet.named_modules())
        assert now.keys() == modules.keys() and all(modules[n] is m for n, m in now.items())
        assert [p.requires_grad for p in unet.parameters()] == flags
        with pytest.raises(RuntimeError, match="inside"), swapped_in(unet, layers, names):
            raise RuntimeError("inside")


def test_esd_on_a_bf16_pipeline(tiny_sdxl_pipe):
    """On a bf16 pipeline (full-size SDXL's dtype) the frozen UNet computes in bf16, the trained layers in
    float32; the delta is float32, not zero, and the pipeline is left as it was (esd-u: conv_in and the
    time/added embeddings are swapped too)."""
    pipe = tiny_sdxl_pipe.to(torch.bfloat16)
    before_state = full_state(pipe)
    for method in ("esd-x", "esd-u"):
        edit = get_plugin("esd")(dict(FAST, iterations=2, train_method=method)).fit(pipe, Request(targets=["cat"]))
        assert edit.tensors and all(v.dtype == torch.float32 for v in edit.tensors.values())
        assert any(v.abs().max() > 0 for v in edit.tensors.values())
        assert_same_state(before_state, full_state(pipe))
        assert all(p.dtype == torch.bfloat16 and p.grad is None for p in pipe.unet.parameters())


def test_esd_config_is_strict():
    plugin = get_plugin("esd")
    with pytest.raises(ConfigError, match="valid keys"):
        plugin({"train_methd": "esd-x"})
    with pytest.raises(ConfigError, match="must be one of"):
        plugin(train_method="esd-z")
    with pytest.raises(ConfigError):
        plugin(iterations=0)
    with pytest.raises(ConfigError, match="lora_lr"):
        plugin(lora_lr=-1.0)
    assert plugin().config.iterations == 200 and plugin().config.lr == 5e-5
    assert plugin().config.negative_guidance == 2.0


def test_esd_on_sd2_with_pndm_and_refusal_of_other_families():
    from diffusers import PNDMScheduler
    from tiny import tiny_pipeline

    from conceptedit.errors import UnsupportedModelError

    pipe = tiny_pipeline(sd2=True)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)  # a multistep sampler
    edit = get_plugin("esd")(dict(FAST, iterations=3)).fit(pipe, Request(targets=["cat"]))
    assert edit.manifest.base_model["family"] == "sd2" and edit.tensors
    sd3 = type("StableDiffusion3Pipeline", (), {})()  # SDXL is supported: tests/test_sdxl.py
    with pytest.raises(UnsupportedModelError, match="sd1, sd2, sdxl"):
        get_plugin("esd")().fit(sd3, Request(targets=["cat"]))
