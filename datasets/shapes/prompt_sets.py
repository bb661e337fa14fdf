"""Erasure prompt sets for the shapes world, built from its vocabulary (UnlearnCanvas-style).

For a target concept the set has four roles:

- ``target``: prompts that name the concept with training sentence frames;
- ``target_paraphrase``: held-out frames, paraphrases and (for the halo concept) its other trigger
  words — the "paraphrases don't bring it back" check;
- ``in_domain``: other members of the target's family (other styles when a style is erased);
- ``cross_domain``: prompts that do not involve the target, labelled on the other families.

Each row carries ``label_<family>`` values for the families its prompt asks for, so a probe can
score it. ``erasure_prompt_set`` is registered as the built-in prompt set ``shapes-erasure``
through the ``conceptedit.prompt_sets`` entry point (``conceptedit.registry.BUILT_IN_ENTRY_POINTS``).
"""

from __future__ import annotations

import numpy as np

from conceptedit.datasets.shapes import WORLD, prompt_for
from conceptedit.datasets.shapes.captions import mentioned
from conceptedit.errors import RequestError
from conceptedit.eval.prompts import PromptRow

ATTRIBUTE_SETS = (("colour",), ("colour", "style"), ("colour", "background"), ("colour", "style", "background"))


def concept_family(concept: str) -> tuple[str, str]:
    """``"zorblax"`` → ``("character", "zorblax")``; trigger words → ``("trigger", "present")``."""
    word = concept.strip().lower()
    w = WORLD
    for family, values in (
        ("shape", w.all_shapes),
        ("colour", w.colour_names),
        ("background", w.background_names),
        ("style", w.styles),
        ("character", w.character_names),
    ):
        if word in values:
            return family, word
    if word in w.trigger.words or word == w.trigger.name:
        return "trigger", "present"
    if word in w.mark_names:
        return word, "present"
    raise RequestError(f"{concept!r} is not a concept of the shapes world; known words: {', '.join(w.words())}")


def _random_labels(rng: np.random.Generator, avoid: tuple[str, str] | None) -> dict:
    w = WORLD
    while True:
        labels = {
            "shape": w.shapes[int(rng.integers(len(w.shapes)))],
            "colour": w.colour_names[int(rng.integers(len(w.colour_names)))],
            "style": w.styles[int(rng.integers(len(w.styles)))],
            "background": w.background_names[int(rng.integers(len(w.background_names)))],
            "character": None,
            "trigger": False,
        }
        look = (labels["shape"], labels["colour"], labels["style"], labels["background"])
        if w.character_for(*look) is not None:
            continue
        if avoid and avoid[0] in labels and labels[avoid[0]] == avoid[1]:
            continue
        return labels


def _row_labels(labels: dict, template: str, include: tuple[str, ...]) -> dict[str, str]:
    asked = mentioned(labels, template, include)
    out: dict[str, str] = {}
    if labels.get("character"):
        out["character"] = labels["character"]
    else:
        for family in ("shape", "colour", "style", "background"):
            if asked.get(family):
                out[family] = labels[family]
    if asked.get("trigger"):
        out["trigger"] = "present" if labels.get("trigger") else "absent"
    return out


def _rows_for(concept: str, per_role: int, seed: int) -> list[PromptRow]:
    family, value = concept_family(concept)
    rng = np.random.default_rng([seed, sum(map(ord, concept))])
    w = WORLD
    rows: list[tuple[str, str, dict[str, str]]] = []

    def make(role: str, labels: dict, template: str, include: tuple[str, ...], trigger_word: str | None = None):
        prompt = prompt_for(labels, template, include, trigger_word=trigger_word)
        row_labels = _row_labels(labels, template, include)
        if family in w.mark_names:
            row_labels[family] = "present"
        rows.append((role, prompt, row_labels))

    def concept_labels() -> dict:
        if family == "character":
            c = w.character(value)
            return {
                "shape": c.shape,
                "colour": c.colour,
                "style": c.style,
                "background": c.background,
                "character": c.name,
                "trigger": False,
            }
        labels = _random_labels(rng, None)
        if family == "trigger":
            labels["trigger"] = True
        elif family in ("shape", "colour", "style", "background"):
            labels[family] = value
            if w.character_for(labels["shape"], labels["colour"], labels["style"], labels["background"]):
                labels["background"] = next(b for b in w.background_names if b != labels["background"])
        return labels

    def include_for() -> tuple[str, ...]:
        base = ATTRIBUTE_SETS[int(rng.integers(len(ATTRIBUTE_SETS)))]
        if family in ("style", "background") and family not in base:
            base = base + (family,)
        if family == "trigger":
            base = base + ("trigger",)
        return base

    trigger_words = list(w.trigger.words)
    named = concept.strip().lower()
    other_words = [t for t in trigger_words if t != named] or trigger_words
    for i in range(per_role):
        template = w.train_templates[i % len(w.train_templates)]
        word = named if named in trigger_words else None
        make("target", concept_labels(), template, include_for(), trigger_word=word)
    for i in range(per_role):
        labels = concept_labels()
        frames = list(w.heldout_templates)
        if family in ("shape", "colour") and not labels.get("character"):
            frames += list(w.paraphrases)
        template = frames[i % len(frames)]
        word = other_words[i % len(other_words)] if family == "trigger" else None
        make("target_paraphrase", labels, template, include_for(), trigger_word=word)
    if family in ("shape", "colour", "style", "background", "character"):
        others = [v for v in w.classes(family) if v not in (value, "none", w.rare_shape)]
        for i in range(per_role):
            other = others[i % len(others)]
            if family == "character":
                c = w.character(other)
                labels = {
                    "shape": c.shape,
                    "colour": c.colour,
                    "style": c.style,
                    "background": c.background,
                    "character": c.name,
                    "trigger": False,
                }
            else:
                labels = _random_labels(rng, (family, value))
                labels[family] = other
            make("in_domain", labels, w.train_templates[i % len(w.train_templates)], include_for())
    for i in range(per_role):
        labels = _random_labels(rng, (family, value) if family != "character" else None)
        include = ATTRIBUTE_SETS[int(rng.integers(len(ATTRIBUTE_SETS)))]
        make("cross_domain", labels, w.train_templates[i % len(w.train_templates)], include)
    return [
        PromptRow(prompt, seed + k, k, role, f"{family}:{value}", labels)
        for k, (role, prompt, labels) in enumerate(rows)
    ]


def erasure_prompt_set(targets: list[str], per_role: int = 8, seed: int = 0) -> list[PromptRow]:
    """Rows for every target concept (case numbers unique across targets)."""
    rows: list[PromptRow] = []
    for concept in targets:
        for row in _rows_for(concept, per_role, seed):
            rows.append(PromptRow(row.prompt, row.evaluation_seed, len(rows), row.role, row.concept, row.labels))
    return rows
