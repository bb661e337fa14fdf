"""The shapes world's word list for the ``paraphrase`` attack: each concept's aliases (a character's
nickname, a shape's synonym, the halo's other trigger words) and the held-out caption frames the model
never saw in training. Registered as the word list ``shapes`` through the ``conceptedit.word_lists`` entry
point (``conceptedit.registry.BUILT_IN_ENTRY_POINTS``), as another package's list would be."""

from __future__ import annotations

from conceptedit.plugins.paraphrase import WordList


def word_list(concept: str) -> WordList | None:
    """The world's aliases and held-out frames for ``concept``; ``None`` when the world lacks it."""
    from conceptedit.datasets.shapes import WORLD

    word = " ".join(concept.lower().split())
    if word not in WORLD.words() and word != WORLD.trigger.name:
        return None
    aliases = tuple(a for a in WORLD.aliases(word) if a != word)
    frames = tuple(t.replace("{np}", "{}") for t in WORLD.heldout_templates)
    return WordList(concept=word, aliases=aliases, frames=frames)
