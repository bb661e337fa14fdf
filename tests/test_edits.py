"""Edit artifacts: round trip, exact removal (every parameter and the image, bit for bit), stacking,
mismatched base models and corrupted files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state

from conceptedit.edits import (
    ComponentEdit,
    Edit,
    LoRAEdit,
    Manifest,
    NegativePromptEdit,
    WeightDeltaEdit,
    applied_edits,
    component_state,
)
from conceptedit.errors import ArtifactError, ModelMismatchError
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

PROMPT = "a red cat"


def image_array(pipe, prompt: str = PROMPT, seed: int = 0) -> np.ndarray:
    return np.asarray(generate(pipe, [prompt], [seed])[0])


def make_delta_edit(pipe, scale: float = 0.5) -> WeightDeltaEdit:
    keys = [k for k in component_state(pipe, "unet") if "attn2.to_k" in k or "attn2.to_v" in k]
    gen = torch.Generator().manual_seed(0)
    tensors = {k: scale * torch.randn(component_state(pipe, "unet")[k].shape, generator=gen) for k in keys}
    edit = WeightDeltaEdit(Manifest("weight_delta", "weight_delta", "test", targets=["cat"]), tensors)
    edit.record_base(pipe, ["unet"])
    return edit


def make_lora_edit(pipe) -> LoRAEdit:
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in pipe.text_encoder.named_modules():
        if name.endswith("self_attn.q_proj") or name.endswith("mlp.fc1"):
            w = module.weight
            tensors[f"text_encoder.{name}.lora_A.weight"] = torch.randn(2, w.shape[1], generator=gen)
            tensors[f"text_encoder.{name}.lora_B.weight"] = torch.randn(w.shape[0], 2, generator=gen)
    edit = LoRAEdit(Manifest("lora", "lora", "test", targets=["cat"]), tensors)
    edit.record_base(pipe, ["text_encoder"])
    return edit


def make_component_edit(pipe) -> ComponentEdit:
    # new values that no arithmetic undo recovers exactly (x1.5 alone is undone bit for bit by -(new - old))
    gen = torch.Generator().manual_seed(2)
    tensors = {
        k: v * 1.5 + 10.0 * torch.randn(v.shape, generator=gen)
        for k, v in component_state(pipe, "text_encoder").items()
        if v.dim() == 2
    }
    edit = ComponentEdit(Manifest("component", "component", "test", targets=["cat"]), tensors)
    edit.record_base(pipe, ["text_encoder"])
    return edit


def make_negative_edit(pipe) -> NegativePromptEdit:
    return get_plugin("negative-prompt")().fit(pipe, Request(targets=["cat"]))


MAKERS = {
    "weight_delta": make_delta_edit,
    "lora": make_lora_edit,
    "component": make_component_edit,
    "negative_prompt": make_negative_edit,
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_round_trip_apply_and_exact_removal(tiny_pipe, kind, tmp_path):
    before_state, before_image = full_state(tiny_pipe), image_array(tiny_pipe)
    edit = MAKERS[kind](tiny_pipe)
    edit.save(tmp_path / "edit")
    loaded = Edit.load(tmp_path / "edit")
    assert type(loaded) is type(edit)
    assert loaded.manifest.targets == ["cat"] and loaded.manifest.base_model["components"]
    assert json.loads((tmp_path / "edit" / "manifest.json").read_text())["versions"]["torch"]
    for key, tensor in edit.tensors.items():
        assert torch.equal(loaded.tensors[key], tensor)

    with loaded.apply(tiny_pipe) as handle:
        assert applied_edits(tiny_pipe) == [loaded]
        edited_image = image_array(tiny_pipe)
        assert not np.array_equal(edited_image, before_image), "the edit must change the image"
        assert handle.active
    assert applied_edits(tiny_pipe) == []
    assert_same_state(before_state, full_state(tiny_pipe))
    assert np.array_equal(before_image, image_array(tiny_pipe))
    assert "encode_prompt" not in tiny_pipe.__dict__


def test_stacked_edits_remove_in_any_order(tiny_pipe):
    before_state, before_image = full_state(tiny_pipe), image_array(tiny_pipe)
    edits = [make_delta_edit(tiny_pipe), make_lora_edit(tiny_pipe), make_negative_edit(tiny_pipe)]
    handles = [e.apply(tiny_pipe) for e in edits]
    all_three = image_array(tiny_pipe)
    handles[0].remove()  # from the bottom of the stack: the others are re-applied on top
    assert applied_edits(tiny_pipe) == edits[1:]
    without_first = image_array(tiny_pipe)
    assert not np.array_equal(all_three, without_first)
    # the same two edits applied alone to a clean pipeline give the same image
    handles[2].remove()
    handles[1].remove()
    assert_same_state(before_state, full_state(tiny_pipe))
    assert np.array_equal(before_image, image_array(tiny_pipe))
    h1, h2 = edits[1].apply(tiny_pipe), edits[2].apply(tiny_pipe)
    assert np.array_equal(without_first, image_array(tiny_pipe))
    h1.remove()
    h2.remove()
    h2.remove()  # removing twice is harmless
    assert_same_state(before_state, full_state(tiny_pipe))


def text_embeddings_of(pipe, prompts: tuple[str, ...] = (PROMPT, "a blue dog")) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(list(prompts), "cpu", 1, False)[0]


def test_edits_on_the_same_weights_remove_in_any_order(tiny_pipe):
    """Two deltas on the same parameters: removing the lower one leaves exactly the upper one applied."""
    before = full_state(tiny_pipe)
    lower, upper = make_delta_edit(tiny_pipe, 0.5), make_delta_edit(tiny_pipe, 0.25)
    h_lower, h_upper = lower.apply(tiny_pipe), upper.apply(tiny_pipe)
    h_lower.remove()
    only_upper = full_state(tiny_pipe)
    h_upper.remove()
    assert_same_state(before, full_state(tiny_pipe))
    with upper.apply(tiny_pipe):
        assert_same_state(only_upper, full_state(tiny_pipe))
    assert_same_state(before, full_state(tiny_pipe))


def test_lora_file_loads_with_diffusers(tiny_pipe, tiny_model_dir, tmp_path):
    """diffusers' loader gives the text embeddings our merge gives (a 5 % strength error is far outside)."""
    edit = make_lora_edit(tiny_pipe)
    edit.save(tmp_path / "lora")
    base = text_embeddings_of(tiny_pipe)
    with edit.apply(tiny_pipe):
        ours = text_embeddings_of(tiny_pipe)
    other = load_pipeline(str(tiny_model_dir), device="cpu")
    other.set_progress_bar_config(disable=True)
    other.load_lora_weights(str(tmp_path / "lora"))
    theirs = text_embeddings_of(other)
    assert (ours - base).abs().max() > 0.1  # the LoRA matters
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_trained_lora_with_alpha_other_than_rank_exports_its_scale(tiny_pipe):
    """The exported LoRA merges into exactly the adapter peft trained: W + (alpha / r) B A."""
    from conceptedit.plugins._training import Trainable, trainable_copy

    student = trainable_copy(tiny_pipe.text_encoder)
    names = [n for n, m in student.named_modules() if n.endswith(("self_attn.q_proj", "mlp.fc1"))]
    trainable = Trainable(student, "text_encoder", names, "lora", lora_rank=2, lora_alpha=8.0, seed=0)
    scalings = [m.scaling["default"] for m in student.modules() if hasattr(m, "scaling") and m.scaling]
    assert scalings and all(s == 4.0 for s in scalings)  # alpha / r, not 1
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:  # peft starts B at zero: give the adapter an effect
                p.copy_(torch.randn(p.shape, generator=gen))
    ids = tiny_pipe.tokenizer([PROMPT], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        adapted = student(ids)[0]
        base = tiny_pipe.text_encoder(ids)[0]
    edit = trainable.artifact(Manifest("lora", "lora", "test", targets=["cat"]), tiny_pipe.text_encoder)
    edit.record_base(tiny_pipe, ["text_encoder"])
    with edit.apply(tiny_pipe), torch.no_grad():
        merged = tiny_pipe.text_encoder(ids)[0]
    assert (adapted - base).abs().max() > 0.1
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)


