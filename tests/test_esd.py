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
    """sampler=frozen samples x_t with the pipeline's own UNet, sampler=trained with the copy being trained
    (never the frozen one): which UNet each call of sample_until got is recorded."""
    import conceptedit.plugins.esd as esd

    real, used = esd.sample_until, []

    def recording(unet, *args, **kwargs):
        used.append(unet)
        return real(unet, *args, **kwargs)

    monkeypatch.setattr(esd, "sample_until", recording)
    cfg = dict(FAST, iterations=2, num_inference_steps=2)
    get_plugin("esd")(cfg).fit(tiny_pipe, Request(targets=["cat"]))
    assert len(used) == 2 and all(u is tiny_pipe.unet for u in used)
    used.clear()
    get_plugin("esd")(dict(cfg, sampler="trained")).fit(tiny_pipe, Request(targets=["cat"]))
    assert len(used) == 2 and all(u is not tiny_pipe.unet for u in used)
    assert used[0] is used[1] and isinstance(used[0], type(tiny_pipe.unet))  # the one student, trained on


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
