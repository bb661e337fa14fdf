"""RealEra: the mining / regularisation samplers and the closed form on random tensors, the plugin on the
tiny pipeline (artifact round trip, exact removal, the LoRA part in diffusers, refusals, config checks).

The tiny model is random: every prompt's keys are alike, so erasure *effects* are measured on the shapes
model by ``benchmarks/realera_residue.py``; here the properties are exact (constraints, normal equations,
bit-for-bit removal) or relative (held-out embeddings outside the neighbourhood move far less than the
concept).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state

from conceptedit.edits import Edit, LoRAEdit
from conceptedit.edits.lora import LORA_FILE
from conceptedit.errors import ConceptEditError, ConfigError, RequestError, UnsupportedModelError
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.plugins._realera_context import encode_concept
from conceptedit.plugins._realera_stages import (
    alignment_problem,
    beyond_from_pool,
    in_neighbourhood,
    mine_neighbours,
    sample_beyond,
)
from conceptedit.plugins.realera import DELTA_FILE, RealEraEdit
from conceptedit.registry import get_plugin
from conceptedit.sparsity.ridge import normal_equation_residual, weighted_ridge_edit

FAST = {"lora_steps": 4, "n_images": 1, "beyond_pool": 64, "n_beyond": 16, "n_neighbours": 8}
SEEDS = [0, 1]


def images(pipe, prompt: str) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64) for im in generate(pipe, [prompt] * len(SEEDS), SEEDS)])


def cosines(e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x @ e) / (x.norm(dim=1) * e.norm())


# -- mining and beyond-concept sampling -----------------------------------------------------------
@pytest.mark.parametrize("dim", [32, 768])
def test_mined_neighbours_satisfy_the_norm_and_cosine_constraints(dim):
    e = torch.randn(dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 + 1
    d1, s1, s2 = 0.6, 0.85, 0.97
    nb = mine_neighbours(e, 200, d1, s1, s2, torch.Generator().manual_seed(0))
    assert nb.shape == (200, dim)
    eta = nb - e
    assert bool((eta.norm(dim=1) <= d1 * e.norm() + 1e-9).all())
    cos = cosines(e, nb)
    assert bool((cos >= s1).all()) and bool((cos <= s2).all()), (cos.min(), cos.max())
    assert bool(in_neighbourhood(e, nb, d1, s1, s2).all())
    assert len({tuple(r.tolist()) for r in nb}) == 200  # distinct random draws, not one repeated point
    again = mine_neighbours(e, 200, d1, s1, s2, torch.Generator().manual_seed(0))
    assert torch.equal(nb, again)  # seeded


def test_beyond_concept_samples_lie_outside_the_neighbourhood():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(32, generator=g, dtype=torch.float64)
    d1, s1, s2 = 0.75, 0.8, 0.95
    far = sample_beyond(e, 100, s1, 1.5, g)
    assert bool((cosines(e, far) < s1).all()) and bool(((far - e).norm(dim=1) <= 1.5 * e.norm() + 1e-9).all())
    assert not bool(in_neighbourhood(e, far, d1, s1, s2).any())
    # a pool mixing near and far points: only the far ones are drawn
    pool = torch.cat([mine_neighbours(e, 50, d1, s1, s2, g), torch.randn(50, 32, generator=g, dtype=torch.float64)])
    picked = beyond_from_pool(e, pool, 40, d1, s1, g)
    assert len(picked) == 40 and not bool(in_neighbourhood(e, picked, d1, s1, s2).any())
    assert bool((cosines(e, picked) < s1).all() | ((picked - e).norm(dim=1) > d1 * e.norm()).all())


def test_unsatisfiable_neighbourhood_is_a_one_line_error():
    e = torch.ones(64, dtype=torch.float64)
    # cos <= 0.5 needs ‖η‖ ≥ ~0.87‖e‖, beyond D₁ = 0.1
    with pytest.raises(RequestError, match="widen") as info:
        mine_neighbours(e, 5, 0.1, 0.2, 0.5, torch.Generator().manual_seed(0), max_tries=2000)
    assert "\n" not in str(info.value)


# -- the closed form ------------------------------------------------------------------------------
def random_alignment(seed: int, d: int = 32, n_vocab: int = 200):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 12, d, generator=g, dtype=torch.float64)
    e = torch.randn(d, generator=g, dtype=torch.float64) * 2
    anchor = torch.randn(d, generator=g, dtype=torch.float64) * 2
    nb = mine_neighbours(e, 16, 0.75, 0.8, 0.95, g)
    vocab = torch.randn(n_vocab, d, generator=g, dtype=torch.float64) * 2
    return g, W, e, anchor, nb, vocab


def test_closed_form_satisfies_its_normal_equations():
    g, W, e, anchor, nb, vocab = random_alignment(0)
    beyond = beyond_from_pool(e, vocab, 64, 0.75, 0.8, g)
    keep = torch.randn(2, 32, generator=g, dtype=torch.float64)
    problem = alignment_problem([e], [nb], [anchor], [beyond], keep, 1.3, 0.7, 2.0, 0.5)
    assert len(problem.keys) == 1 + 16 + 64 + 2
    # neighbours share 0.7, beyond samples share 2.0, preserved concepts 0.5 each
    assert torch.allclose(problem.weights[1:17].sum(), torch.tensor(0.7, dtype=torch.float64))
    assert torch.allclose(problem.weights[17:81].sum(), torch.tensor(2.0, dtype=torch.float64))
    assert problem.weights[-1] == 0.5
    # targets: the concept and its neighbours -> the anchor's old output; the rest -> their own
    values = problem.values(W)
    assert torch.allclose(values[:, 5], W @ anchor) and torch.allclose(values[:, 20], W @ problem.keys[20])
    W_new = weighted_ridge_edit(W, problem.keys, values, problem.weights, 0.5)
    for layer in range(3):
        res = normal_equation_residual(W_new[layer], W[layer], problem.keys, values[layer], problem.weights, 0.5)
        assert res < 1e-8, res


def test_plugin_closed_form_solves_the_alignment_problem(tiny_pipe):
    """The plugin's per-layer deltas are the minimiser of its problem (normal equations on the real UNet)."""
    plugin = get_plugin("realera")(lora_steps=0)
    seq, row = encode_concept(tiny_pipe, "cat")
    aseq, arow = encode_concept(tiny_pipe, "")
    g = torch.Generator().manual_seed(0)
    e = seq[0, row].double()
    problem = alignment_problem(
        [e], [mine_neighbours(e, 8, 0.75, 0.8, 0.95, g)], [aseq[0, arow].double()], [sample_beyond(e, 8, 0.8, 1.5, g)],
        None, 1.0, 1.0, 1.0, 1.0,
    )  # fmt: skip
    deltas = plugin._closed_form(tiny_pipe.unet, problem)
    assert deltas and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in deltas)
    for key, delta in deltas.items():
        W_old = tiny_pipe.unet.get_parameter(key.removeprefix("unet.")).detach().double()
        res = normal_equation_residual(
            W_old + delta.double(), W_old, problem.keys, problem.values(W_old), problem.weights, 0.5
        )
        assert res < 1e-3, (key, res)  # the delta is stored in float32


