"""Real images of the shapes world for the blind-spot analysis: renders, their captions and labels.

Registered as the image set ``shapes`` (entry-point group ``conceptedit.image_sets``, declared in
``registry.BUILT_IN_ENTRY_POINTS``), so ``blindspots`` on the shapes model renders its own "training
data" without the core importing the world. Empty captions (the world's classifier-free-guidance
share) are skipped: an unconditional generation has no real counterpart to compare with.
"""

from __future__ import annotations

from PIL import Image

from conceptedit.datasets.shapes import WORLD, render

#: the world package this image set belongs to (matched against a model folder's ``world``)
world = "conceptedit.datasets.shapes"


def flat_labels(labels: dict) -> dict[str, str | bool]:
    """The ground truth as ``name → value`` pairs a concept can be correlated with."""
    out: dict[str, str | bool] = {k: labels[k] for k in ("shape", "colour", "background", "style")}
    out["character"] = labels["character"] or "none"
    out["halo"] = bool(labels["trigger"])
    for name, mark in labels["marks"].items():
        out[name] = bool(mark["present"])
    return out


def real_images(n: int, seed: int = 0) -> tuple[list[Image.Image], list[str], list[dict[str, str | bool]]]:
    """``n`` rendered images with non-empty captions: (images, captions, flat labels)."""
    images, captions, labels = [], [], []
    start = 0
    while len(images) < n:
        batch = render(max(16, n - len(images)), seed=seed, start=start, world=WORLD)
        start += len(batch)
        for s in batch:
            if s.caption.strip() and len(images) < n:
                images.append(s.pil())
                captions.append(s.caption)
                labels.append(flat_labels(s.labels))
    return images, captions, labels


real_images.world = world  # type: ignore[attr-defined]
