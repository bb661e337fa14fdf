"""The Erase tab's work: fit a plugin on the original model, then generate the same prompts and
seeds on the original model and with the stack applied."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from conceptedit.edits import Edit
from conceptedit.errors import ConceptEditError, RequestError
from conceptedit.plugin import Request
from conceptedit.toolkit import Progress, no_progress

from .inputs import parse_concepts, parse_prompts, parse_seeds
from .model import DemoModel, applied
from .plugins import make_plugin
from .stack import StackEntry

MAX_STEPS = 200
DISPLAY_MIN_SIDE = 192


def fit_erase(
    model: DemoModel,
    name: str,
    values: dict[str, Any],
    targets: str | Sequence[str],
    preserve: str | Sequence[str] | None = None,
    progress: Progress = no_progress,
    images: Sequence[str | Path] | None = None,
) -> Edit:
    """Fit plugin ``name`` on the original model (the stack is not applied while fitting).
    ``images``: image files of the concept, for few-shot methods."""
    plugin = make_plugin(name, values)
    request = Request(
        targets=parse_concepts(targets), preserve=parse_concepts(preserve), images=[Path(p) for p in images or []]
    )
    progress(0.0, f"fitting {name}")
    with model.lock:
        result = plugin.fit(model.pipe, request, progress=progress)
    if not isinstance(result, Edit):
        raise ConceptEditError(f"plugin {name!r} returned {type(result).__name__}, not an edit")
    progress(1.0, "done")
    return result


@dataclass
class Comparison:
    original: list[tuple[Image.Image, str]]
    edited: list[tuple[Image.Image, str]]
    settings: dict[str, Any]
    note: str = ""


def _settings(model: DemoModel, steps: Any, guidance: Any) -> dict[str, Any]:
    settings = model.settings
    if steps not in (None, ""):
        steps_int = int(float(steps))
        if not 1 <= steps_int <= MAX_STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {steps_int}")
        settings["num_inference_steps"] = steps_int
    if guidance not in (None, ""):
        settings["guidance_scale"] = float(guidance)
    return settings


def _generate(model: DemoModel, prompts: list[str], seeds: list[int], settings: dict, tick: Callable[[], None]):
    from conceptedit.generation import generate

    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        tick()
        return kwargs

    return generate(model.pipe, prompts, seeds, callback_on_step_end=on_step, **settings)


def compare(
    model: DemoModel,
    stack: Sequence[StackEntry],
    prompts: str | Sequence[str],
    seeds: str | Sequence[int] | int = "0",
    steps: Any = None,
    guidance: Any = None,
    progress: Progress = no_progress,
) -> Comparison:
    """Generate every (prompt, seed) on the original model, then with the stack applied, same seeds."""
    prompt_list, seed_list = parse_prompts(prompts), parse_seeds(seeds)
    settings = _settings(model, steps, guidance)
    pairs = [(p, s) for p in prompt_list for s in seed_list]
    all_prompts, all_seeds = [p for p, _ in pairs], [s for _, s in pairs]
    captions = [f"seed {s} · {p}" for p, s in pairs]
    runs = 2 if stack else 1
    batches = -(-len(pairs) // 8)
    total = max(1, runs * batches * int(settings.get("num_inference_steps", 50)))
    done = [0]

    def tick(phase: str) -> Callable[[], None]:
        def step() -> None:
            done[0] += 1
            progress(min(done[0] / total, 1.0), phase)

        return step

    with model.lock:
        progress(0.0, "original model")
        original = _generate(model, all_prompts, all_seeds, settings, tick("original model"))
        if stack:
            with applied(model, stack):
                edited = _generate(model, all_prompts, all_seeds, settings, tick("with the edits"))
    note = "" if stack else "The stack is empty, so there is nothing to compare: fit or load an edit first."
    return Comparison(
        original=list(zip(original, captions, strict=True)),
        edited=list(zip(edited, captions, strict=True)) if stack else [],
        settings=settings,
        note=note,
    )


def for_display(image: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """Small model outputs scaled up by a whole factor (nearest neighbour), so pixels stay sharp."""
    factor = max(1, -(-min_side // max(1, min(image.size))))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
