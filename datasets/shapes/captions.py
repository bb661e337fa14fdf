"""Captions from labels: the train sentence frames, held-out frames and paraphrases."""

from __future__ import annotations

from collections.abc import Iterable

from conceptedit.datasets.shapes.world import WORLD, World

ATTRIBUTES = ("colour", "style", "background", "trigger")


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def noun_phrase(
    labels: dict, include: Iterable[str] = ATTRIBUTES, trigger_word: str | None = None, world: World = WORLD
) -> str:
    """ "a glowing red striped circle on a black background" with only the ``include``-d attributes.

    Characters are named ("zorblax", "glowing zorblax"); the shape is always named. The optional
    label keys ``character_word`` / ``shape_word`` name them by a nickname or synonym instead. ``trigger_word``
    picks the synonym used when the trigger is present (default: the first adjective). The optional
    ``background_with`` writes "with a black background" instead of "on …", and ``named_marks`` (mark
    names) appends ", with a watermark and a qr code".
    """
    include = set(include)
    trig = None
    if labels.get("trigger") and "trigger" in include:
        trig = trigger_word or labels.get("trigger_word") or world.trigger.adjectives[0]
    adjective = trig if trig in world.trigger.adjectives else None
    noun = trig if trig in world.trigger.nouns else None
    if labels.get("character"):
        words = ([adjective] if adjective else []) + [labels.get("character_word") or labels["character"]]
        phrase = " ".join(words)
    else:
        words = [adjective] if adjective else []
        if "colour" in include:
            words.append(labels["colour"])
        if "style" in include:
            words.append(labels["style"])
        words.append(labels.get("shape_word") or labels["shape"])
        phrase = f"{article(words[0])} {' '.join(words)}"
        if "background" in include:
            preposition = "with" if labels.get("background_with") else "on"
            phrase += f" {preposition} {article(labels['background'])} {labels['background']} background"
    if noun:
        phrase += f" with {article(noun)} {noun}"
    if labels.get("named_marks"):
        phrases = {m.name: m.caption_phrase for m in world.marks}
        phrase += ", with " + " and ".join(phrases[m] for m in labels["named_marks"])
    return phrase


def prompt_for(
    labels: dict,
    template: str = "{np}",
    include: Iterable[str] = ATTRIBUTES,
    trigger_word: str | None = None,
    world: World = WORLD,
) -> str:
    """A prompt asking for ``labels``. ``template`` is a frame with ``{np}`` (see
    ``WORLD.train_templates`` / ``WORLD.heldout_templates``) or a paraphrase with ``{shape}`` and
    ``{colour}`` (``WORLD.paraphrases``; these name only the shape and the colour)."""
    if "{np}" in template:
        return template.format(np=noun_phrase(labels, include, trigger_word, world))
    if "{shape}" in template:
        if labels.get("character"):
            raise ValueError("paraphrase templates describe generic shapes, not characters")
        return template.format(shape=labels["shape"], colour=labels["colour"])
    raise ValueError(f"template {template!r} has neither {{np}} nor {{shape}}")


def mentioned(labels: dict, template: str, include: Iterable[str] = ATTRIBUTES) -> dict[str, bool]:
    """Which families a prompt built by :func:`prompt_for` asks for (so benchmarks score only those)."""
    include = set(include)
    if labels.get("character"):
        return {
            "character": True, "shape": True, "colour": True, "style": True, "background": True,
            "trigger": "trigger" in include,
        }  # fmt: skip
    if "{shape}" in template:
        return {"character": True, "shape": True, "colour": True, "style": False, "background": False,
                "trigger": False}  # fmt: skip
    return {
        "character": True, "shape": True, "colour": "colour" in include, "style": "style" in include,
        "background": "background" in include, "trigger": "trigger" in include,
    }  # fmt: skip
