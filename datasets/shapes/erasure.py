"""Erasure scores on the shapes world for the benchmarks: images scored with the same probe metric
(:class:`~conceptedit.datasets.shapes.probe_metric.ProbeAccuracy`) as ``conceptedit eval``, without a
config file or a store."""

from __future__ import annotations

from typing import Any

from PIL import Image

from conceptedit.datasets.shapes import WORLD
from conceptedit.datasets.shapes.probe_metric import ProbeAccuracy
from conceptedit.datasets.shapes.prompt_sets import concept_family
from conceptedit.eval.metrics import Group
from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.store import ImageRow


def chance_level(concept: str) -> float:
    """Accuracy of guessing uniformly over the concept's family (trigger/marks: detection rate of a coin)."""
    family, _ = concept_family(concept)
    return 1.0 / len(WORLD.classes(family)) if family not in ("trigger", *WORLD.mark_names) else 0.5


def score_images(
    metric: ProbeAccuracy, rows: list[PromptRow], seeds: list[int], images: list[Image.Image], edit_name: str
) -> dict[str, Any]:
    image_rows = [
        ImageRow("model", edit_name, "erasure", r.case_number, s, r.prompt, r.role, r.concept, r.labels, "", "", {})
        for r, s in zip(rows, seeds, strict=True)
    ]
    for row, score in zip(image_rows, metric.score_images(image_rows, images), strict=True):
        row.per_image[metric.name] = score
    group = Group("model", edit_name, "erasure", image_rows, {}, lambda p: Image.new("RGB", (1, 1)))
    return {k.removeprefix("probe."): v.value for k, v in metric.compute(group).items()}
