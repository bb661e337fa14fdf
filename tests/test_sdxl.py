"""SDXL support of the erase plugins, on the tiny SDXL pipeline of ``tests/tiny.py`` (two text encoders
of widths 24 and 32 → a 56-d cross-attention context, pooled ``text_embeds`` and ``add_time_ids``).

Per plugin, with tiny budgets: fit, the edit touches what the method says (both encoders where it should),
applying it changes the images, removing it restores every weight bit for bit, and a saved artifact
loads back and gives the same images. Plugins without SDXL support refuse it with one line.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state

from conceptedit.conditioning import Conditioning, conditioning, predict_noise, unconditional
from conceptedit.edits import Edit
from conceptedit.errors import ConceptEditError, UnsupportedModelError
from conceptedit.families import SDXL, detect_family
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin, list_plugins

SEEDS = [0, 1]
CORPUS = [f"a {c} {a}" for c in ("red", "blue", "green") for a in ("cat", "dog", "bird", "fish", "car")] * 2

# tiny budgets: each fit takes about a second on the tiny pipeline
CONFIGS = {
    "uce": {},
    "realera": dict(lora_steps=2, n_images=1, n_neighbours=4, n_beyond=4, beyond_pool=32),
    "esd": dict(iterations=2, num_inference_steps=2, lr=1e-3),
    "fewshot-unlearning": dict(images_from_model=True, n_images=2, epochs=1, lr=1e-2),
    "negative-prompt": {},
    "itd": dict(
        sae_width=64,
        sae_k=4,
        train_tokens=3000,
        train_warmup_steps=2,
        top_n=8,
        train_batch_prompts=8,
        target_from_corpus=0,
        retain_from_corpus=0,
    ),  # fmt: skip
}


def images(pipe, prompt: str = "a cat") -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in generate(pipe, [prompt] * len(SEEDS), SEEDS)])


def test_tiny_sdxl_pipeline_is_sdxl_and_generates(tiny_sdxl_pipe):
    pipe = tiny_sdxl_pipe
    assert detect_family(pipe) == SDXL
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == widths
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=False)
    assert embeds.shape == (1, 16, 56) and pooled.shape == (1, 16)
    out = generate(pipe, ["a red cat", "a dog"], [0, 1])
    assert [im.size for im in out] == [(16, 16)] * 2
    assert np.abs(np.asarray(out[0], float) - np.asarray(out[1], float)).mean() > 1


@torch.no_grad()
def test_conditioning_is_what_the_pipelines_give_the_unet(tiny_sdxl_pipe, tiny_pipe):
    """The one shared encoding equals ``encode_prompt`` on both families (SDXL: both encoders' penultimate
    states concatenated, the second's pooled projection, zeros for the empty negative prompt); the noise
    prediction passes SDXL's added conditioning and refuses to run an SDXL UNet without it."""
    prompts = ["a red cat", "dog"]
    cond = conditioning(tiny_sdxl_pipe, prompts, size=16)
    embeds, negative, pooled, negative_pooled = tiny_sdxl_pipe.encode_prompt(prompts, device="cpu")
    assert torch.allclose(cond.embeds, embeds, atol=1e-6) and torch.allclose(cond.pooled, pooled, atol=1e-6)
    assert cond.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    empty = unconditional(tiny_sdxl_pipe, 2, size=16)
    assert torch.equal(empty.embeds, negative) and torch.equal(empty.pooled, negative_pooled)
    sd_embeds = tiny_pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    sd = conditioning(tiny_pipe, prompts)
    assert torch.allclose(sd.embeds, sd_embeds, atol=1e-6) and sd.pooled is None and sd.time_ids is None

    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    added = {"text_embeds": pooled, "time_ids": cond.time_ids}
    direct = tiny_sdxl_pipe.unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
    assert torch.allclose(predict_noise(tiny_sdxl_pipe.unet, x, t, cond), direct, atol=1e-5)
    other = Conditioning(cond.embeds, cond.pooled, cond.time_ids * 2)  # the time ids reach the UNet
    assert not torch.allclose(predict_noise(tiny_sdxl_pipe.unet, x, t, other), direct, atol=1e-4)
    with pytest.raises(UnsupportedModelError, match="pooled"):
        predict_noise(tiny_sdxl_pipe.unet, x, t, Conditioning(cond.embeds))


def _fit(name: str, pipe, tmp_path, monkeypatch):
    config = dict(CONFIGS[name])
    if name == "itd":
        monkeypatch.setenv("CONCEPTEDIT_CACHE", str(tmp_path / "cache"))
        (tmp_path / "corpus.txt").write_text("\n".join(CORPUS))
        config["corpus"] = str(tmp_path / "corpus.txt")
    return get_plugin(name)(config).fit(pipe, Request(targets=["cat"]))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_plugin_fits_applies_removes_and_round_trips_on_sdxl(name, tiny_sdxl_pipe, tmp_path, monkeypatch):
    pipe = tiny_sdxl_pipe
    before, base = full_state(pipe), images(pipe)
    edit = _fit(name, pipe, tmp_path, monkeypatch)
    assert edit.manifest.base_model["family"] == SDXL
    assert_same_state(before, full_state(pipe))  # fit never changes the pipeline
    with edit.apply(pipe):
        edited = images(pipe)
    assert not np.array_equal(edited, base), f"{name}: the edit does not change the images"
    assert_same_state(before, full_state(pipe))  # removal restores bit for bit
    assert np.array_equal(images(pipe), base)
    loaded = Edit.load(edit.save(tmp_path / "artifact"))
    with loaded.apply(pipe):
        assert np.array_equal(images(pipe), edited), f"{name}: the loaded artifact edits differently"
    assert_same_state(before, full_state(pipe))


def test_uce_maps_the_concatenated_concept_key_to_the_guide(tiny_sdxl_pipe):
    """Every attn2 to_k/to_v of the SDXL UNet is edited, and each maps the concept's 56-d key (both
    encoders' rows, as the UNet reads them) close to the guide's old output."""
    from conceptedit.plugins.uce import concept_keys, cross_attention_projections

    pipe = tiny_sdxl_pipe
    edit = get_plugin("uce")(lamb=0.01).fit(pipe, Request(targets=["cat"]))
    names = cross_attention_projections(pipe.unet)
    assert names and sorted(edit.tensors) == sorted(f"unet.{n}.weight" for n in names)
    with torch.no_grad():  # "cat" is one token: [BOS, cat, EOS, ...]; the guide "" is [BOS, EOS, ...]
        c = pipe.encode_prompt("cat", device="cpu", do_classifier_free_guidance=False)[0][0, 1]
        g = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0][0, 0]
    assert c.shape == (56,) and torch.allclose(concept_keys(pipe, ["cat"])[0][0], c, atol=1e-6)
    for n in names:
        W = pipe.unet.get_submodule(n).weight.detach().float()
        W_new = W + edit.tensors[f"unet.{n}.weight"]
        assert (W_new @ c - W @ g).norm() < 0.1 * (W @ c - W @ g).norm(), n