def test_embeddings_outside_the_neighbourhood_keep_their_mapping():
    """Held-out embeddings outside the neighbourhood (not used in the fit) move far less than the concept
    and its held-out neighbours; without the regulariser they move more than with it."""
    g, W, e, anchor, nb, vocab = random_alignment(2, n_vocab=400)
    train, held_out = vocab[:300], vocab[300:]
    held_out = held_out[~in_neighbourhood(e, held_out, 0.75, 0.8, 0.95)]
    fresh_nb = mine_neighbours(e, 100, 0.75, 0.8, 0.95, g)

    def change(W_new: torch.Tensor, x: torch.Tensor) -> float:  # relative change of the outputs
        return float(((x @ (W_new - W).transpose(1, 2)).norm(dim=-1) / (x @ W.transpose(1, 2)).norm(dim=-1)).mean())

    def solve(reg: float) -> torch.Tensor:
        beyond = beyond_from_pool(e, train, 300, 0.75, 0.8, g)
        p = alignment_problem([e], [nb], [anchor], [beyond], None, 1.0, 1.0, reg, 1.0)
        return weighted_ridge_edit(W, p.keys, p.values(W), p.weights, 0.5)

    with_reg, without = solve(30.0), solve(0.0)
    assert change(with_reg, e[None]) > 0.5
    assert change(with_reg, held_out) < 0.25 * change(with_reg, fresh_nb), (
        change(with_reg, held_out),
        change(with_reg, fresh_nb),
    )
    assert change(with_reg, held_out) < 0.5 * change(without, held_out)


