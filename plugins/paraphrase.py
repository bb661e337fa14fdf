"""``paraphrase``: the concept named otherwise — synonyms, nicknames, trigger words — in sentence frames
the model was not fitted on. The first thing a user tries, and the check behind "paraphrases don't
bring it back" (UnlearnCanvas-style robustness; Ring-A-Bell and UnlearnDiffAtk both report it as the
no-optimisation baseline).

Words come from a word list: a CSV the user gives (``word_list: path.csv``; columns ``concept, text,
kind`` with kind ``alias`` or ``frame``, frames hold ``{}`` where the concept goes) or a registered list
(``WORD_LISTS``: name → function returning a :class:`WordList` for a concept, or ``None``; other
packages add theirs through the ``conceptedit.word_lists`` entry point, the shapes world included).
``auto`` uses the first registered list that knows the concept.
Every prompt is ``frame.format(word)`` for a word among the concept and its aliases (aliases first)
and a frame of the list; nothing else is added. Black-box: reads no weights.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptedit.attack import AttackPlugin, AttackPrompt, AttackSet
from conceptedit.errors import ConfigError, RequestError
from conceptedit.registry import Registry, register_plugin
from conceptedit.toolkit import Progress, no_progress


def _word_list_from_entry_point(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"entry point {name!r} must point at a function (concept) -> WordList | None")
    WORD_LISTS.register(name, obj)


#: registered word lists: name -> function(concept) -> WordList | None (entry-point group conceptedit.word_lists)
WORD_LISTS: Registry[Callable[[str], WordList | None]] = Registry(
    "word list", group="conceptedit.word_lists", load=_word_list_from_entry_point
)

#: frames used when a list gives aliases but no frames (textual-inversion-style object templates)
DEFAULT_FRAMES = ("a photo of {}", "a picture of {}", "an image of {}", "a rendering of {}", "a close-up of {}")


@dataclass(frozen=True)
class WordList:
    concept: str
    aliases: tuple[str, ...] = ()
    frames: tuple[str, ...] = ()


@dataclass
class ParaphraseConfig:
    word_list: str = field(default="auto", metadata={"help": "a registered word list, a CSV path, or auto"})
    n_prompts: int = field(default=16, metadata={"help": "attack prompts to return (0: every alias × frame)"})
    aliases_only: bool = field(default=False, metadata={"help": "leave out the concept's own word"})

    def __post_init__(self) -> None:
        if not isinstance(self.n_prompts, int) or self.n_prompts < 0:
            raise ValueError("n_prompts must be an integer >= 0")
        if not self.word_list.strip():
            raise ValueError("word_list must name a registered list, a CSV path, or be 'auto'")


def read_word_csv(path: str | Path, concept: str) -> WordList:
    """A user's word list: rows ``concept, text, kind`` (kind ``alias`` or ``frame``) for ``concept``."""
    from conceptedit.eval.prompts import read_csv_rows

    aliases, frames = [], []
    for line, row in read_csv_rows(path, required="text"):
        kind = (row.get("kind") or "").strip().lower()
        text = " ".join((row.get("text") or "").split())
        if kind not in ("alias", "frame") or not text:
            raise ConfigError(f"{path}:{line}: kind must be 'alias' or 'frame' and text non-empty, got {kind!r}")
        if kind == "frame" and text.count("{}") != 1:
            raise ConfigError(f"{path}:{line}: a frame holds '{{}}' exactly once where the concept goes: {text!r}")
        if (row.get("concept") or "").strip().lower() not in ("", concept.lower()):
            continue
        (aliases if kind == "alias" else frames).append(text)
    return WordList(concept, tuple(dict.fromkeys(aliases)), tuple(dict.fromkeys(frames)))


def _registered(name: str) -> Callable[[str], WordList | None]:
    return WORD_LISTS[name]


def find_word_list(source: str, concept: str) -> WordList:
    if source == "auto":
        for name in WORD_LISTS:
            found = _registered(name)(concept)
            if found is not None:
                return found
        raise RequestError(
            f"no registered word list knows {concept!r} ({', '.join(WORD_LISTS)}); give word_list: a CSV "
            "with columns concept, text, kind (alias | frame)"
        )
    if source in WORD_LISTS:
        found = _registered(source)(concept)
        if found is None:
            raise RequestError(f"word list {source!r} does not know the concept {concept!r}")
        return found
    if not Path(source).is_file():
        raise ConfigError(f"word_list {source!r} is neither a registered list ({', '.join(WORD_LISTS)}) nor a CSV file")
    return read_word_csv(source, concept)


def paraphrases(words: WordList, aliases_only: bool = False) -> list[str]:
    """Every ``frame.format(word)``: aliases first, then the concept's own word in the frames."""
    names = list(words.aliases) + ([] if aliases_only else [words.concept])
    frames = list(words.frames) or list(DEFAULT_FRAMES)
    return list(dict.fromkeys(frame.format(name) for name in names for frame in frames))


@register_plugin
class ParaphrasePlugin(AttackPlugin):
    name = "paraphrase"
    Config = ParaphraseConfig
    white_box = False
    summary = "The concept named otherwise (synonyms, nicknames, trigger words) in held-out sentence frames."
    paper = "UnlearnCanvas-style paraphrase robustness (Zhang et al. 2024); no-optimisation attack baseline"

    def attack(
        self,
        pipe: Any,
        concept: str,
        *,
        images: Sequence[Any] | None = None,
        prompts: Sequence[str] | None = None,
        seed: int = 0,
        judge: Any = None,
        progress: Progress = no_progress,
    ) -> AttackSet:
        start = time.perf_counter()
        words = find_word_list(self.config.word_list, concept)
        if self.config.aliases_only and not words.aliases:
            raise RequestError(f"the word list has no alias of {concept!r}; set aliases_only: false")
        texts = paraphrases(words, self.config.aliases_only)
        n_aliases = len(words.aliases) * max(1, len(words.frames) or len(DEFAULT_FRAMES))
        if self.config.n_prompts and len(texts) > self.config.n_prompts:
            # aliases first (the stronger attack), each part in a seeded order
            rng = random.Random(seed)
            head, tail = texts[:n_aliases], texts[n_aliases:]
            rng.shuffle(head)
            rng.shuffle(tail)
            texts = (head + tail)[: self.config.n_prompts]
        progress(1.0, "done")
        return self.result(concept, [AttackPrompt(t, seed + i) for i, t in enumerate(texts)], start)
