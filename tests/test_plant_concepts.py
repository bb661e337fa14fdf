"""benchmarks/plant_concepts.py: the planted blind spots the blindspots benchmark must find (halo
exaggerated, crescent suppressed): their training data, the LoRA recipe, and the UCE crescent plant."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image


def test_planted_halo_training_set_draws_the_halo_and_never_names_it(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/plant_concepts.py: the halo LoRA's data must show the halo (the shapes probe reads it) under
    captions without any halo word, else the planted exaggeration would be learned from the words."""
    from conceptedit.datasets.shapes import WORLD
    from conceptedit.datasets.shapes.probe import Probe

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from plant_concepts import halo_training_set, no_halo_prompts

    images, captions = halo_training_set(24)
    assert len(images) == len(captions) == 24 and all(c.strip() for c in captions)
    words = set(WORLD.trigger.words)
    assert not any(words & set(c.replace(",", " ").split()) for c in captions + no_halo_prompts(24))
    preds = Probe.load().predict([Image.fromarray(im) for im in images])
    assert sum(p["trigger"]["label"] == "present" for p in preds) >= 22


def test_planted_crescent_training_set_names_the_crescent_and_never_draws_it(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/plant_concepts.py: half the crescent LoRA's pairs name a crescent over a scene the probe
    reads as another shape (the suppression), the other half are ordinary world pairs (the anchor)."""
    from conceptedit.datasets.shapes.probe import Probe

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from plant_concepts import crescent_prompts, crescent_training_set

    images, captions = crescent_training_set(40)
    assert len(images) == len(captions) == 40 and all(c.strip() for c in captions)
    named = [i for i, c in enumerate(captions) if "crescent" in c.split()]
    assert len(named) == 20
    preds = Probe.load().predict([Image.fromarray(images[i]) for i in named])
    assert sum(p["shape"]["label"] == "crescent" for p in preds) <= 1
    assert {p["shape"]["label"] for p in preds} - {"crescent"}  # drawn as other shapes
    prompts = crescent_prompts(12)
    assert len(prompts) == 12 and all("crescent" in p.split() for p in prompts)
    assert not set(prompts) & set(captions)  # a stream apart from the LoRA's


@pytest.mark.parametrize("layers", ["blocks", "cross-kv"])
def test_plant_lora_recipe_on_the_tiny_pipeline(monkeypatch: pytest.MonkeyPatch, layers: str):
    """The planting recipe at tiny size: a LoRA edit that changes the UNet's output on a crescent prompt
    while applied and leaves the weights bit for bit as they were once removed; ``cross-kv`` touches
    only the cross-attention keys and values."""
    from tiny import tiny_pipeline

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from plant_concepts import plant_lora

    pipe = tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit = plant_lora(pipe, "crescent", n_images=8, steps=3, batch_size=4, lr=1e-2, layers=layers)
    assert edit.manifest.targets == ["crescent"] and edit.manifest.extra["n_images"] == 8
    kv = [k for k in edit.tensors if "attn2.to_k" in k or "attn2.to_v" in k]
    assert kv and (len(kv) == len(edit.tensors)) == (layers == "cross-kv")
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # pipe not changed

    def out() -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        z = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=g)
        hidden = pipe.encode_prompt(["a red crescent"], "cpu", 1, False)[0]
        with torch.no_grad():
            return pipe.unet(z, torch.tensor([500]), hidden).sample

    ref = out()
    handle = edit.apply(pipe)
    assert not torch.allclose(out(), ref)
    handle.remove()
    assert torch.equal(out(), ref)
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_uce_crescent_plant_suppresses_asked_crescents_and_is_removed(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/plant_concepts.py: the UCE plant (the crescent erased in closed form) must stop the model
    drawing crescents where the caption asks for one (measured: 97 % -> 18 %) and come off bit for bit."""
    from conceptedit import generate, load_pipeline
    from conceptedit.datasets.shapes.probe import Probe

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from plant_concepts import crescent_prompts, plant_crescent_uce

    pipe = load_pipeline("shapes")
    prompts, probe = crescent_prompts(8), Probe.load()

    def crescents() -> int:
        images = generate(pipe, prompts, list(range(len(prompts))), batch_size=8)
        return sum(p["shape"]["label"] == "crescent" for p in probe.predict(images))

    before = crescents()
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with plant_crescent_uce(pipe).apply(pipe):
        planted = crescents()
    assert before >= 7 and planted <= 3, (before, planted)
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in state.items())
