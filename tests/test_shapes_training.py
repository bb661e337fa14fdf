"""The v2 training recipe's pieces: padding dropout and the resumable CLIP stage."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conceptedit.pipelines.shapes import model_dir
from conceptedit.pipelines.shapes_train import drop_padding


def test_drop_padding_replaces_only_what_it_says():
    ids = torch.tensor([[1, 5, 7, 2, 2, 2], [1, 2, 2, 2, 2, 2], [1, 5, 2, 2, 2, 2]])  # 1 BOS, 2 EOS = pad
    hidden, empty = torch.randn(3, 6, 4), torch.zeros(1, 6, 4)

    def replaced(p_pad: float, p_eos: float) -> list[list[int]]:
        out = drop_padding(hidden, ids, empty, 2, torch.Generator().manual_seed(0), p_pad, p_eos)
        assert torch.equal(out[out.abs().sum(-1) != 0], hidden[out.abs().sum(-1) != 0])  # the rest unchanged
        return (out.abs().sum(-1) == 0).int().tolist()

    assert replaced(0.0, 0.0) == [[0] * 6] * 3
    assert replaced(1.0, 0.0) == [[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]]  # after the first EOS
    assert replaced(1.0, 1.0) == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]  # EOS too
    out = drop_padding(
        hidden.repeat(200, 1, 1), ids.repeat(200, 1), empty, 2, torch.Generator().manual_seed(1), 0.5, 0.2
    )
    pad_dropped = (out[:, -1].abs().sum(-1) == 0).float().mean()  # the last position is padding in every row
    assert 0.4 < pad_dropped < 0.6, pad_dropped


def test_drop_padding_swaps_in_another_samples_outputs():
    ids = torch.tensor([[1, 5, 7, 2, 2, 2], [1, 2, 2, 2, 2, 2], [1, 5, 2, 2, 2, 2]] * 50)
    hidden, empty = torch.randn(150, 6, 4), torch.zeros(1, 6, 4)
    out = drop_padding(hidden, ids, empty, 2, torch.Generator().manual_seed(0), 1.0, 1.0, p_swap=0.5)
    eos = (ids == 2).int().argmax(1)
    for i in range(150):
        assert torch.equal(out[i, : eos[i]], hidden[i, : eos[i]])  # BOS and words kept
        tail = out[i, eos[i] :]
        from_empty = bool((tail == 0).all())
        others = [j for j in range(150) if j != i and torch.equal(tail, hidden[j, eos[i] :])]
        assert from_empty != bool(others)  # from the empty prompt or from exactly another sample, never itself
        assert not torch.equal(tail, hidden[i, eos[i] :])
    swapped = float(np.mean([not bool((out[i, -1] == 0).all()) for i in range(150)]))
    assert 0.35 < swapped < 0.65, swapped


def test_drop_padding_keeps_the_outputs_on_their_device():
    """The CPU generator draws the masks (the same run on every device); they must follow ``hidden``. The meta
    device stands in for an accelerator: a CPU mask against meta outputs raises."""
    ids = torch.tensor([[1, 5, 7, 2, 2, 2], [1, 2, 2, 2, 2, 2], [1, 5, 2, 2, 2, 2]])
    hidden, empty = torch.empty(3, 6, 4, device="meta"), torch.empty(1, 6, 4, device="meta")
    out = drop_padding(hidden, ids, empty, 2, torch.Generator().manual_seed(0), 1.0, 0.5, p_swap=0.5)
    assert out.device.type == "meta" and out.shape == hidden.shape


def test_training_device_is_checked_before_any_work(monkeypatch, tmp_path):
    from conceptedit import devices
    from conceptedit.errors import ConfigError
    from conceptedit.pipelines.shapes_parallel import training_device
    from conceptedit.pipelines.shapes_train import train

    assert training_device("cpu", 2) == torch.device("cpu")
    with pytest.raises(ConfigError, match="not available on this machine"):
        training_device("cuda:7", 1)
    with pytest.raises(ConfigError, match="unknown device"):
        train(tmp_path / "run", device="tpu")
    assert not (tmp_path / "run").exists()  # refused before the folder or the tokenizer was made
    monkeypatch.setattr(devices, "_available", lambda: ["cpu", "cuda", "cuda:0"])
    assert training_device("cuda", 1) == torch.device("cuda")
    with pytest.raises(ConfigError, match="--workers 2 runs CPU processes"):
        training_device("cuda", 2)


def test_clip_stage_trains_checkpoints_and_resumes(tmp_path):
    from transformers import CLIPModel, CLIPTokenizer

    from conceptedit.pipelines.shapes_clip import train_clip

    tok = CLIPTokenizer.from_pretrained(model_dir() / "tokenizer")
    first = train_clip(tmp_path, tok, steps=2, batch=8, eval_every=2, minutes=10)
    assert first["step"] == 2 and len(first["log"]) == 1 and set(first["zero_shot"]) >= {"shape", "character"}
    clip = CLIPModel.from_pretrained(tmp_path / "clip")
    weights = {k: v.clone() for k, v in clip.state_dict().items()}
    second = train_clip(tmp_path, tok, steps=3, batch=8, eval_every=2, minutes=10)  # resumes at step 2
    assert second["step"] == 3 and second["log"][0] == first["log"][0]
    resumed = CLIPModel.from_pretrained(tmp_path / "clip").state_dict()
    assert any(not torch.equal(weights[k], resumed[k]) for k in weights)  # one more step was taken
    assert json.loads((tmp_path / "clip_report.json").read_text())["step"] == 3


@pytest.mark.slow
def test_train_runs_every_stage_end_to_end_and_records_the_recipe(tmp_path, monkeypatch):
    """Two UNet steps on the shipped VAE: the stages chain, the folder loads, the recipe is recorded,
    and the UNet's captions come from the world with the run's caption rates."""
    from conceptedit.loading import load_pipeline
    from conceptedit.pipelines import shapes_train
    from conceptedit.pipelines.shapes_train import train

    captions: list[str] = []
    real_caption_for = shapes_train.caption_for

    def recording_caption_for(*args, **kwargs):
        captions.append(real_caption_for(*args, **kwargs)[0])
        return captions[-1], None

    monkeypatch.setattr(shapes_train, "caption_for", recording_caption_for)

    report = train(
        tmp_path,
        steps=2,
        minutes=10,
        clip_minutes=0.02,
        vae_from=model_dir(),
        pool=32,
        batch=4,
        p_pad=1.0,
        p_eos=1.0,
        p_swap=0.5,
        caption_rates={"background_with_rate": 1.0, "mark_caption_rate": 0.0, "with_frame_rate": 1.0},
        rare_shape_keep=0.5,
        device="cpu",
    )
    assert report["device"] == "cpu"
    assert report["unet"]["steps"] == 2 and report["padding_dropout"] == {"p_pad": 1.0, "p_eos": 1.0, "p_swap": 0.5}
    assert report["caption_rates"] == {"background_with_rate": 1.0, "mark_caption_rate": 0.0, "with_frame_rate": 1.0}
    assert report["rare_shape_keep"] == 0.5
    assert len(captions) == 8 and not any(" on a" in c and "background" in c for c in captions)
    non_empty = [c for c in captions if c]
    assert non_empty and all(re.match(r"an? \w+ with ", c) for c in non_empty)  # every caption a "with" frame
    assert any(re.search(r"with an? \w+ background", c) for c in captions)
    assert (tmp_path / "clip" / "config.json").is_file() and (tmp_path / "prompts.txt").is_file()
    pipe = load_pipeline(str(tmp_path), device="cpu")
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert image.shape == (1, 32, 32, 3)
