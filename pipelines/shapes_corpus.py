"""The shapes model's prompt corpus: training-distribution captions shipped next to the weights
(``prompts.txt``, registered in ``conceptedit.json`` → ``files.prompt_corpus``).

Plugins that learn from a model's text distribution read it through ``loading.model_file`` — ItD
trains its SAE on it and draws its retain prompts from it — the way a user would point them at a
caption set (LAION/COCO captions) for a real checkpoint.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from conceptedit.datasets.shapes import caption_for, sample_labels

CORPUS_FILE = "prompts.txt"


def captioned_labels(seed: int = 7) -> Iterator[tuple[dict, str]]:
    """The world's caption stream ``seed``, endless: (labels, caption) of each non-empty training caption."""
    for i in itertools.count():
        labels = sample_labels(np.random.default_rng([seed, i, 0]))
        caption, _ = caption_for(labels, np.random.default_rng([seed, i, 1]))
        if caption:
            yield labels, caption


def corpus(n: int = 10_000, seed: int = 7) -> list[str]:
    """``n`` non-empty training captions (train sentence frames only; held-out frames stay unseen)."""
    return [caption for _, caption in itertools.islice(captioned_labels(seed), n)]


def write_corpus(model_folder: str | Path, n: int = 10_000, seed: int = 7) -> Path:
    """Write ``prompts.txt`` and register it in the folder's ``conceptedit.json``."""
    folder = Path(model_folder)
    path = folder / CORPUS_FILE
    path.write_text("\n".join(corpus(n, seed)) + "\n", encoding="utf-8")
    settings_file = folder / "conceptedit.json"
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    settings.setdefault("files", {})["prompt_corpus"] = CORPUS_FILE
    settings_file.write_text(json.dumps(settings, indent=2) + "\n")
    return path
