"""One-call erasure scores on the shapes world, for benchmarks and tests: the same prompt sets
(``shapes_prompts``) and the same probe metric (``metrics.ProbeAccuracy``) as ``conceptedit eval``,
without a config file or a store. Base and edited images share prompts and seeds."""

from __future__ import annotations

from typing import Any

from PIL import Image

from conceptedit.datasets.shapes import WORLD
from conceptedit.edits.base import Edit
from conceptedit.eval.metrics import BASE, Group, ProbeAccuracy
from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.shapes_prompts import concept_family, erasure_prompt_set
from conceptedit.eval.store import ImageRow
from conceptedit.generation import generate


def chance_level(concept: str) -> float:
    """Accuracy of guessing uniformly over the concept's family (trigger/marks: detection rate of a coin)."""
    family, _ = concept_family(concept)
    return 1.0 / len(WORLD.classes(family)) if family not in ("trigger", *WORLD.mark_names) else 0.5


def score_images(metric: ProbeAccuracy, rows: list[PromptRow], seeds: list[int], images: list[Image.Image],
                 edit_name: str) -> dict[str, Any]:  # fmt: skip
    image_rows = [
        ImageRow("model", edit_name, "erasure", r.case_number, s, r.prompt, r.role, r.concept, r.labels, "", "", {})
        for r, s in zip(rows, seeds, strict=True)
    ]
    for row, score in zip(image_rows, metric.score_images(image_rows, images), strict=True):
        row.per_image[metric.name] = score
    group = Group("model", edit_name, "erasure", image_rows, {}, lambda p: Image.new("RGB", (1, 1)))
    return {k.removeprefix("probe."): v.value for k, v in metric.compute(group).items()}


def erasure_scores(
    pipe: Any,
    concept: str,
    edit: Edit | None = None,
    *,
    per_role: int = 16,
    seeds_per_prompt: int = 1,
    batch_size: int = 32,
    metric: ProbeAccuracy | None = None,
    return_images: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Probe accuracies before (and after applying ``edit``) on the concept's erasure prompt set:
    ``erased_accuracy``, ``erased_accuracy_paraphrase``, ``in_domain_retain``, ``cross_domain_retain``."""
    metric = metric or ProbeAccuracy()
    base_rows = erasure_prompt_set([concept], per_role)
    rows = [r for r in base_rows for _ in range(seeds_per_prompt)]
    seeds = [r.evaluation_seed + j for r in base_rows for j in range(seeds_per_prompt)]
    prompts = [r.prompt for r in rows]
    before_images = generate(pipe, prompts, seeds, batch_size=batch_size, **settings)
    out: dict[str, Any] = {"concept": concept, "chance": chance_level(concept), "n_images": len(rows)}
    out["before"] = score_images(metric, rows, seeds, before_images, BASE)
    if edit is not None:
        with edit.apply(pipe):
            after_images = generate(pipe, prompts, seeds, batch_size=batch_size, **settings)
        out["after"] = score_images(metric, rows, seeds, after_images, "edited")
    if return_images:
        out["images"] = {"prompts": prompts, "seeds": seeds, "roles": [r.role for r in rows],
                         "before": before_images, "after": after_images if edit is not None else None}  # fmt: skip
    return out
