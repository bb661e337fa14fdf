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
    tensors = {k: v * 1.5 for k, v in component_state(pipe, "text_encoder").items() if v.dim() == 2}
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


def test_lora_file_loads_with_diffusers(tiny_pipe, tiny_model_dir, tmp_path):
    edit = make_lora_edit(tiny_pipe)
    edit.save(tmp_path / "lora")
    with edit.apply(tiny_pipe):
        ours = image_array(tiny_pipe)
    other = load_pipeline(str(tiny_model_dir), device="cpu")
    other.set_progress_bar_config(disable=True)
    other.load_lora_weights(str(tmp_path / "lora"))
    theirs = image_array(other)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


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
    edit.apply(half).remove()


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
    base = image_array(tiny_pipe)
    with edit.apply(tiny_pipe):
        no_cfg = np.asarray(generate(tiny_pipe, [PROMPT], [0], guidance_scale=1.0)[0])
    assert np.array_equal(no_cfg, np.asarray(generate(tiny_pipe, [PROMPT], [0], guidance_scale=1.0)[0]))
    assert not np.array_equal(base, no_cfg)  # sanity: guidance 1 differs from default guidance