# -- the plugin on the tiny pipeline --------------------------------------------------------------
def test_realera_artifact_round_trip_and_exact_removal(tiny_pipe, tmp_path):
    before = full_state(tiny_pipe)
    base_cat = images(tiny_pipe, "a cat")
    edit = get_plugin("realera")(FAST).fit(tiny_pipe, Request(targets=["cat"], preserve=["dog"]))
    assert_same_state(before, full_state(tiny_pipe))  # fit leaves the pipeline as it was
    assert isinstance(edit, RealEraEdit) and edit.manifest.plugin == "realera"
    assert edit.delta.tensors and edit.lora is not None and edit.lora.modules
    assert set(edit.manifest.extra["stage_seconds"]) == {"mining", "closed_form", "lora_latents", "lora"}
    assert edit.manifest.extra["n_neighbours_mined"] == 8 * len(edit.manifest.extra["erase_prompts"])  # 8 per sentence

    edit.save(tmp_path / "re")
    assert sorted(p.name for p in (tmp_path / "re").iterdir()) == sorted([DELTA_FILE, LORA_FILE, "manifest.json"])
    loaded = Edit.load(tmp_path / "re")
    assert isinstance(loaded, RealEraEdit) and loaded.tensors.keys() == edit.tensors.keys()
    assert all(torch.equal(loaded.tensors[k], v) for k, v in edit.tensors.items())
    with loaded.apply(tiny_pipe):
        changed = full_state(tiny_pipe)
        assert np.abs(images(tiny_pipe, "a cat") - base_cat).mean() > 0.5
    # both parts were applied: a to_k weight moved by delta + B·A
    key = next(k for k in edit.delta.tensors if k.endswith("attn2.to_k.weight"))
    module = key.removesuffix(".weight")
    lora = (edit.lora.tensors[f"{module}.lora_B.weight"] @ edit.lora.tensors[f"{module}.lora_A.weight"]).float()
    expected = before[key] + edit.delta.tensors[key] + lora
    torch.testing.assert_close(changed[key], expected, rtol=1e-5, atol=1e-6)
    assert_same_state(before, full_state(tiny_pipe))  # removal restores every parameter bit for bit
    assert np.array_equal(images(tiny_pipe, "a cat"), base_cat)

    # stacked under another edit and removed from the middle: still exact
    uce = get_plugin("uce")().fit(tiny_pipe, Request(targets=["dog"]))
    h_re, h_uce = loaded.apply(tiny_pipe), uce.apply(tiny_pipe)
    h_re.remove()
    h_uce.remove()
    assert_same_state(before, full_state(tiny_pipe))


def test_realera_lora_part_loads_with_diffusers(tiny_pipe, tiny_model_dir, tmp_path):
    """``load_lora_weights`` on the artifact folder gives the UNet our merge of the LoRA part gives."""
    from conceptedit.loading import load_pipeline

    edit = get_plugin("realera")(dict(FAST, lora_steps=8, lora_lr=5e-2)).fit(tiny_pipe, Request(targets=["cat"]))
    edit.save(tmp_path / "re")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond = tiny_pipe.encode_prompt("a cat", "cpu", 1, False)[0]

    def eps(pipe) -> torch.Tensor:
        with torch.no_grad():
            return pipe.unet(x, torch.tensor([500]), encoder_hidden_states=cond).sample

    base = eps(tiny_pipe)
    with LoRAEdit(edit.manifest, edit.lora.tensors).apply(tiny_pipe):
        ours = eps(tiny_pipe)
    other = load_pipeline(str(tiny_model_dir), device="cpu")
    other.load_lora_weights(str(tmp_path / "re"))
    theirs = eps(other)
    assert (ours - base).abs().max() > 1e-4  # the LoRA matters
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_realera_ablations_give_one_part_each(tiny_pipe, tmp_path):
    only_delta = get_plugin("realera")(dict(FAST, lora_steps=0)).fit(tiny_pipe, Request(targets=["cat"]))
    assert only_delta.lora is None and only_delta.delta.tensors
    only_delta.save(tmp_path / "d")
    assert not (tmp_path / "d" / LORA_FILE).exists()
    only_lora = get_plugin("realera")(dict(FAST, closed_form=False)).fit(tiny_pipe, Request(targets=["cat"]))
    assert not only_lora.delta.tensors and only_lora.lora is not None
    no_mining = get_plugin("realera")(dict(FAST, lora_steps=0, n_neighbours=0)).fit(tiny_pipe, Request(targets=["cat"]))
    assert no_mining.manifest.extra["n_neighbours_mined"] == 0
    key = next(iter(only_delta.delta.tensors))
    assert not torch.equal(no_mining.delta.tensors[key], only_delta.delta.tensors[key])  # mining matters
    again = get_plugin("realera")(dict(FAST, lora_steps=0)).fit(tiny_pipe, Request(targets=["cat"]))
    assert all(torch.equal(again.tensors[k], v) for k, v in only_delta.tensors.items())  # seeded