def test_edit_refuses_another_base_model(tiny_pipe, other_tiny_model_dir, tmp_path):
    edit = make_delta_edit(tiny_pipe)
    edit.save(tmp_path / "edit")
    other = load_pipeline(str(other_tiny_model_dir), device="cpu")
    with pytest.raises(ModelMismatchError, match="was made for base model .* different weights"):
        Edit.load(tmp_path / "edit").apply(other)
    Edit.load(tmp_path / "edit").apply(other, strict=False).remove()


def test_edit_accepts_same_model_in_other_dtype(tiny_pipe, tiny_model_dir):
    edit = make_delta_edit(tiny_pipe)
    half = load_pipeline(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    before = full_state(half)
    handle = edit.apply(half)
    for key, delta in edit.tensors.items():  # W + delta computed in float32, stored in the model's dtype
        weight = half.unet.get_parameter(key.removeprefix("unet."))
        assert weight.dtype == torch.bfloat16
        assert torch.equal(weight, (before[key].float() + delta).to(torch.bfloat16)), key
    handle.remove()
    assert_same_state(before, full_state(half))


def test_corrupted_and_tampered_artifacts_fail_clearly(tiny_pipe, tmp_path):
    folder = make_delta_edit(tiny_pipe).save(tmp_path / "edit")
    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or modified"):
        Edit.load(folder)
    weights.write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="truncated or modified"):
        Edit.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupted"):
        Edit.load(folder)
    with pytest.raises(ArtifactError, match="not an edit artifact"):
        Edit.load(tmp_path)
    manifest["edit_type"] = "made_up_type"
    manifest["files"] = {}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unknown; install the plugin"):
        Edit.load(folder)


