"""The page's text inputs read strictly: concepts, prompts and seeds (with the demo's limits), and
the prompts suggested after a fit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from conceptedit.errors import RequestError

MAX_PROMPTS = 8
MAX_SEEDS = 4


def parse_concepts(text: str | Sequence[str] | None) -> list[str]:
    """Concepts from a comma- or newline-separated text."""
    if text is None:
        return []
    if not isinstance(text, str):
        text = ",".join(text)
    return [c.strip() for c in re.split(r"[,\n]", text) if c.strip()]


def parse_prompts(text: str | Sequence[str] | None, limit: int = MAX_PROMPTS) -> list[str]:
    """One prompt per line; blank lines are ignored."""
    lines = text.splitlines() if isinstance(text, str) else list(text or [])
    prompts = [" ".join(p.split()) for p in lines if p and p.strip()]
    if not prompts:
        raise RequestError("no prompts given; write one prompt per line")
    if len(prompts) > limit:
        raise RequestError(f"{len(prompts)} prompts given; the demo generates at most {limit} at once")
    return prompts


def parse_seeds(text: str | int | Sequence[int] | None, limit: int = MAX_SEEDS) -> list[int]:
    """Seeds from ``"0, 1, 2"`` (or a number); each prompt is generated once per seed."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return [0]
    if isinstance(text, (int, float)):
        items: list[Any] = [text]
    elif isinstance(text, str):
        items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    else:
        items = list(text)
    try:
        seeds = [int(str(s)) for s in items]
    except ValueError:
        raise RequestError(f"seeds must be whole numbers separated by commas, got {text!r}") from None
    if len(seeds) > limit:
        raise RequestError(f"{len(seeds)} seeds given; the demo uses at most {limit}")
    return seeds


PROMPT_TEMPLATES = ("a picture of {}", "a drawing of {}")


def default_prompts(targets: str | Sequence[str] | None, preserve: str | Sequence[str] | None = None) -> list[str]:
    """Prompts that show an erasure: the target in two frames, then each preserved concept."""
    target_list, preserve_list = parse_concepts(targets), parse_concepts(preserve)
    prompts = [t.format(c) for c in target_list[:2] for t in PROMPT_TEMPLATES]
    prompts += [PROMPT_TEMPLATES[0].format(c) for c in preserve_list[:2]]
    return prompts[:MAX_PROMPTS]