def test_fewshot_trains_both_text_encoders_up_to_the_blocks_the_unet_reads(tiny_sdxl_pipe):
    edit = get_plugin("fewshot-unlearning")(CONFIGS["fewshot-unlearning"]).fit(tiny_sdxl_pipe, Request(targets=["cat"]))
    keys = sorted(edit.tensors)
    assert {k.split(".")[0] for k in keys} == {"text_encoder", "text_encoder_2"}
    # SDXL reads the first encoder's penultimate states: its last block (2 of 0..2) never trains;
    # the second's last block feeds the pooled projection and trains
    assert not any(k.startswith("text_encoder.") and "layers.2." in k for k in keys)
    assert any(k.startswith("text_encoder.") and "layers.1.self_attn" in k for k in keys)  # "final attention"
    assert any(k.startswith("text_encoder_2.") and "layers.2." in k for k in keys)


def test_itd_reads_the_second_encoder_by_default(tiny_sdxl_pipe, tmp_path, monkeypatch):
    edit = _fit("itd", tiny_sdxl_pipe, tmp_path, monkeypatch)
    assert edit.manifest.extra["component"] == "text_encoder_2"
    assert edit.hook_points == [f"text_encoder_2.text_model.encoder.layers.{edit.manifest.extra['layer']}"]
    assert edit.sae.d_in == tiny_sdxl_pipe.text_encoder_2.config.hidden_size
    with edit.apply(tiny_sdxl_pipe) as handle:
        assert handle.classify(["a photo of cat"])[0].fired
    config = dict(CONFIGS["itd"], corpus=str(tmp_path / "corpus.txt"), text_encoder="text_encoder")
    first = get_plugin("itd")(config).fit(tiny_sdxl_pipe, Request(targets=["cat"]))
    assert first.hook_points[0].startswith("text_encoder.") and first.sae.d_in == 24


def test_negative_prompt_reaches_both_sdxl_negative_prompts(tiny_sdxl_pipe):
    """SDXL's encode_prompt takes (prompt, prompt_2, device, ...): the wrapper binds by name, so the concept
    lands in negative_prompt and in a user's negative_prompt_2, whatever the call style."""
    pipe = tiny_sdxl_pipe
    edit = get_plugin("negative-prompt")().fit(pipe, Request(targets=["cat"]))
    seen = []
    original = pipe.encode_prompt

    def spy(*args, **kwargs):  # a wrapper of another edit below: (*args, **kwargs)
        seen.append(inspect.signature(original).bind(*args, **kwargs).arguments)
        return original(*args, **kwargs)

    pipe.encode_prompt = spy
    try:
        with edit.apply(pipe):
            pipe.encode_prompt("a dog", None, "cpu", 1, True, negative_prompt_2="blurry")
            generate(pipe, ["a dog"], [0])
    finally:
        del pipe.encode_prompt
    # a str prompt gets str negatives (SD 1.x's encode_prompt refuses a list for a str prompt), a list gets lists
    assert seen[0]["negative_prompt"] == "cat" and seen[0]["negative_prompt_2"] == "blurry, cat"
    assert seen[1]["negative_prompt"] == ["cat"] and seen[1]["negative_prompt_2"] is None


def test_plugins_without_sdxl_refuse_it_in_one_line(tiny_sdxl_pipe):
    """Every registered plugin either lists sdxl among its families or refuses the SDXL pipeline with a
    one-line UnsupportedModelError before any work (``check_pipeline``, the first step of every fit)."""
    refused = 0
    for info in list_plugins(include_broken=False):
        plugin = get_plugin(info.name)
        if SDXL in plugin.families:
            continue
        with pytest.raises(UnsupportedModelError) as caught:
            plugin().check_pipeline(tiny_sdxl_pipe)
        message = str(caught.value)
        assert isinstance(caught.value, ConceptEditError) and "\n" not in message and "'sdxl'" in message
        refused += 1
    assert refused >= 1  # the attacks and colan are SD 1.x/2.x only
    erase = {i.name for i in list_plugins() if i.kind == "erase"}
    assert set(CONFIGS) <= erase
    assert all(SDXL in get_plugin(n).families for n in CONFIGS)
