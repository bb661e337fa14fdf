"""v2 world additions: character nicknames and shape synonyms in captions and in the vocabulary."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.datasets.shapes import WORLD, prompt_for, render

_attach_subcommands()


def test_captions_name_characters_by_nickname_and_shapes_by_synonym_at_the_alias_rate():
    samples = [s for s in render(4000, seed=21) if s.caption]
    chars = [s for s in samples if s.labels["character"]]
    nick = [s for s in chars if WORLD.nicknames[s.labels["character"]] in s.caption.split()]
    assert all(s.labels["character"] not in s.caption.split() for s in nick)  # the nickname replaces the name
    assert 0.12 <= len(nick) / len(chars) <= 0.28, len(nick) / len(chars)
    syn_shapes = [s for s in samples if not s.labels["character"] and s.labels["shape"] in WORLD.synonyms]
    syn = [s for s in syn_shapes if WORLD.synonyms[s.labels["shape"]] in s.caption.split()]
    assert 0.12 <= len(syn) / len(syn_shapes) <= 0.28, len(syn) / len(syn_shapes)
    others = [s for s in samples if not s.labels["character"] and s.labels["shape"] not in WORLD.synonyms]
    assert not any(w in s.caption.split() for s in others for w in WORLD.synonyms.values())


def test_alias_label_keys_and_vocabulary():
    c = WORLD.characters[0]
    labels = {
        "shape": c.shape,
        "colour": c.colour,
        "style": c.style,
        "background": c.background,
        "character": c.name,
        "character_word": c.nickname,
        "trigger": False,
    }
    assert prompt_for(labels, "a picture of {np}") == f"a picture of {c.nickname}"
    shape = {
        "shape": "circle",
        "shape_word": "disc",
        "colour": "red",
        "style": "solid",
        "background": "white",
        "character": None,
        "trigger": False,
    }
    assert prompt_for(shape, "{np}", ("colour",)) == "a red disc"
    assert set(WORLD.nicknames.values()) <= set(WORLD.words()) and set(WORLD.synonyms.values()) <= set(WORLD.words())
    assert WORLD.aliases("zorblax") == (WORLD.nicknames["zorblax"],)
    assert set(WORLD.aliases("halo")) == set(WORLD.trigger.words) - {"halo"}
    assert WORLD.aliases("red") == ()
    d = json.loads(CliRunner().invoke(app, ["shapes", "world", "--json"]).stdout)
    assert d["nicknames"] == WORLD.nicknames and d["synonyms"] == WORLD.synonyms


def test_a_tokenizer_trained_on_the_world_makes_every_word_one_token():
    from conceptedit.pipelines.shapes_tokenizer import train_tokenizer

    tok = train_tokenizer(n_captions=3000, seed=5)  # raises if any world word is split
    for word in list(WORLD.nicknames.values()) + list(WORLD.synonyms.values()):
        assert len(tok.tokenize(word)) == 1, word
