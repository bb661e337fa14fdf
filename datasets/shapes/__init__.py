"""The shapes world: a seeded procedural generator of 64×64 images with full ground truth.

>>> from conceptedit.datasets.shapes import render, render_batch, WORLD, prompt_for
>>> samples = render(8, seed=0)            # list[Sample]: .image (uint8 H×W×3), .labels, .caption
>>> images, labels, captions = render_batch(64, seed=1)

Sample ``i`` of seed ``s`` depends only on ``(s, i)``: ``render(n, s)[i]`` is the same for every
``n >= i + 1``, so streams can be cut and resumed. Images are drawn on the fly (thousands per second)
and never stored in git.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from conceptedit.datasets.shapes.captions import ATTRIBUTES, mentioned, noun_phrase, prompt_for
from conceptedit.datasets.shapes.draw import draw, mark_box, shape_mask
from conceptedit.datasets.shapes.world import WORLD, World

__all__ = [
    "WORLD", "World", "Sample", "sample_labels", "render", "render_batch", "render_labels", "prompt_for",
    "noun_phrase", "mentioned", "caption_for", "shape_mask", "ATTRIBUTES", "balanced_world",
]  # fmt: skip


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (H, W, 3) uint8
    labels: dict
    caption: str

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


def sample_labels(rng: np.random.Generator, world: World = WORLD) -> dict:
    """Draw one label set (the ground truth of one image) from the world's distribution."""
    character = None
    if rng.random() < world.character_rate:
        c = world.characters[int(rng.integers(len(world.characters)))]
        character, shape, colour, style, background = c.name, c.shape, c.colour, c.style, c.background
    else:
        while True:
            if rng.random() < world.rare_shape_rate:
                shape = world.rare_shape
            else:
                shape = world.shapes[int(rng.integers(len(world.shapes)))]
            colour = world.colour_names[int(rng.integers(len(world.colours)))]
            style = world.styles[int(rng.integers(len(world.styles)))]
            background = world.background_names[int(rng.integers(len(world.backgrounds)))]
            if (shape, colour) == world.rare_combination and rng.random() >= world.rare_combination_keep:
                continue
            if world.character_for(shape, colour, style, background) is not None:
                continue  # a character's look occurs only with its name
            break
    trigger = bool(rng.random() < world.trigger.rate)
    trigger_word = world.trigger.words[int(rng.integers(len(world.trigger.words)))] if trigger else None
    corners = list(world.corners)
    order = rng.permutation(len(corners))
    marks = {}
    for k, m in enumerate(world.marks):
        present = bool(rng.random() < m.rate)
        corner = corners[int(order[k])] if present else None
        marks[m.name] = {
            "present": present,
            "corner": corner,
            "box": list(mark_box(world, m.name, corner)) if present else None,
        }
    s = world.image_size
    radius = float(rng.uniform(12.0, 15.0))
    center = [float(s / 2 + rng.integers(-3, 4)), float(s / 2 + rng.integers(-3, 4))]
    return {
        "shape": shape,
        "colour": colour,
        "background": background,
        "style": style,
        "character": character,
        "trigger": trigger,
        "trigger_word": trigger_word,
        "marks": marks,
        "center": center,
        "radius": radius,
        "phase": int(rng.integers(0, 12)),
        "rare_shape": shape == world.rare_shape,
        "rare_combination": (shape, colour) == world.rare_combination,
    }


def caption_for(labels: dict, rng: np.random.Generator, world: World = WORLD) -> tuple[str, str | None]:
    """A training caption (train or web frames, never held-out ones); attributes are left out at ``world.omit_rate``,
    ``world.alias_rate`` of characters / synonym-bearing shapes are named by their nickname / synonym,
    ``world.background_with_rate`` of backgrounds read "with …", ``world.with_frame_rate`` of captions use a
    frame with "with" before the object (``world.with_frames``), each present mark is named at
    ``world.mark_caption_rate``, and ``world.empty_caption_rate`` of captions are empty (classifier-free guidance)."""
    if rng.random() < world.empty_caption_rate:
        return "", None
    include = ["trigger"] + [a for a in ("colour", "style", "background") if rng.random() >= world.omit_rate]
    frames = world.web_frames if world.web_frames and rng.random() < world.web_caption_rate else world.train_templates
    template = frames[int(rng.integers(len(frames)))]
    # drawn only when the rate is set, so the captions of a world without it stay bit for bit the same
    if world.with_frame_rate and world.with_frames and rng.random() < world.with_frame_rate:
        template = world.with_frames[int(rng.integers(len(world.with_frames)))]
    alias = rng.random() < world.alias_rate  # nickname / synonym instead of the name
    if alias and labels.get("character"):
        labels = labels | {"character_word": world.nicknames[labels["character"]]}
    elif alias and labels["shape"] in world.synonyms:
        labels = labels | {"shape_word": world.synonyms[labels["shape"]]}
    # drawn only when the rate is set, so the captions of a world without them stay bit for bit the same
    if world.background_with_rate and rng.random() < world.background_with_rate:
        labels = labels | {"background_with": True}
    if world.mark_caption_rate:
        present = [m.name for m in world.marks if labels.get("marks", {}).get(m.name, {}).get("present")]
        named = [m for m in present if rng.random() < world.mark_caption_rate]
        if named:
            labels = labels | {"named_marks": named}
    return prompt_for(labels, template, include, world=world), template


def render_labels(labels: dict, seed: int = 0, index: int = 0, world: World = WORLD) -> np.ndarray:
    """Draw the image of a given label set (e.g. edited labels for a counterfactual)."""
    return draw(labels, _rng(seed, index, 2), world)


def render(n: int, seed: int = 0, start: int = 0, world: World = WORLD) -> list[Sample]:
    """``n`` samples ``start … start+n-1`` of stream ``seed``: image, labels, caption."""
    out = []
    for i in range(start, start + n):
        labels = sample_labels(_rng(seed, i, 0), world)
        caption, template = caption_for(labels, _rng(seed, i, 1), world)
        labels["caption_template"] = template
        image = draw(labels, _rng(seed, i, 2), world)
        out.append(Sample(image, labels, caption))
    return out


def render_batch(
    n: int, seed: int = 0, start: int = 0, world: World = WORLD
) -> tuple[np.ndarray, list[dict], list[str]]:
    """Like :func:`render`, stacked: ``(uint8 array (n, H, W, 3), labels, captions)``."""
    samples = render(n, seed, start, world)
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, 64, 64, 3), np.uint8)
    return images, [s.labels for s in samples], [s.caption for s in samples]


def balanced_world(world: World = WORLD) -> World:
    """The same world with rare things made common (to train and test the probe on every class)."""
    return replace(
        world,
        rare_shape_rate=1.0 / (len(world.shapes) + 1),
        rare_combination_keep=1.0,
        character_rate=0.3,
        trigger=replace(world.trigger, rate=0.5),
        marks=tuple(replace(m, rate=0.5) for m in world.marks),
    )
