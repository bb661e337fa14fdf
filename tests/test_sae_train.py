"""Trainer (determinism, exact resume) and metrics (FVU, L0, dead latents, downstream effect)."""

from __future__ import annotations

import pytest
import torch

from conceptedit.errors import ConceptEditError
from conceptedit.sae import SAE_ARCHITECTURES, SAETrainer, TrainConfig, create_sae, evaluate_sae, train_sae
from conceptedit.sae.metrics import downstream_effect
from conceptedit.sae.synthetic import planted_sparse_data

D, WIDTH = 16, 48


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return planted_sparse_data(4096, D, 24, 2, seed=2)[0]


def config(**kw) -> TrainConfig:
    base = dict(
        token_budget=128 * 24,
        batch_size=128,
        lr=3e-3,
        warmup_steps=5,
        progress=False,
        dead_after_tokens=600,
        init_rows=512,
        log_every=4,
    )
    return TrainConfig(**{**base, **kw})


def kw_for(arch: str) -> dict:
    names = SAE_ARCHITECTURES[arch].hparam_names()
    kw = {"k": 2} if "k" in names else {}
    if "n_archetypes" in names:  # the default (1024) needs more init rows than this data has
        kw["n_archetypes"] = 64
    return kw


@pytest.mark.parametrize("arch", sorted(SAE_ARCHITECTURES))
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(arch, data, tmp_path) -> None:
    full = SAETrainer(create_sae(arch, D, WIDTH, **kw_for(arch)), data, config()).train()
    first = SAETrainer(create_sae(arch, D, WIDTH, **kw_for(arch)), data, config(), checkpoint_dir=tmp_path)
    first.train(max_steps=9)  # interrupted: checkpoint written at step 9
    assert first.step == 9
    del first
    torch.manual_seed(1234)  # a resumed process starts with other RNG state; the checkpoint restores it
    resumed = SAETrainer.resume(tmp_path, data)
    assert resumed.step == 9
    sae = resumed.train()
    for (name, a), (_, b) in zip(full.state_dict().items(), sae.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{arch}: {name} differs after resume"


def test_training_is_deterministic_under_a_seed_and_seed_matters(data) -> None:
    a = train_sae(data, "topk", WIDTH, k=2, config=config())
    b = train_sae(data, "topk", WIDTH, k=2, config=config())
    c = train_sae(data, "topk", WIDTH, k=2, config=config(seed=1))
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.W_enc, b.W_enc)
    assert not torch.equal(a.W_dec, c.W_dec)


def test_trainer_errors(data, tmp_path) -> None:
    with pytest.raises(ConceptEditError, match="token_budget"):
        TrainConfig(token_budget=10, batch_size=128)
    with pytest.raises(ConceptEditError, match="d_in"):
        SAETrainer(create_sae("topk", D + 1, WIDTH), data, config())
    with pytest.raises(ConceptEditError, match="no trainer checkpoint"):
        SAETrainer.resume(tmp_path, data)
    with pytest.raises(ConceptEditError, match="unknown training option"):
        TrainConfig.from_dict({"lr": 1e-3, "lrr": 2})


def test_evaluate_matches_direct_computation_and_training_helps(data) -> None:
    untrained = create_sae("topk", D, WIDTH, k=2)
    sae = SAETrainer(create_sae("topk", D, WIDTH, k=2), data, config(token_budget=128 * 120)).train()
    m = evaluate_sae(sae, data, batch_size=1000)
    codes = sae.encode(data)
    recon = sae.decode(codes).detach()
    fvu = float((data - recon).pow(2).sum() / (data - data.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-4)
    assert m["l0"] == pytest.approx(float((codes.to_dense() != 0).sum(-1).float().mean()), rel=1e-6)
    fired = (codes.to_dense() != 0).any(0)
    assert m["dead_fraction"] == pytest.approx(float((~fired).float().mean()))
    assert m["rows"] == data.shape[0] and m["l0"] <= 2
    assert m["fvu"] < 0.5 * evaluate_sae(untrained, data)["fvu"]
    assert evaluate_sae(sae, data, max_rows=100)["rows"] == 100


def test_history_reports_fvu_l0_dead(data) -> None:
    trainer = SAETrainer(create_sae("topk", D, WIDTH, k=2), data, config())
    trainer.train()
    last = trainer.history[-1]
    assert {"fvu", "l0", "dead", "step"} <= set(last) and last["step"] == 24
    assert trainer.history[0]["fvu"] > last["fvu"]


def test_downstream_effect_of_splicing_into_a_text_encoder() -> None:
    from tiny import tiny_components

    from conceptedit.sae import collect_activations

    comps = tiny_components()
    parts = (comps["text_encoder"].eval(), comps["tokenizer"])
    prompts = ["a red cat", "blue dog", "a cat and a dog", "red", "dog dog cat", "a blue cat on red"] * 4
    module = "text_model.encoder.layers.1"
    store = collect_activations(parts, module, prompts, None, padding="max_length", skip_padding=False, progress=False)
    good = train_sae(store, "topk", 64, k=8, config=config(token_budget=128 * 150, dead_after_tokens=5000))
    bad = create_sae("topk", store.d_in, 64, k=1)
    bad.b_pre.data += 5.0  # reconstructs far away
    good_eff = downstream_effect(good, parts, module, prompts[:6])
    bad_eff = downstream_effect(bad, parts, module, prompts[:6])
    for eff in (good_eff, bad_eff):
        assert -1 <= eff["embedding_cosine_min"] <= eff["embedding_cosine_mean"] <= 1
    assert good_eff["embedding_cosine_mean"] > bad_eff["embedding_cosine_mean"]
    assert good_eff["embedding_cosine_mean"] > 0.9
    # the splice is removed afterwards: the encoder's output is unchanged
    ids = parts[1](prompts[:2], padding="max_length", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = parts[0](ids)[0]
        downstream_effect(bad, parts, module, prompts[:2])
        assert torch.equal(parts[0](ids)[0], before)
