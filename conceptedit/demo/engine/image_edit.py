"""The Edit-an-image tab's work: run an ``edit`` plugin on one image (generated from the source
prompt when none is uploaded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from conceptedit.errors import ConceptEditError, RequestError
from conceptedit.plugin import Request
from conceptedit.toolkit import Progress, no_progress

from .inputs import parse_concepts, parse_seeds
from .model import DemoModel
from .plugins import make_plugin


def _images_of(result: Any) -> list[Image.Image]:
    import numpy as np

    if isinstance(result, Image.Image):
        return [result]
    if hasattr(result, "images"):
        return _images_of(result.images)
    if isinstance(result, dict) and "image" in result:
        return _images_of(result["image"])
    if isinstance(result, np.ndarray):
        array = result if result.dtype == np.uint8 else (np.clip(result, 0, 1) * 255).round().astype(np.uint8)
        return [Image.fromarray(a) for a in (array if array.ndim == 4 else [array])]
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, Image.Image) for r in result):
        return list(result)
    raise ConceptEditError(f"the plugin returned {type(result).__name__}, not an image")


#: characters of the longest bar in the concept-weight table
BAR_WIDTH = 24


def concept_weights(result: Any) -> list[list[Any]]:
    """The decomposition an edit plugin returned (colan: the source prompt's concept weights), as table
    rows ``[concept, weight, bar]`` by decreasing |weight|; the bar's length is |weight| relative to the
    largest, ``-`` marks a negative weight. Empty when the plugin returned none."""
    weights = result.get("weights") if isinstance(result, dict) else None
    if not weights:
        return []
    items = sorted(((str(k), float(v)) for k, v in weights.items()), key=lambda kv: -abs(kv[1]))
    top = max(abs(v) for _, v in items) or 1.0
    return [[k, round(v, 4), ("-" if v < 0 else "") + "█" * max(1, round(BAR_WIDTH * abs(v) / top))] for k, v in items]


def edit_image(
    model: DemoModel,
    name: str,
    values: dict[str, Any],
    image: Image.Image | None,
    source_prompt: str,
    target_prompt: str,
    concepts: str | Sequence[str] | None = None,
    seed: Any = 0,
    progress: Progress = no_progress,
) -> tuple[Image.Image, list[Image.Image]]:
    """Run an ``edit`` plugin; without an uploaded image, the source prompt is generated first."""
    source, outputs, _ = edit_image_with_weights(
        model, name, values, image, source_prompt, target_prompt, concepts, seed, progress
    )
    return source, outputs


def edit_image_with_weights(
    model: DemoModel,
    name: str,
    values: dict[str, Any],
    image: Image.Image | None,
    source_prompt: str,
    target_prompt: str,
    concepts: str | Sequence[str] | None = None,
    seed: Any = 0,
    progress: Progress = no_progress,
) -> tuple[Image.Image, list[Image.Image], list[list[Any]]]:
    """:func:`edit_image` plus the concept weights of the decomposition (:func:`concept_weights`)."""
    plugin = make_plugin(name, values)
    source_prompt, target_prompt = (source_prompt or "").strip(), (target_prompt or "").strip()
    if not source_prompt or not target_prompt:
        raise RequestError("give both a source prompt (what the image shows) and a target prompt (what it should)")
    seed_int = parse_seeds(seed, limit=1)[0]
    targets = parse_concepts(concepts) or [target_prompt]
    with model.lock:
        if image is None:
            from conceptedit.generation import generate

            progress(0.0, "generating the source image")
            image = generate(model.pipe, [source_prompt], [seed_int], **model.settings)[0]
        image = image.convert("RGB")
        extra = {"image": image, "source_prompt": source_prompt, "target_prompt": target_prompt, "seed": seed_int}
        request = Request(targets=targets, extra=extra)
        result = plugin.fit(model.pipe, request, progress=progress)
    progress(1.0, "done")
    return image, _images_of(result), concept_weights(result)
