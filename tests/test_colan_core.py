"""Concept Lancet's dictionary, decomposition and transplant on a toy dictionary."""

from __future__ import annotations

import json

import pytest
import torch

from conceptedit.errors import ConceptEditError
from conceptedit.plugins._colan_core import (
    ConceptDictionary,
    build_dictionary,
    decompose,
    load_stimuli,
    transplant,
)


def _toy() -> ConceptDictionary:
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(6, 40, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3, 1, 1, 0.5])[:, None]
    return ConceptDictionary(["circle", "square", "red", "blue", "small", "large"], atoms)


def test_decomposition_finds_the_concepts_of_a_mixture_and_rescales_to_raw_atoms():
    dic = _toy()
    v = 0.8 * dic.atoms[0] + 0.5 * dic.atoms[2]
    w, r = decompose(v.reshape(4, 10), dic)
    torch.testing.assert_close(w @ dic.atoms + r, v)  # exact split: v = Dᵀw + r
    assert set(torch.topk(w.abs(), 2).indices.tolist()) == {0, 2}
    assert w[0] == pytest.approx(0.8, rel=0.15) and w[2] == pytest.approx(0.5, rel=0.15)
    assert w[[1, 3, 4, 5]].abs().max() < 0.05


def test_replace_swaps_source_atom_for_target_keeping_weight_and_residual():
    dic = _toy()
    v = (0.8 * dic.atoms[0] + 0.5 * dic.atoms[2] + 0.01 * torch.ones(40, dtype=torch.float64)).reshape(4, 10)
    w, r = decompose(v, dic)
    out = transplant(v, dic, w, "circle", dic.atoms[1])
    assert out.shape == v.shape
    expected = w @ dic.atoms + r + w[0] * (dic.atoms[1] - dic.atoms[0])  # D′w + r with d_src → d_tgt
    torch.testing.assert_close(out.flatten(), expected)
    w2, _ = decompose(out, dic)
    assert w2[1] > 0.5 * w[0] and w2[0].abs() < 0.2 * w[0]  # the square now carries the circle's weight
    empty = torch.zeros(40, dtype=torch.float64)
    torch.testing.assert_close(transplant(v, dic, w, "red", empty).flatten(), v.flatten() - w[2] * dic.atoms[2])


def test_build_dictionary_and_stimulus_files(tmp_path):
    def encode(sents: list[str]) -> torch.Tensor:
        return torch.tensor([[len(s), s.count("a")] for s in sents], dtype=torch.float32)[:, :, None]

    dic = build_dictionary(encode, {"a": ["aa", "aaaa"], "b": ["b"]})
    torch.testing.assert_close(dic.atoms, torch.tensor([[3.0, 3.0], [1.0, 0.0]], dtype=torch.float64))
    (tmp_path / "s.json").write_text(json.dumps({"circle": ["a circle", "round shape"]}))
    assert load_stimuli(tmp_path / "s.json") == {"circle": ["a circle", "round shape"]}
    (tmp_path / "s.csv").write_text("concept,sentence\ncircle,a circle\ncircle,round\nred,a red thing\n")
    assert load_stimuli(tmp_path / "s.csv") == {"circle": ["a circle", "round"], "red": ["a red thing"]}


@pytest.mark.parametrize(
    "call",
    [
        lambda d, p: transplant(torch.zeros(40), d, torch.zeros(6), "triangle", torch.zeros(40)),
        lambda d, p: transplant(torch.zeros(40), d, torch.zeros(6), "circle", torch.zeros(7)),
        lambda d, p: decompose(torch.zeros(41), d),
        lambda d, p: ConceptDictionary([], torch.zeros(0, 4)),
        lambda d, p: build_dictionary(lambda s: torch.zeros(len(s), 3), {}),
        lambda d, p: build_dictionary(lambda s: torch.zeros(len(s), 3), {"x": []}),
        lambda d, p: load_stimuli(p / "missing.json"),
        lambda d, p: load_stimuli((p / "bad.json", (p / "bad.json").write_text("[1, 2"))[0]),
        lambda d, p: load_stimuli((p / "bad.csv", (p / "bad.csv").write_text("a,b\n1,2\n"))[0]),
    ],
)
def test_bad_inputs_are_one_line_errors(call, tmp_path):
    with pytest.raises(ConceptEditError) as e:
        call(_toy(), tmp_path)
    assert "\n" not in str(e.value)


def test_shapes_world_ships_stimuli_for_every_concept():
    from conceptedit.datasets.shapes import WORLD
    from conceptedit.datasets.shapes.stimuli import STIMULUS_FAMILIES, shapes_stimuli
    from conceptedit.plugins._colan_core import check_stimuli

    stim = check_stimuli(shapes_stimuli())
    wanted = {c for f in STIMULUS_FAMILIES for c in WORLD.classes(f)} - {"none"}
    assert set(stim) == wanted
    for concept, sents in stim.items():
        assert len(sents) == 30 and len(set(sents)) >= 10  # characters: one sentence per frame
        assert all(concept in s.split() for s in sents), concept
    assert shapes_stimuli() == stim  # seeded: the same dictionary on every machine