def test_realera_refuses_other_families_and_bad_requests(tiny_pipe):
    sd3 = type("StableDiffusion3Pipeline", (), {})()  # SDXL is supported: tests/test_sdxl.py
    with pytest.raises(UnsupportedModelError) as info:
        get_plugin("realera")().fit(sd3, Request(targets=["cat"]))
    assert isinstance(info.value, ConceptEditError) and "\n" not in str(info.value)
    with pytest.raises(RequestError, match="anchor"):
        get_plugin("realera")(anchor="Cat").fit(tiny_pipe, Request(targets=["cat"]))


@pytest.mark.parametrize(
    "bad",
    [
        {"min_cos": 0.9, "max_cos": 0.8},
        {"max_cos": 1.5},
        {"max_distance": 0.0},
        {"beyond_max_distance": -1.0},
        {"n_neighbours": -1},
        {"lora_steps": -2},
        {"lora_rank": 0},
        {"lamb": -0.1},
        {"regularisation_scale": -1.0},
        {"lora_lr": 0.0},
        {"closed_form": False, "lora_steps": 0},
        {"beyond": "random"},
        {"lora_modules": "all"},
        {"neighbours": 3},
    ],
)
def test_bad_config_values_are_one_line_errors(bad):
    with pytest.raises(ConfigError) as info:
        get_plugin("realera")(bad)
    assert "\n" not in str(info.value)


def test_defaults_are_documented_values():
    cfg = get_plugin("realera")().config
    assert (cfg.max_distance, cfg.min_cos, cfg.max_cos, cfg.n_neighbours) == (0.75, 0.8, 0.95, 16)
    assert cfg.anchor == "" and cfg.lamb == 0.5 and cfg.lora_rank == 4
    assert cfg.keys == "context" and cfg.context_from_corpus == 64


