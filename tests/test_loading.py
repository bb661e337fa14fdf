from __future__ import annotations

import pytest
import torch

from conceptedit.errors import ModelLoadError, UnsupportedModelError
from conceptedit.families import detect_family
from conceptedit.loading import load_pipeline, require_family


def test_loads_a_diffusers_folder_with_its_generation_defaults(tiny_model_dir):
    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None
    assert pipe._conceptedit_defaults["num_inference_steps"] == 2
    assert detect_family(pipe) == "sd1"
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"


def test_sd2_architecture_is_recognised(tmp_path):
    from tiny import tiny_pipeline

    assert detect_family(tiny_pipeline(sd2=True)) == "sd2"


def test_missing_sources_say_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not a built-in model .* offline"):
        load_pipeline("some-org/some-model-that-is-not-cached")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline"):
        load_pipeline(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a checkpoint"):
        load_pipeline(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelLoadError, match="empty model source"):
        load_pipeline("  ")


def test_corrupted_single_file_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="could not load the checkpoint file"):
        load_pipeline(str(bad))


def test_unsupported_family_is_refused_before_work(tiny_pipe):
    with pytest.raises(UnsupportedModelError, match="supports model families sdxl.*'sd1'"):
        require_family(tiny_pipe, ("sdxl",), "plugin 'x'")


def test_shapes_model_ships_its_corpus_and_itd_presets():
    from conceptedit.loading import model_file, plugin_presets
    from conceptedit.registry import get_plugin

    pipe = load_pipeline("shapes", device="cpu")
    corpus = model_file(pipe, "prompt_corpus")
    assert corpus and len(open(corpus).read().splitlines()) >= 1000
    presets = plugin_presets(pipe, "itd")
    assert presets["sae_width"] < 2**19
    assert get_plugin("itd").for_pipeline(pipe, {"top_n": 7}).config.top_n == 7
