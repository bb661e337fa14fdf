"""Image-edit cases of the shapes world: rendered images with known labels and masks, one edit each.

Used by ``conceptedit eval``'s ``image_edits:`` section (case set ``shapes``) and by
``benchmarks/colan_edits.py``. Each case is a rendered world image (no character, trigger or mark)
downsampled to the model's 32×32, and one edit of its shape, colour, style or background to another
class (the families cycle, so each is equally represented). The generator's masks give the region
outside both the source and the target shape (for background preservation) and the shape's silhouette
(for structure). :func:`read_correctly` drops the cases the probe misreads before the edit, so
"unchanged" is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conceptedit.datasets.shapes import WORLD, prompt_for, render_labels, shape_mask

__all__ = ["EDIT_FAMILIES", "EditCase", "make_cases", "read_correctly", "ShapesCaseSet"]

#: families an edit can change (the probe reads each)
EDIT_FAMILIES = ("shape", "colour", "style", "background")


@dataclass
class EditCase:
    """One edit of one image: ``family`` goes from ``source`` to ``target``."""

    labels: dict[str, Any]
    family: str
    source: str
    target: str
    image: np.ndarray  # (H, W, 3) uint8 at the model's size
    prompt: str
    target_prompt: str
    outside: np.ndarray  # (H, W) bool: away from both the source and the target shape
    silhouette: np.ndarray  # (H, W) bool: the (unchanged) shape, coverage >= 1/2
    background_rgb: tuple[int, int, int] = (0, 0, 0)  # the edited image's expected background colour
    extra: dict[str, Any] = field(default_factory=dict)  # shapes: the render's seed and index

    @property
    def target_labels(self) -> dict[str, Any]:
        return self.labels | {self.family: self.target}

    @property
    def edit(self) -> str:
        """The edit in colan's ``SRC -> TGT`` form."""
        return f"{self.source} -> {self.target}"


def _down(mask: np.ndarray) -> np.ndarray:
    """64×64 mask → 32×32 coverage."""
    return mask.reshape(32, 2, 32, 2).mean(axis=(1, 3))


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _labels(rng: np.random.Generator) -> dict:
    s = WORLD.image_size
    return {
        "shape": str(rng.choice(WORLD.shapes)),
        "colour": str(rng.choice(WORLD.colour_names)),
        "background": str(rng.choice(WORLD.background_names)),
        "style": str(rng.choice(WORLD.styles)),
        "character": None,
        "trigger": False,
        "trigger_word": None,
        "marks": {m.name: {"present": False, "corner": None, "box": None} for m in WORLD.marks},
        "center": [float(s / 2 + rng.integers(-3, 4)), float(s / 2 + rng.integers(-3, 4))],
        "radius": float(rng.uniform(12.0, 15.0)),
        "phase": int(rng.integers(0, 12)),
    }


def _is_character(lab: dict) -> bool:
    return WORLD.character_for(lab["shape"], lab["colour"], lab["style"], lab["background"]) is not None


def make_cases(n: int, seed: int, families: tuple[str, ...] = EDIT_FAMILIES) -> list[EditCase]:
    """``n`` edits, ``families`` in turn, from a seeded stream (the same on every machine)."""
    from conceptedit.pipelines.shapes import model_images

    rng = np.random.default_rng([seed, 16])
    classes = {"shape": WORLD.shapes, "colour": WORLD.colour_names, "style": WORLD.styles}
    cases: list[EditCase] = []
    while len(cases) < n:
        family = families[len(cases) % len(families)]
        lab = _labels(rng)
        options = [c for c in classes.get(family, WORLD.background_names) if c != lab[family]]
        target = str(rng.choice(options))
        if _is_character(lab) or _is_character(lab | {family: target}):
            continue
        image = model_images(render_labels(lab, seed, len(cases))[None])[0]
        (cx, cy), r = lab["center"], lab["radius"]
        src_mask = shape_mask(lab["shape"], cx, cy, r)
        tgt_mask = shape_mask(target if family == "shape" else lab["shape"], cx, cy, r)
        outside = ~_dilate(_down(src_mask | tgt_mask) > 0)
        bg = target if family == "background" else lab["background"]
        cases.append(
            EditCase(
                lab,
                family,
                lab[family],
                target,
                image,
                prompt_for(lab),
                prompt_for(lab | {family: target}),
                outside,
                _down(src_mask) >= 0.5,
                WORLD.rgb(bg),
                {"seed": seed, "index": len(cases)},
            )
        )
    return cases


def read_correctly(cases: list[EditCase], read: list[dict[str, str]]) -> list[bool]:
    """Per case: does the probe read the source image's labels (no character, trigger or mark)?"""
    out = []
    for c, b in zip(cases, read, strict=True):
        expect = {f: c.labels[f] for f in EDIT_FAMILIES} | {"character": "none", "trigger": "absent"}
        out.append(all(b[f] == v for f, v in expect.items()) and all(b[m.name] == "absent" for m in WORLD.marks))
    return out


class ShapesCaseSet:
    """The case set ``shapes``: cases, the probe as the reader, and the shapes CLIP's ``clip_tok`` distance."""

    name = "shapes"
    families = EDIT_FAMILIES

    def __init__(self) -> None:
        self._probe: Any = None
        self._dist: Any = None

    def cases(self, n: int, seed: int, families: tuple[str, ...]) -> list[EditCase]:
        return make_cases(n, seed, families)

    def read(self, images: np.ndarray) -> list[dict[str, str]]:
        """The probe's label per family for each image."""
        from conceptedit.datasets.shapes.probe import Probe
        from conceptedit.pipelines.shapes import model_dir

        if self._probe is None:
            self._probe = Probe.load(model_dir() / "probe")
        return [{f: p["label"] for f, p in pred.items()} for pred in self._probe.predict(images)]

    def keep(self, cases: list[EditCase], read: list[dict[str, str]]) -> list[bool]:
        return read_correctly(cases, read)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from conceptedit.eval.image_edits import ClipTokDistance
        from conceptedit.pipelines.shapes import model_dir

        if self._dist is None:
            self._dist = ClipTokDistance(model_dir() / "clip")
        return self._dist(a, b)