def test_lora_stage_aligns_the_concept_prediction_with_the_anchor(tiny_pipe):
    """The LoRA stage alone (no closed form) brings the concept prompt's noise prediction towards the
    anchor's (the original model's on ``""``), at noise and timesteps it never saw."""
    # keys: word, so all 40 steps train on the bare prompt measured here (in context they are shared by 6 sentences)
    cfg = dict(FAST, closed_form=False, lora_steps=40, lora_lr=2e-2, n_neighbours=4, lora_regularisation=0.0)
    edit = get_plugin("realera")(dict(cfg, keys="word")).fit(tiny_pipe, Request(targets=["cat"]))
    seq, _ = encode_concept(tiny_pipe, "cat")
    anchor, _ = encode_concept(tiny_pipe, "")
    g = torch.Generator().manual_seed(123)
    x, t = torch.randn(4, 4, 8, 8, generator=g), torch.tensor([50, 300, 600, 900])

    def eps(cond: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tiny_pipe.unet(x, t, encoder_hidden_states=cond.expand(4, -1, -1)).sample

    target = eps(anchor)
    before = float((eps(seq) - target).pow(2).mean())
    with edit.apply(tiny_pipe):
        after = float((eps(seq) - target).pow(2).mean())
    assert after < 0.5 * before, (after, before)


def test_lora_regulariser_puts_beyond_samples_in_the_anchor_context(monkeypatch):
    """The beyond-concept term conditions on the anchor's sequence with the sample at the concept's row, never
    on the concept's own sequence: a CLIP encoder repeats the last word in its EOS/padding rows, so that
    context would teach the student to keep drawing the concept (it undid the erasure on shapes v2)."""
    from conceptedit.conditioning import Conditioning
    from conceptedit.plugins import _realera_stages as stages

    seen: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def fake_predict(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        seen.append((model, cond.embeds.clone()))
        return x * model.w

    monkeypatch.setattr(stages, "predict_noise", fake_predict)

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

    student, frozen = Scale(), Scale()
    concept_seq = Conditioning(torch.full((1, 5, 3), 7.0))
    anchor_seq = Conditioning(torch.zeros(1, 5, 3))
    xi = torch.full((1, 3), -2.0)
    data = stages.NoiseAlignmentData(
        [concept_seq], [1], [anchor_seq], [torch.zeros(0, 3)], [xi], torch.randn(2, 4, 2, 2)
    )
    scheduler = type("S", (), {"config": type("C", (), {"num_train_timesteps": 10})(),
                               "add_noise": staticmethod(lambda z, n, t: z + n)})()  # fmt: skip
    stages.noise_alignment_lora(
        student, frozen, scheduler, data, [student.w], 2, 1e-3, 1.0, torch.Generator(), lambda *a: None
    )
    student_ctx = [c for m, c in seen if m is student]
    assert len(student_ctx) == 2
    for ctx in student_ctx:
        assert torch.equal(ctx[0, 1], torch.full((3,), 7.0))  # the erased row: the concept itself
        reg = ctx[1]
        assert torch.equal(reg[1], xi[0])
        assert torch.equal(reg[[0, 2, 3, 4]], torch.zeros(4, 3))  # the rest is the anchor's, not the concept's


def test_closed_form_in_chunks_gives_the_same_edit(tiny_pipe, monkeypatch):
    """RealEra solves same-shape layers in UCE's chunks (SDXL's 140 K/V layers at once ran out of memory);
    each layer is solved on its own, so the chunk size changes nothing, and chunks never exceed the limit."""
    import conceptedit.plugins.uce as uce

    cfg = dict(FAST, lora_steps=0)
    whole = get_plugin("realera")(cfg).fit(tiny_pipe, Request(targets=["cat"]))
    import conceptedit.plugins.realera as realera

    batches: list[int] = []
    solve = realera.weighted_ridge_edit

    def recording(W_old: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        batches.append(len(W_old))
        return solve(W_old, *args, **kwargs)

    monkeypatch.setattr(realera, "weighted_ridge_edit", recording)
    monkeypatch.setattr(uce, "LAYERS_PER_SOLVE", 1)
    single = get_plugin("realera")(cfg).fit(tiny_pipe, Request(targets=["cat"]))
    assert batches and set(batches) == {1}  # every solve saw one layer
    assert whole.tensors.keys() == single.tensors.keys() and whole.tensors
    for key in whole.tensors:
        assert torch.allclose(whole.tensors[key], single.tensors[key], atol=1e-6), key
    monkeypatch.setattr(uce, "LAYERS_PER_SOLVE", 2)
    modules = [torch.nn.Linear(3, 2) for _ in range(5)] + [torch.nn.Linear(4, 2)]
    assert uce.same_shape_chunks(modules) == [[0, 1], [2, 3], [4], [5]]


def test_sources_give_the_same_solve_as_their_values():
    """``weighted_ridge_edit(sources=S)`` (targets ``W_old s``, no ``(L, n, out)`` values) is the values solve."""
    g, W, e, anchor, nb, vocab = random_alignment(3)
    p = alignment_problem([e], [nb], [anchor], [vocab[:50]], None, 1.0, 1.0, 1.0, 1.0)
    by_values = weighted_ridge_edit(W, p.keys, p.values(W), p.weights, 0.5)
    by_sources = weighted_ridge_edit(W, p.keys, None, p.weights, 0.5, sources=p.sources)
    torch.testing.assert_close(by_sources, by_values, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError):
        weighted_ridge_edit(W, p.keys, p.values(W), p.weights, 0.5, sources=p.sources)


def test_lora_stage_generates_n_images_whatever_the_number_of_keyed_sentences(tiny_pipe, monkeypatch):
    """The LoRA stage noises ``n_images`` base-model images of the concept in all, drawn from sentences spread
    over the keyed ones (one image per sentence of 70 took 60-80 s of a fit on the shapes model)."""
    from conceptedit.plugins import realera

    asked: list[tuple[str, int]] = []
    original = realera.concept_latents

    def counting(pipe, prompt, n, seed):
        asked.append((prompt, n))
        return original(pipe, prompt, n, seed)

    monkeypatch.setattr(realera, "concept_latents", counting)
    get_plugin("realera")(dict(FAST, lora_steps=1, n_images=3)).fit(tiny_pipe, Request(targets=["cat"]))
    assert sum(n for _, n in asked) == 3 and len({p for p, _ in asked}) == 3  # 3 of the 6 template sentences
