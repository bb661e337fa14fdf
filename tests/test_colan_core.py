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


def test_decomposition_is_the_reference_codes_procedure():
    """peterljq/Concept-Lancet ``sparse_coding.decompose``: stack [v; atoms], re-embed the rows by an SVD
    (Gram-preserving), L2-normalise, zero the signal's own row, SPAMS lasso mode 2 with λ₁ = τα,
    λ₂ = (1 − τ)α, rescale by ‖v‖/‖atom‖. Re-done here with scikit-learn's ElasticNet (SPAMS' objective
    is unscaled: alpha = (λ₁ + λ₂)/q for q re-embedded dimensions) on atoms sharing a large common part,
    as prompt embeddings do; ``decompose`` must give the same weights."""
    from sklearn.linear_model import ElasticNet

    g = torch.Generator().manual_seed(1)
    common = torch.randn(60, generator=g, dtype=torch.float64) * 3
    atoms = common + torch.randn(9, 60, generator=g, dtype=torch.float64)
    dic = ConceptDictionary([f"c{i}" for i in range(9)], atoms)
    v = 0.7 * atoms[0] + 0.4 * atoms[3] + 0.3 * torch.randn(60, generator=g, dtype=torch.float64)
    data = torch.cat([v[None], atoms])
    _, S, Vh = torch.linalg.svd(data.T, full_matrices=False)
    new = Vh.T * S  # (K + 1, q): the same Gram matrix as data
    norms = new.norm(dim=1)
    new = new / norms[:, None]
    tau, alpha = 0.95, 0.05
    q = new.shape[1]
    net = ElasticNet(alpha=alpha / q, l1_ratio=tau, fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    ref = net.fit(new[1:].T.numpy(), new[0].numpy()).coef_ / norms[1:].numpy() * float(v.norm())
    w, _ = decompose(v, dic, tau=tau, alpha=alpha)
    assert (torch.from_numpy(ref) != 0).sum() >= 2
    torch.testing.assert_close(w, torch.from_numpy(ref), atol=1e-5, rtol=1e-4)


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


# -- the editing backbone (plugins/_colan_backbone.py) on the tiny pipeline ----------------------------


def _tiny_parts(tiny_pipe):
    from conceptedit.plugins._colan_backbone import BackboneSettings, timesteps_for

    g = torch.Generator().manual_seed(0)
    unet, sch = tiny_pipe.unet, tiny_pipe.scheduler
    c = unet.config
    zt = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    shape = (2, 16, c.cross_attention_dim)
    src, edt, empty = (torch.randn(*shape, generator=g) for _ in range(3))
    return unet, sch, zt, src, edt, empty[:1], BackboneSettings, timesteps_for


def test_guidance_pushes_along_the_edit_exactly(tiny_pipe):
    """One DDIM step: z(g) − z(1) = (g − 1)·k·(ε(edit) − ε(src)) with k the step's ε coefficient."""
    from conceptedit.plugins._colan_backbone import _alpha, regenerate

    unet, sch, zt, src, edt, empty, Settings, timesteps_for = _tiny_parts(tiny_pipe)
    s1, s5 = Settings(steps=10, guidance=1.0), Settings(steps=10, guidance=5.0)
    ts = timesteps_for(sch, s1)[:1]
    z1 = regenerate(unet, sch, zt, src, edt, empty, ts, s1)
    z5 = regenerate(unet, sch, zt, src, edt, empty, ts, s5)
    with torch.no_grad():
        de = unet(zt, ts[0], encoder_hidden_states=edt).sample - unet(zt, ts[0], encoder_hidden_states=src).sample
    t, t_next = ts[0], ts[0] - sch.config.num_train_timesteps // sch.num_inference_steps
    a, an = _alpha(sch, t, zt.device), _alpha(sch, t_next, zt.device)
    k = (1 - an).sqrt() - an.sqrt() * (1 - a).sqrt() / a.sqrt()
    torch.testing.assert_close(z5 - z1, 4.0 * k * de, rtol=1e-3, atol=1e-5)
    assert (z5 - z1).abs().max() > 1e-3  # the edit is not a no-op


def test_source_uncond_reconstructs_at_zero_edit_whatever_the_scale(tiny_pipe):
    from conceptedit.plugins._colan_backbone import regenerate

    unet, sch, zt, src, edt, empty, Settings, timesteps_for = _tiny_parts(tiny_pipe)
    ts = timesteps_for(sch, Settings(steps=4))
    plain = regenerate(unet, sch, zt, src, src, empty, ts, Settings(steps=4, guidance=1.0))
    guided = regenerate(unet, sch, zt, src, src, empty, ts, Settings(steps=4, guidance=7.5))
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-5)
    far = regenerate(unet, sch, zt, src, edt, empty, ts, Settings(steps=4, guidance=7.5))
    near = regenerate(unet, sch, zt, src, edt, empty, ts, Settings(steps=4, guidance=2.0))
    assert (far - plain).norm() > (near - plain).norm() > 0  # further along the edit as the scale grows
    emp = regenerate(unet, sch, zt, src, src, empty, ts, Settings(steps=4, guidance=7.5, uncond="empty"))
    assert (emp - plain).abs().max() > 1e-3  # the empty prompt as the unconditional branch is another backbone


def test_cross_attention_guidance_moves_the_latent_and_restores_the_processors(tiny_pipe):
    from conceptedit.plugins._colan_backbone import regenerate

    unet, sch, zt, src, edt, empty, Settings, timesteps_for = _tiny_parts(tiny_pipe)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    s0, sx = Settings(steps=4), Settings(steps=4, cross_attention_guidance=50.0)
    ts = timesteps_for(sch, s0)
    plain = regenerate(unet, sch, zt, src, edt, empty, ts, s0)
    guided = regenerate(unet, sch, zt, src, edt, empty, ts, sx)
    assert (guided - plain).abs().max() > 1e-4
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    same = regenerate(unet, sch, zt, src, src, empty, ts, sx)  # maps already match: no move
    torch.testing.assert_close(same, regenerate(unet, sch, zt, src, src, empty, ts, s0), rtol=1e-4, atol=1e-5)


def test_partial_inversion_runs_the_last_share_of_the_schedule(tiny_pipe):
    from conceptedit.plugins._colan_backbone import BackboneSettings, timesteps_for

    full = timesteps_for(tiny_pipe.scheduler, BackboneSettings(steps=10))
    part = timesteps_for(tiny_pipe.scheduler, BackboneSettings(steps=10, strength=0.6))
    assert len(full) == 10 and part == full[4:]


@pytest.mark.parametrize(
    "bad",
    [{"steps": 0}, {"guidance": -1.0}, {"uncond": "nothing"}, {"strength": 0.0}, {"strength": 1.5},
     {"cross_attention_guidance": -0.1}],
)  # fmt: skip
def test_bad_backbone_settings_are_one_line_errors(bad):
    from conceptedit.registry import get_plugin

    with pytest.raises(ConceptEditError) as e:
        get_plugin("colan")(bad)
    assert "\n" not in str(e.value) and next(iter(bad)) in str(e.value)
