"""RealEra's keyed sentences (``plugins/_realera_context.py``): where the concept sits against its anchor
sentence, the rows after it mapped onto the anchor sentence's (``keys: context``), and the corpus captions that
name it (``context_from_corpus``), on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_realera import FAST

from conceptedit.errors import ConfigError, RequestError
from conceptedit.plugin import Request
from conceptedit.plugins._realera_context import concept_span, corpus_contexts
from conceptedit.plugins.realera import CONTEXT_TEMPLATES
from conceptedit.registry import get_plugin


def anchor_gap(pipe, edit, keys: torch.Tensor, anchors: torch.Tensor) -> float:
    """How far the edited ``to_k``/``to_v`` put the rows ``keys`` from the anchor rows' old outputs, relative to
    the unedited distance (mean over the edited layers): 0 = mapped onto the anchor, 1 = unchanged."""
    out = []
    for key, delta in edit.delta.tensors.items():
        W = pipe.unet.get_parameter(key.removeprefix("unet.")).detach().double()
        target = anchors @ W.T
        out.append(float((keys @ (W + delta.detach().double()).T - target).norm() / (keys @ W.T - target).norm()))
    return float(np.mean(out))


def test_concept_span_finds_the_concept_and_the_anchor_rows(tiny_pipe):
    tok = tiny_pipe.tokenizer
    assert concept_span(tok, "cat", "") == (1, 1, 0)  # UCE: the word's row -> BOS of ""
    n_prefix = len(tok("a view of").input_ids) - 1  # BOS + the frame's tokens
    prefix, c_end, a_end = concept_span(tok, "a view of cat", "a view of")
    assert (prefix, a_end) == (n_prefix, n_prefix - 1) and c_end >= prefix  # "of" row is the anchor's
    prefix, c_end, a_end = concept_span(tok, "cat in the middle", "dog in the middle")
    assert prefix == 1 and c_end == a_end  # one word for another: row for row
    with pytest.raises(RequestError):
        concept_span(tok, "a view of", "a view of")


def test_context_keys_map_the_rows_after_the_concept_to_the_anchor_sentence(tiny_pipe):
    """In a sentence, CLIP carries the concept into every row after it (EOS and padding repeat it): with
    ``keys: context`` those rows of a template sentence map to the same rows of the sentence with the anchor
    substituted; keyed on the word's row alone (``keys: word``), they keep most of their old output."""
    from conceptedit.conditioning import conditioning

    prompt = " ".join(CONTEXT_TEMPLATES[2].format("cat").split())
    anchor = " ".join(CONTEXT_TEMPLATES[2].format("").split())
    _, c_end, a_end = concept_span(tiny_pipe.tokenizer, prompt, anchor)
    k = conditioning(tiny_pipe, [prompt]).embeds[0, c_end + 1 :].double()  # the rows after the word
    a = conditioning(tiny_pipe, [anchor]).embeds[0, a_end + 1 : a_end + 1 + len(k)].double()

    def gap(keys: str) -> float:
        cfg = dict(FAST, lora_steps=0, n_neighbours=0, n_beyond=0, keys=keys)
        return anchor_gap(tiny_pipe, get_plugin("realera")(cfg).fit(tiny_pipe, Request(targets=["cat"])), k, a)

    in_context, word_only = gap("context"), gap("word")
    assert in_context < 0.5 and word_only > 0.9, (in_context, word_only)  # measured: 0.33 and 1.31


def test_context_keys_fit_when_no_vocabulary_word_lies_beyond_the_neighbourhood(tiny_pipe):
    """Random-weight encoders (benchmarks/full_size.py) can leave no pool word outside the neighbourhood: the
    in-context fit then has no beyond-concept samples (it raised "stack expects a non-empty TensorList")."""
    cfg = dict(FAST, lora_steps=1, keys="context", max_distance=100.0, min_cos=-1.0)
    edit = get_plugin("realera")(cfg).fit(tiny_pipe, Request(targets=["cat"]))
    assert edit.manifest.extra["n_beyond_sampled"] == 0  # the case under test
    assert edit.delta.tensors and all(torch.isfinite(t).all() for t in edit.delta.tensors.values())


def test_corpus_contexts_pick_captions_naming_the_word_once_and_substitute_the_anchor():
    corpus = [
        "a red cat on a mat",
        "A Cat, sleeping",
        "a cat and a cat",  # twice: no single concept span
        "a catalogue of dogs",  # not the word
        "a bobcat",
        "a red cat on a mat",  # duplicate
        "a dog",
    ]
    g = torch.Generator().manual_seed(0)
    pairs = corpus_contexts(corpus, "cat", "", 10, g)
    assert pairs == [("a red cat on a mat", "a red on a mat"), ("A Cat, sleeping", "A , sleeping")]
    one = corpus_contexts(corpus, "cat", "dog", 1, torch.Generator().manual_seed(0))
    assert (
        len(one) == 1 and one[0][0] in {p for p, _ in pairs} and "dog" in one[0][1] and "cat" not in one[0][1].lower()
    )
    again = corpus_contexts(corpus, "cat", "dog", 1, torch.Generator().manual_seed(0))
    assert again == one  # seeded
    assert corpus_contexts(corpus, "zebra", "", 5, g) == []


def test_corpus_captions_are_keyed_in_context(tiny_pipe, tmp_path):
    """``context_from_corpus`` adds captions naming the concept (a corpus file here; the shapes model ships
    one) to the keyed sentences, so their rows after the word move to the anchor caption's rows; without a
    corpus (the tiny model ships none) the templates alone are keyed, as before."""
    from conceptedit.conditioning import conditioning

    caption = "a cat sitting on a red sofa in the morning sun"
    anchor = "a sitting on a red sofa in the morning sun"
    corpus = tmp_path / "captions.txt"
    corpus.write_text(f"{caption}\na dog in a park\n", encoding="utf-8")
    _, c_end, a_end = concept_span(tiny_pipe.tokenizer, caption, anchor)
    k = conditioning(tiny_pipe, [caption]).embeds[0, c_end + 1 :].double()
    a = conditioning(tiny_pipe, [anchor]).embeds[0, a_end + 1 : a_end + 1 + len(k)].double()

    def fit(**extra):
        cfg = dict(FAST, lora_steps=0, n_neighbours=0, n_beyond=0, **extra)
        return get_plugin("realera")(cfg).fit(tiny_pipe, Request(targets=["cat"]))

    with_corpus, templates_only = fit(corpus=str(corpus)), fit()
    assert caption in with_corpus.manifest.extra["erase_prompts"]
    assert len(templates_only.manifest.extra["erase_prompts"]) == len(CONTEXT_TEMPLATES)
    gaps = anchor_gap(tiny_pipe, with_corpus, k, a), anchor_gap(tiny_pipe, templates_only, k, a)
    assert gaps[0] < 0.6 * gaps[1], gaps
    with pytest.raises(ConfigError):
        fit(corpus=str(tmp_path / "missing.txt"))
