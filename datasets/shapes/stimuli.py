"""Stimulus sentences for every concept of the shapes world (Concept Lancet's concept dictionary).

CoLan builds each concept's atom as the mean text embedding of ~30 sentences that contain the concept
while everything else varies, so the mean keeps the concept and averages the rest out. Here each
sentence is a training-distribution caption (``prompt_for`` with the world's train frames) whose
label for the concept's family is fixed and whose other attributes are drawn at random (seeded, so
the stimuli are the same on every machine). Format: ``{concept: [sentences]}``, the layout of
CoLan-150K and of ``plugins/_colan_core.load_stimuli``.
"""

from __future__ import annotations

import numpy as np

from conceptedit.datasets.shapes.captions import prompt_for
from conceptedit.datasets.shapes.world import WORLD, World

__all__ = ["STIMULUS_FAMILIES", "shapes_stimuli"]

#: families whose classes become concepts (the probe reads each of them)
STIMULUS_FAMILIES = ("shape", "colour", "background", "style", "character")


def shapes_stimuli(per_concept: int = 30, seed: int = 0, world: World = WORLD) -> dict[str, list[str]]:
    """``{concept: [sentences]}`` for every class of :data:`STIMULUS_FAMILIES` (``none`` excluded)."""
    rng = np.random.default_rng(seed)
    frames = world.train_templates
    out: dict[str, list[str]] = {}
    for family in STIMULUS_FAMILIES:
        for concept in world.classes(family):
            if concept == "none":
                continue
            sents: list[str] = []
            for i in range(per_concept):
                labels = {
                    "shape": str(rng.choice(world.classes("shape"))),
                    "colour": str(rng.choice(world.classes("colour"))),
                    "background": str(rng.choice(world.classes("background"))),
                    "style": str(rng.choice(world.classes("style"))),
                }
                if family == "character":
                    labels["character"] = concept
                else:
                    labels[family] = concept
                include = ("colour", "style", "background") if i % 2 else (family,) if family != "shape" else ()
                sents.append(prompt_for(labels, str(frames[i % len(frames)]), include=include, world=world))
            out[concept] = sents
    return out
