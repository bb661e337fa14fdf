"""The shapes world's mark detector: watermark / QR / glyph text → presence, box and score.

Registered as the detector ``shapes`` (entry-point group ``conceptedit.detectors``, declared in
``registry.BUILT_IN_ENTRY_POINTS``), so Geom-Erasing finds it by name without the core importing the
world. It is built from the shipped probe, which was trained on renders with their ground truth and
reads each mark as ``absent`` or the corner it sits in: presence is ``P(absent) < 0.5``, the score
``1 − P(absent)``, and the box is the world's own box of that mark at that corner
(:func:`~conceptedit.datasets.shapes.draw.mark_box`), in fractions of the image side. The world stamps
every mark at a fixed size at one of four corners, so the corner fixes the box exactly; box IoU on
held-out renders (``benchmarks/geom_erasing.py``) therefore measures how often the corner is right, and
a learnt box regressor would have nothing more to find.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conceptedit.datasets.shapes.draw import mark_box
from conceptedit.datasets.shapes.world import WORLD
from conceptedit.detectors import Box, Detection


def ground_truth_boxes(labels: dict) -> dict[str, Box | None]:
    """A render's marks as detector boxes (fractions of the side), ``None`` where a mark is absent."""
    side = float(WORLD.image_size)
    return {
        name: tuple(v / side for v in mark["box"]) if mark["present"] else None  # type: ignore[misc]
        for name, mark in labels["marks"].items()
    }


class ShapesMarkDetector:
    """Finds the world's implicit marks with the shipped probe (see the module docstring)."""

    concepts: tuple[str, ...] = WORLD.mark_names
    world = "conceptedit.datasets.shapes"  # the model world it belongs to (``detector: auto`` matches it)
    #: the words the world's captions name each mark with (", with a watermark"): Geom-Erasing's concept names
    phrases: dict[str, str] = {m.name: f"with {m.caption_phrase}" for m in WORLD.marks}  # noqa: RUF012

    def __init__(self, probe_path: str | None = None) -> None:
        from conceptedit.datasets.shapes.probe import Probe

        self.probe = Probe.load(probe_path)
        side = float(WORLD.image_size)
        self.boxes = {
            (m, c): tuple(v / side for v in mark_box(WORLD, m, c)) for m in self.concepts for c in WORLD.corners
        }

    def detect(self, images: Sequence[Any]) -> list[dict[str, Detection]]:
        if not images:
            return []
        predictions = self.probe.predict(list(images))
        out = []
        for pred in predictions:
            row = {}
            for mark in self.concepts:
                probs = pred[mark]["probs"]
                score = 1.0 - probs["absent"]
                corner = max(WORLD.corners, key=lambda c: probs[c])
                present = probs["absent"] < 0.5
                row[mark] = Detection(present, float(score), self.boxes[(mark, corner)] if present else None)
            out.append(row)
        return out
