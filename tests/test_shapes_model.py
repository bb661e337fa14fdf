"""The shipped shapes model: tokenizer, plain-diffusers loading, determinism, the probe and its CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.datasets.shapes import WORLD, balanced_world, render, render_batch
from conceptedit.datasets.shapes.probe import Probe, targets
from conceptedit.errors import ConceptEditError
from conceptedit.pipelines.shapes import RESOLUTION, default_generation_kwargs, model_dir

_attach_subcommands()
runner = CliRunner()


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe.load()


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir())  # plain diffusers, no conceptedit code
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_folder_layout_and_size():
    root = model_dir()
    for part in (
        "model_index.json",
        "unet",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
        "probe",
        "conceptedit.json",
        "prompts.txt",
    ):
        assert (root / part).exists(), part
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"model + probe is {total / 2**20:.1f} MB"
    kwargs = default_generation_kwargs()
    assert set(kwargs) >= {"num_inference_steps", "guidance_scale", "height", "width"}
    assert kwargs["height"] == kwargs["width"] == RESOLUTION and WORLD.image_size % RESOLUTION == 0


def test_tokenizer_every_world_word_is_one_token_and_captions_round_trip():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(model_dir() / "tokenizer")
    # the shipped model (v1) predates the nicknames and synonyms; a tokenizer trained on the current
    # world makes them single tokens too (tests/test_shapes_world_aliases.py)
    aliases = set(WORLD.nicknames.values()) | set(WORLD.synonyms.values())
    for word in [w for w in WORLD.words() if w not in aliases]:
        pieces = tok.tokenize(word)
        assert len(pieces) == 1, (word, pieces)
    for s in render(50, seed=4):
        ids = tok(s.caption).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert re.sub(r" ([,.!])", r"\1", decoded) == s.caption  # CLIP's decode spaces out punctuation
    assert len(tok.tokenize("an illustration showing a cat")) > 4  # unseen words fall back to pieces


def test_pipeline_has_sd_module_names(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    names = dict(pipe.unet.named_modules())
    assert any(n.endswith("attn2.to_k") for n in names) and any(n.endswith("attn2.to_v") for n in names)
    text = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)  # transformers 5 drops the text_model level
    layers = text.encoder.layers
    assert len(layers) >= 4
    assert pipe.safety_checker is None and pipe.feature_extractor is None


def test_same_seed_same_image(pipe):
    def gen(seed: int) -> np.ndarray:
        g = torch.Generator("cpu").manual_seed(seed)
        return pipe(
            "a red circle on a white background",
            num_inference_steps=4,
            generator=g,
            output_type="np",
            height=RESOLUTION,
            width=RESOLUTION,
        ).images[0]

    a, b, c = gen(0), gen(0), gen(1)
    assert a.shape == (RESOLUTION, RESOLUTION, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_probe_reads_generator_images(probe):
    images, labels, _ = render_batch(400, seed=777, world=balanced_world())
    logits = probe.logits(images)
    y = targets(labels, probe.classes)
    for family in WORLD.probe_families:
        acc = float((logits[family].argmax(-1) == y[family]).float().mean())
        assert acc >= 0.9, (family, acc)


def test_probe_inputs_agree_and_probabilities_are_distributions(probe):
    samples = render(6, seed=9)
    from_pil = probe.predict([s.pil() for s in samples])
    from_array = probe.predict(np.stack([s.image for s in samples]))
    from_tensor = probe.predict(torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2))
    for a, b, c in zip(from_pil, from_array, from_tensor, strict=True):
        assert set(a) == set(WORLD.probe_families)
        for family, v in a.items():
            assert v["label"] == b[family]["label"] == c[family]["label"]
            assert abs(sum(v["probs"].values()) - 1) < 1e-4 and v["prob"] == max(v["probs"].values())
            assert list(v["probs"]) == list(WORLD.classes(family))
    with pytest.raises(ConceptEditError):
        Probe.load("/nonexistent/probe")
    with pytest.raises(ConceptEditError):
        probe.predict(["not an image"])


def test_probe_cli_json_schema(tmp_path):
    result = runner.invoke(app, ["shapes", "render", "--n", "3", "--seed", "5", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["probe", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 3
    labels = [json.loads(line)["labels"] for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    for row, lab in zip(rows, labels, strict=True):
        assert row["path"].endswith(".png")
        assert set(row["predictions"]) == set(WORLD.probe_families)
        for v in row["predictions"].values():
            assert set(v) == {"label", "prob", "probs"}
        assert row["predictions"]["shape"]["label"] == lab["shape"]
    bad = runner.invoke(app, ["probe", str(tmp_path / "missing.png")])
    assert bad.exit_code != 0


def test_shapes_world_cli():
    result = runner.invoke(app, ["shapes", "world", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["trigger"]["words"] == list(WORLD.trigger.words)
    for cmd in (
        ["shapes", "--help"],
        ["shapes", "render", "--help"],
        ["shapes", "train", "--help"],
        ["probe", "--help"],
    ):
        assert runner.invoke(app, cmd).exit_code == 0, cmd
