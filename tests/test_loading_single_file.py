"""``load_pipeline("model.safetensors")``: a tiny SD 1.x pipeline written in the original single-file
(LDM) layout loads back with every weight equal and generates, offline, with ``config=`` a local
diffusers folder of the same architecture holding *other* weights (so equality proves the weights
come from the file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ldm_layout import pipeline_to_ldm
from safetensors.torch import save_file
from tiny import save_tiny_pipeline, tiny_pipeline

from conceptedit.errors import ModelLoadError
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline

PARTS = ("unet", "vae", "text_encoder")


def _flat(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single_file")
    original = tiny_pipeline(seed=0)
    path = folder / "model.safetensors"
    save_file(pipeline_to_ldm(original), str(path))
    config_dir = save_tiny_pipeline(folder / "config", seed=1)  # same architecture, other weights
    return original, path, config_dir


def test_checkpoint_has_the_original_layout(checkpoint):
    from safetensors import safe_open

    _, path, _ = checkpoint
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert not any(k.startswith(("unet.", "vae.", "text_encoder.")) for k in keys)


def test_single_file_loads_every_weight_and_generates(checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    original, path, config_dir = checkpoint
    pipe = load_pipeline(str(path), device="cpu", config=str(config_dir))
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipe.safety_checker is None
    other = tiny_pipeline(seed=1)
    for part in PARTS:
        want, got, decoy = _flat(getattr(original, part)), _flat(getattr(pipe, part)), _flat(getattr(other, part))
        assert want.keys() == got.keys(), part
        for key in want:
            assert torch.equal(want[key], got[key]), f"{part}.{key}"
        assert any(not torch.equal(want[k], decoy[k]) for k in want), f"{part}: the config folder's weights differ"
    assert pipe._conceptedit_model_id == str(path.resolve())

    settings = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 16, "width": 16}
    image = np.asarray(generate(pipe, ["a cat"], seeds=[0], **settings)[0])
    reference = np.asarray(generate(original, ["a cat"], seeds=[0], **settings)[0])
    assert image.shape == (16, 16, 3) and image.std() > 0
    assert np.abs(image.astype(int) - reference.astype(int)).max() <= 1  # the same model, the same image


def test_single_file_without_a_usable_config_is_one_clear_error(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, path, _ = checkpoint
    with pytest.raises(ModelLoadError, match="could not load the checkpoint file .*pass config="):
        load_pipeline(str(path), device="cpu")
    with pytest.raises(ModelLoadError, match="could not load the checkpoint file"):
        load_pipeline(str(path), device="cpu", config=str(tmp_path))  # an empty folder is no architecture


def test_sdxl_single_file_is_one_clear_error_naming_the_workaround(checkpoint, tmp_path):
    """An SDXL checkpoint in the original layout (found by its second text encoder's or its added-condition
    embedding's keys) is refused in one line that says how to convert it, not misread as SD 1.x."""
    from safetensors.torch import load_file

    _, path, config_dir = checkpoint
    state = load_file(str(path))
    for extra in ("conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.label_emb.0.0.weight"):
        sdxl = tmp_path / f"sdxl-{extra.split('.')[0]}.safetensors"
        save_file({**state, extra: torch.zeros(4)}, str(sdxl))
        with pytest.raises(ModelLoadError, match="SDXL checkpoint .* convert it once to a diffusers folder") as err:
            load_pipeline(str(sdxl), device="cpu", config=str(config_dir))
        assert "\n" not in str(err.value) and "from_single_file" in str(err.value)