def test_failed_save_keeps_the_earlier_artifact(tiny_pipe, tmp_path, monkeypatch):
    edit = make_delta_edit(tiny_pipe)
    folder = edit.save(tmp_path / "edit")
    before = (folder / "manifest.json").read_text()

    def explode(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(WeightDeltaEdit, "_write_tensors", explode)
    with pytest.raises(OSError, match="disk full"):
        edit.save(folder)
    assert (folder / "manifest.json").read_text() == before
    assert Edit.load(folder).tensors.keys() == edit.tensors.keys()
    assert [p.name for p in tmp_path.iterdir()] == ["edit"]


def test_negative_prompt_edit_needs_guidance_and_respects_user_negative(tiny_pipe):
    edit = make_negative_edit(tiny_pipe)
    assert edit.negative_for("") == "cat"
    assert edit.negative_for("blurry") == "blurry, cat"
    both = get_plugin("negative-prompt")().fit(tiny_pipe, Request(targets=["cat", "dog"]))
    assert both.negative_for("") == "cat, dog" and both.negative_for("blurry") == "blurry, cat, dog"
    base = image_array(tiny_pipe)
    with edit.apply(tiny_pipe):
        no_cfg = np.asarray(generate(tiny_pipe, [PROMPT], [0], guidance_scale=1.0)[0])
    assert np.array_equal(no_cfg, np.asarray(generate(tiny_pipe, [PROMPT], [0], guidance_scale=1.0)[0]))
    assert not np.array_equal(base, no_cfg)  # sanity: guidance 1 differs from default guidance


def test_generate_passes_the_negative_prompt_and_seeds_through(tiny_pipe):
    """generate() gives what the pipeline itself gives for the same negative prompt and per-image seeds."""
    from conceptedit.devices import generator_for
    from conceptedit.generation import generation_settings

    ours = generate(tiny_pipe, [PROMPT, "a blue dog"], [4, 5], negative_prompt="blurry")
    direct = tiny_pipe(
        prompt=[PROMPT, "a blue dog"],
        negative_prompt=["blurry"] * 2,
        generator=[generator_for(4), generator_for(5)],
        output_type="pil",
        **generation_settings(tiny_pipe),
    ).images
    for a, b in zip(ours, direct, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    plain = generate(tiny_pipe, [PROMPT], [4])[0]
    assert not np.array_equal(np.asarray(plain), np.asarray(ours[0])), "the negative prompt changed nothing"


def test_negative_prompt_edit_works_with_a_plain_string_prompt(tiny_pipe):
    """``pipe("a cat")`` (a str, not a list) with the edit applied: diffusers refuses a list negative prompt
    for a str prompt, so the edit must pass the negative prompt as a str too (found by benchmarks/full_size.py)."""
    import torch

    edit = make_negative_edit(tiny_pipe)
    kwargs = {"num_inference_steps": 1, "height": 16, "width": 16, "output_type": "latent"}
    with edit.apply(tiny_pipe):
        single = tiny_pipe("a dog", generator=torch.Generator().manual_seed(0), **kwargs).images
        listed = tiny_pipe(["a dog"], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(single, listed)
    plain = tiny_pipe("a dog", negative_prompt="cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(single, plain)  # the edit is the concept as negative prompt
