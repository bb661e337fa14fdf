"""Seeded, batched generation: the same (model, edits, prompt, seed, settings) gives the same image,
and base and edited pipelines share seeds so they compare pairwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from conceptedit.devices import generator_for
from conceptedit.loading import generation_defaults


def generation_settings(pipe: Any, **overrides: Any) -> dict[str, Any]:
    """The model's shipped defaults (if any), overridden by explicit non-None values."""
    settings = generation_defaults(pipe)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def generate(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int] | int = 0,
    *,
    batch_size: int = 8,
    negative_prompt: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair; each image has its own CPU generator seeded by its seed."""
    prompts = list(prompts)
    seed_list = [int(seeds)] * len(prompts) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seed_list) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seed_list)} seeds")
    kwargs = generation_settings(pipe, **settings)
    images: list[Image.Image] = []
    starts = range(0, len(prompts), max(1, batch_size))
    for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
        chunk = prompts[start : start + batch_size]
        gens = [generator_for(s) for s in seed_list[start : start + batch_size]]
        negative = None if negative_prompt is None else [negative_prompt] * len(chunk)
        out = pipe(prompt=chunk, negative_prompt=negative, generator=gens, output_type="pil", **kwargs)
        images.extend(out.images)
    return images
