"""Attack plugins (paraphrase, ring-a-bell, unlearndiffatk, soft-prompt), the Wilson interval and the
evaluation's ``attacks:`` section.

The tiny pipeline is random, so the conditioning moves its denoising loss only a little: the
white-box checks compare the objective at fixed noise (``noise: fixed`` / ``mean_denoising_loss``),
where the only thing that changes is the prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state, tiny_pipeline

from conceptedit.attack import (
    AttackPrompt,
    AttackSet,
    Injection,
    concept_latents,
    encode,
    generate_attack_images,
    inject,
    mean_denoising_loss,
    vocabulary,
)
from conceptedit.errors import ConceptEditError, ConfigError, RequestError
from conceptedit.generation import generate
from conceptedit.registry import get_plugin
from conceptedit.toolkit import tokenize

SMALL = {"num_inference_steps": 2, "height": 16, "width": 16}


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return tiny_pipeline()


@pytest.fixture(scope="module")
def cat_images(pipe):
    return generate(pipe, ["cat", "a cat"], [0, 1], **SMALL)


# -- paraphrase -----------------------------------------------------------------------------------
def test_paraphrase_uses_only_the_worlds_aliases_and_heldout_frames():
    from conceptedit.datasets.shapes import WORLD

    result = get_plugin("paraphrase")(n_prompts=0).attack(None, "zorblax", seed=3)
    frames = [t.replace("{np}", "{}") for t in WORLD.heldout_templates]
    words = ("zorblax", *WORLD.aliases("zorblax"))
    allowed = {f.format(w) for f in frames for w in words}
    texts = [p.prompt for p in result.prompts]
    assert set(texts) == allowed and len(texts) == len(allowed)
    assert texts[0].endswith(WORLD.aliases("zorblax")[0]) or WORLD.aliases("zorblax")[0] in texts[0]
    assert [p.seed for p in result.prompts] == list(range(3, 3 + len(texts)))
    few = get_plugin("paraphrase")(n_prompts=4, aliases_only=True).attack(None, "zorblax")
    assert len(few.prompts) == 4 and all("zorblax" not in p.prompt.split() for p in few.prompts)
    assert {p.prompt for p in few.prompts} <= allowed
    # the halo is reached through its other trigger words, never through a word outside the world
    halo = get_plugin("paraphrase")(n_prompts=0, aliases_only=True).attack(None, "glowing")
    vocabulary_words = {w for f in frames for w in f.replace("{}", "").replace(",", " ").split()}
    for p in halo.prompts:
        assert set(p.prompt.replace(",", " ").split()) <= vocabulary_words | set(WORLD.trigger.words) - {"glowing"}


def test_paraphrase_reads_a_users_csv(tmp_path):
    path = tmp_path / "words.csv"
    path.write_text("concept,text,kind\nvan gogh,vincent,alias\n,a painting by {},frame\nmonet,claude,alias\n")
    result = get_plugin("paraphrase")(word_list=str(path), n_prompts=0).attack(None, "van gogh")
    assert [p.prompt for p in result.prompts] == ["a painting by vincent", "a painting by van gogh"]
    bad = tmp_path / "bad.csv"
    bad.write_text("concept,text,kind\nvan gogh,a painting,frame\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2: a frame holds"):
        get_plugin("paraphrase")(word_list=str(bad)).attack(None, "van gogh")
    with pytest.raises(RequestError, match="no registered word list knows"):
        get_plugin("paraphrase")().attack(None, "a concept no list knows")


# -- ring-a-bell ----------------------------------------------------------------------------------
def test_ring_a_bell_concept_vector_is_the_mean_embedding_difference(pipe):
    from conceptedit.plugins.ring_a_bell import concept_vector

    pairs = [("a red cat", "a red dog"), ("cat", "dog"), ("blue cat", "blue")]
    with torch.no_grad():
        diffs = [pipe.text_encoder(tokenize(pipe.tokenizer, [a, b]).input_ids)[0] for a, b in pairs]
    expected = torch.stack([d[0] - d[1] for d in diffs]).mean(0)
    vector = concept_vector(pipe, pairs)
    assert vector.shape == (pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    assert torch.allclose(vector, expected, atol=1e-5)


def test_ring_a_bell_genetic_step_keeps_population_and_vocabulary(pipe):
    import random

    from conceptedit.plugins.ring_a_bell import GeneticSearch, RingABellConfig, embed_texts

    cfg = RingABellConfig(population=12, generations=1, length=5, mutation=1.0)
    target = embed_texts(pipe, ["a red cat"])[0]
    search = GeneticSearch(pipe, target, cfg, random.Random(0))
    allowed = set(vocabulary(pipe.tokenizer).tolist())
    tok = pipe.tokenizer
    for _ in range(4):
        search.step()
        assert len(search.population) == cfg.population
        for ids in search.population:
            assert ids[0] == tok.bos_token_id and ids[cfg.length + 1] == tok.eos_token_id
            assert set(ids[1 : cfg.length + 1].tolist()) <= allowed
            assert len(ids) == tok.model_max_length


def test_ring_a_bell_search_moves_the_prompt_towards_the_concept_target(pipe):
    import random

    from conceptedit.plugins.ring_a_bell import GeneticSearch, concept_vector, default_pairs, embed_texts

    plugin = get_plugin("ring-a-bell")(population=16, generations=25, length=4, n_prompts=1, eta=3.0)
    before = full_state(pipe)
    result = plugin.attack(pipe, "cat", seed=0)
    assert_same_state(before, full_state(pipe))
    history = result.history
    # mutation reaches the kept half too (as in the reference), so the best need not improve every generation
    assert len(history) == 25 and history[-1] < history[0] and min(history) < history[0]
    # the fitness is the distance to E(p) + η·c: the best start scores it, the search lowers it
    target = embed_texts(pipe, ["a picture of cat"])[0] + 3.0 * concept_vector(pipe, default_pairs("cat", ""))
    search = GeneticSearch(pipe, target, plugin.config, random.Random(0))
    assert float(search.fitness(search.population).min()) == pytest.approx(history[0], rel=1e-5)


@pytest.fixture(scope="module")
def shapes_text():
    """The shipped shapes model's tokenizer and text encoder: a 705-token byte-level BPE, on which
    decoded random token ids seldom tokenize back to the same ids (unlike CLIP's 49k-word vocabulary)."""
    from pathlib import Path
    from types import SimpleNamespace

    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(__file__).resolve().parents[1] / "pipelines" / "shapes_model"
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    return SimpleNamespace(tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), text_encoder=text_encoder)


def test_ring_a_bell_scores_the_prompt_it_returns(shapes_text):
    """The fitness of the best individual is that of its decoded text as a pipeline tokenizes it: the
    returned prompt is the one that was scored, not ids it never produces."""
    import random

    from conceptedit.plugins.ring_a_bell import GeneticSearch, RingABellConfig, embed_texts

    cfg = RingABellConfig(population=16, generations=3, length=6)
    target = embed_texts(shapes_text, ["a picture of zorblax"])[0]
    search = GeneticSearch(shapes_text, target, cfg, random.Random(0))
    for _ in range(3):
        best = search.step()
    text = search.best_text()
    as_text = float(((target - embed_texts(shapes_text, [text])[0]) ** 2).sum())
    assert as_text == pytest.approx(float(search.fitness(search.population).min()), rel=1e-5)
    assert as_text <= best + 1e-3 * abs(best)  # the kept best never gets worse


# -- unlearndiffatk -------------------------------------------------------------------------------
def test_project_simplex():
    from conceptedit.plugins.unlearndiffatk import project_simplex

    v = torch.tensor([[0.5, 0.2, -0.3, 0.9], [0.25, 0.25, 0.25, 0.25], [3.0, 0.0, 0.0, 0.0]])
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(3)) and bool((p >= 0).all())
    assert torch.allclose(p[0], torch.tensor([0.3, 0.0, 0.0, 0.7]), atol=1e-6)
    assert torch.allclose(p[1], v[1]) and torch.allclose(p[2], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(project_simplex(p), p)


def test_timesteps_are_the_references():
    from conceptedit.plugins.unlearndiffatk import sampled_timesteps

    assert sampled_timesteps(1000, 50) == list(range(10, 1000, 20))


def test_unlearndiffatk_lowers_its_loss_and_never_touches_weights(pipe, cat_images):
    plugin = get_plugin("unlearndiffatk")(iterations=40, timesteps=1, n_prompts=1, lr=0.1, noise="fixed")
    before = full_state(pipe)
    flags = [p.requires_grad for p in pipe.unet.parameters()]
    result = plugin.attack(pipe, "cat", images=cat_images, prompts=["a cat"], seed=0)
    assert_same_state(before, full_state(pipe))
    assert flags == [p.requires_grad for p in pipe.unet.parameters()]
    losses = np.array(result.history)
    assert len(losses) == 40
    assert losses[-10:].mean() < losses[:10].mean() - 1e-3
    prompt = result.prompts[0].prompt
    assert prompt.endswith("a cat") and prompt != "a cat" and result.prompts[0].seed == 0


def test_unlearndiffatk_stops_at_the_first_success(pipe, cat_images, monkeypatch):
    import conceptedit.plugins.unlearndiffatk as uda

    monkeypatch.setattr(uda, "generate_attack_images", lambda pipe, prompts: [None] * len(prompts))
    plugin = get_plugin("unlearndiffatk")(iterations=2, timesteps=3, n_prompts=1)
    already = plugin.attack(pipe, "cat", images=cat_images, prompts=["a cat"], judge=lambda images: [True])
    assert already.prompts[0].prompt == "a cat" and already.history == []  # the edit fails without any attack
    calls = []

    def second_time(images):
        calls.append(1)
        return [len(calls) == 2]  # the original prompt fails, the prompt after the first timestep succeeds

    found = plugin.attack(pipe, "cat", images=cat_images, prompts=["a cat"], judge=second_time)
    assert len(calls) == 2 and len(found.history) == 2 and found.prompts[0].prompt.endswith("a cat")


def test_unlearndiffatk_prompt_is_the_optimised_token_ids(shapes_text):
    """Slot tokens whose decoded text tokenizes otherwise: the prompt carries the ids' embeddings, so
    generation conditions on exactly the optimised ids (the reference evaluates the ids)."""
    from conceptedit.plugins.unlearndiffatk import PrefixPrompt

    tok, encoder = shapes_text.tokenizer, shapes_text.text_encoder
    prefix = PrefixPrompt(shapes_text, "a picture of zorblax", 3)
    generator = torch.Generator().manual_seed(0)
    vocab = vocabulary(tok)
    checked = {"ids": 0, "text": 0}
    for _ in range(20):
        slots = vocab[torch.randint(len(vocab), (3,), generator=generator)]
        found = prefix.attack_prompt(slots, seed=5)
        intended = prefix.row_ids(slots)
        with torch.no_grad():
            want = encoder(intended.unsqueeze(0))[0]
            with inject(shapes_text, [found.injection()] if found.vectors is not None else []):
                got = encoder(tokenize(tok, [found.prompt]).input_ids)[0]
        assert torch.allclose(got, want, atol=1e-5) and found.seed == 5
        checked["ids" if found.vectors is not None else "text"] += 1
    assert checked["ids"] > 0  # the case this guards happens on this tokenizer


def test_unlearndiffatk_needs_images(pipe):
    with pytest.raises(RequestError, match="fits images of the concept"):
        get_plugin("unlearndiffatk")().attack(pipe, "cat")


# -- soft prompt ----------------------------------------------------------------------------------
def test_soft_prompt_learns_an_embedding_the_pipeline_uses(pipe, cat_images):
    plugin = get_plugin("soft-prompt")(steps=40, lr=0.05, n_prompts=2)
    before = full_state(pipe)
    result = plugin.attack(pipe, "cat", images=cat_images, seed=0)
    assert_same_state(before, full_state(pipe))
    first = result.prompts[0]
    d = pipe.text_encoder.config.hidden_size
    assert first.vectors is not None and first.vectors.shape == (len(first.positions), d)
    assert "*" in first.prompt
    # the objective at fixed noise is lower with the learned vector than with its initial one
    x0 = concept_latents(pipe, cat_images)
    init = plugin.initial_vector(pipe, "cat").expand(len(first.positions), -1)
    start = mean_denoising_loss(pipe, x0, first.prompt, [Injection(first.prompt, first.positions, init)])
    end = mean_denoising_loss(pipe, x0, first.prompt, [first.injection()])
    assert end < start
    # the pipeline generates with it: images differ from the placeholder text alone, and repeat exactly
    images = generate_attack_images(pipe, result.prompts, **SMALL)
    plain = generate(pipe, [p.prompt for p in result.prompts], [p.seed for p in result.prompts], **SMALL)
    again = generate_attack_images(pipe, result.prompts, **SMALL)
    for a, b, c in zip(images, plain, again, strict=True):
        assert not np.array_equal(np.asarray(a), np.asarray(b))
        assert np.array_equal(np.asarray(a), np.asarray(c))


def test_attack_images_batch_soft_prompts_and_keep_each_prompts_vectors(pipe, monkeypatch):
    """Prompts with different texts generate in one batch, each with its own vectors; two prompts with the
    same tokens but different vectors go to separate batches (the hook tells rows apart by token ids)."""
    import conceptedit.generation as generation

    d = pipe.text_encoder.config.hidden_size
    # random vectors: constant ones (torch.full) all normalise to the same row in the encoder's layer norm,
    # so a mix-up between them would not show in the images
    gen = torch.Generator().manual_seed(0)
    vec = [torch.randn((1, d), generator=gen) for _ in range(3)]
    prompts = [
        AttackPrompt("a cat", 0, (1,), vec[0]),
        AttackPrompt("a dog", 1, (1,), vec[1]),
        AttackPrompt("a cat", 2, (1,), vec[2]),
        AttackPrompt("a bird", 3),
    ]
    batches = []
    real = generation.generate

    def spy(pipe_, texts, seeds, **kw):
        batches.append(list(seeds))
        return real(pipe_, texts, seeds, **kw)

    monkeypatch.setattr(generation, "generate", spy)
    together = generate_attack_images(pipe, prompts, **SMALL)
    assert batches == [[0, 1, 3], [2]]

    def gap(a, b) -> int:
        return int(np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max())

    # batched and alone agree up to one grey level (batch-size-dependent kernels may round differently);
    # a prompt given another prompt's vectors differs by far more, so a mix-up cannot hide in that margin
    for p, image in zip(prompts, together, strict=True):
        assert gap(generate_attack_images(pipe, [p], **SMALL)[0], image) <= 1
    swapped = generate_attack_images(pipe, [AttackPrompt("a cat", 0, (1,), vec[2])], **SMALL)[0]
    assert gap(swapped, together[0]) > 10


def test_denoising_loss_targets_v_on_v_prediction_models():
    from diffusers import DDIMScheduler

    from conceptedit.attack import denoising_loss

    sd2 = tiny_pipeline(sd2=True)
    sd2.scheduler = DDIMScheduler.from_config(sd2.scheduler.config, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    with torch.no_grad():
        cond, _ = encode(sd2, ["a cat"], False)
        loss = denoising_loss(sd2, x0, cond, t, noise)
        pred = sd2.unet(sd2.scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
    v = sd2.scheduler.get_velocity(x0, noise, t)
    assert float(loss) == pytest.approx(float(torch.nn.functional.mse_loss(pred, v)), rel=1e-6)
    assert float(loss) != pytest.approx(float(torch.nn.functional.mse_loss(pred, noise)), rel=1e-3)


def test_injection_touches_only_its_prompt(pipe):
    vector = torch.randn(1, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        plain, _ = encode(pipe, ["a red cat", "a * dog"], False)
        with inject(pipe, [Injection("a * dog", (3,), vector)]):
            injected, _ = encode(pipe, ["a red cat", "a * dog"], False)
        after, _ = encode(pipe, ["a red cat", "a * dog"], False)
    assert torch.equal(plain[0], injected[0])  # another prompt in the same batch
    assert not torch.equal(plain[1], injected[1])
    assert torch.equal(plain[1][:3], injected[1][:3])  # causal: positions before the token are unchanged
    assert torch.equal(plain, after)  # removed on exit


def test_attack_set_round_trip(tmp_path):
    vectors = torch.randn(2, 8)
    original = AttackSet(
        "soft-prompt",
        "cat",
        {"steps": 3},
        [AttackPrompt("a *", 4, (2, 3), vectors, 0.5), AttackPrompt("a cat", 5)],
        1.5,
        [1.0, 0.5],
    )
    loaded = AttackSet.load(original.save(tmp_path / "attack"))
    assert loaded.prompts[0].positions == (2, 3) and torch.equal(loaded.prompts[0].vectors, vectors)
    assert loaded.prompts[1].vectors is None and loaded.seconds_per_prompt == 0.75
    (tmp_path / "attack" / "attack.json").write_text("{")
    with pytest.raises(ConceptEditError, match="not a readable attack folder"):
        AttackSet.load(tmp_path / "attack")


# -- configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("plugin", "config"),
    [
        ("ring-a-bell", {"population": 1}),
        ("ring-a-bell", {"mutation": 1.5}),
        ("unlearndiffatk", {"k": 0}),
        ("unlearndiffatk", {"objective": "sideways"}),
        ("soft-prompt", {"steps": 0}),
        ("soft-prompt", {"placeholder": "two words"}),
        ("paraphrase", {"n_prompts": -1}),
        ("paraphrase", {"bogus": 1}),
    ],
)
def test_bad_configs_are_one_line_errors(plugin, config):
    with pytest.raises(ConceptEditError) as info:
        get_plugin(plugin)(config)
    assert "\n" not in str(info.value) and str(info.value)


def test_ring_a_bell_length_must_fit_the_tokenizer(pipe):
    with pytest.raises(ConfigError, match="does not fit"):
        get_plugin("ring-a-bell")(length=40, generations=1).attack(pipe, "cat")


def _config(**attack):
    return {
        "name": "x",
        "models": ["shapes"],
        "metrics": ["probe"],
        "edits": [{"name": "np", "plugin": "negative-prompt", "concepts": ["zorblax"]}],
        "prompt_sets": [{"name": "erasure", "builtin": "shapes-erasure", "per_role": 1}],
        "attacks": [{"name": "a", "plugin": "paraphrase", **attack}],
    }


def test_eval_config_attacks_section():
    from conceptedit.eval.config import parse_config

    cfg = parse_config(_config(config={"n_prompts": 2}))
    assert cfg.attacks[0].plugin == "paraphrase" and cfg.attacks[0].config == {"n_prompts": 2}
    for attack, match in (
        ({"plugin": "uce"}, "not an attack"),
        ({"edits": ["nope"]}, "unknown edit"),
        ({"config": {"n_prompts": "x"}}, "n_prompts"),
        ({"images": 0}, "images"),
        ({"plugin": "nonexistent"}, "unknown plugin"),
    ):
        with pytest.raises(ConfigError, match=match) as info:
            parse_config(_config(**attack))
        assert "\n" not in str(info.value)


def test_report_gives_asr_with_n_and_wilson_interval():
    from conceptedit.eval.report import attack_rows

    def group(edit, prompt_set, name, value, n):
        metric = {"value": value, "details": {"n": n}, "higher_is_better": False}
        return {"model": "m", "edit": edit, "prompt_set": prompt_set, "metrics": {f"probe.{name}": metric}}

    results = {
        "groups": [
            group("base", "attack:p[z]", "attack_success_rate", 1.0, 6),
            group("uce", "attack:p[z]", "attack_success_rate", 4 / 6, 6),
            group("base", "erasure[z]", "erased_accuracy", 1.0, 8),
            group("uce", "erasure[z]", "erased_accuracy", 0.0, 8),
        ],
        "attacks": [
            {
                "model": "m",
                "edit": "uce",
                "attack": "p",
                "concept": "z",
                "prompt_set": "attack:p[z]",
                "seconds_per_prompt": 0.1,
            }
        ],
    }
    (row,) = attack_rows(results)
    # Wilson 95 % intervals of 4/6, 6/6 and 0/8 (e.g. statsmodels proportion_confint(method="wilson"))
    assert (row["asr"].k, row["asr"].n) == (4, 6) and row["asr"].interval == pytest.approx((0.3000, 0.9032), abs=1e-4)
    assert (row["base_asr"].k, row["base_asr"].n) == (6, 6)
    assert row["base_asr"].interval == pytest.approx((0.6097, 1.0), abs=1e-4)
    assert (row["no_attack"].k, row["no_attack"].n) == (0, 8)
    assert row["no_attack"].interval == pytest.approx((0.0, 0.3244), abs=1e-4)
    assert row["seconds_per_prompt"] == 0.1
    results["attacks"][0]["prompt_set"] = "attack:other[z]"
    assert attack_rows(results)[0]["asr"] is None


def test_report_attack_chance_and_successful_attacks():
    """Attack prompts name no neighbours of their concept: their chance counts the family from the
    concept's other prompt sets (1/3 here, not present/absent's 1/2); the successes are the attack
    images in which the probe reads the concept."""
    from conceptedit.eval.report import attack_successes, chance_levels
    from conceptedit.eval.store import ImageRow

    def row(edit, prompt_set, case, role, pred, labels=None):
        return ImageRow("m", edit, prompt_set, case, case, "p", role, "character:zorblax", labels or {}, "k", "x",
                        {"probe": {"pred": {"character": pred}}})  # fmt: skip

    rows = [
        row("base", "erasure", 0, "target", "zorblax"),
        row("base", "erasure", 1, "in_domain", "quimbo", {"character": "quimbo"}),
        row("base", "erasure", 2, "in_domain", "fennik", {"character": "fennik"}),
        *[row("base", "attack:a[zorblax]", i, "attack", "zorblax") for i in range(3)],
        *[row("uce", "attack:a[zorblax]", i, "attack", p) for i, p in enumerate(["zorblax", "none", "zorblax"])],
    ]
    chances = chance_levels(rows)
    assert chances[("m", "erasure")] == pytest.approx(1 / 3)
    assert chances[("m", "attack:a[zorblax]")] == pytest.approx(1 / 3)
    found = attack_successes(rows)
    assert [r.case_number for r in found[("m", "uce", "attack:a[zorblax]")]] == [0, 2]
    assert len(found[("m", "base", "attack:a[zorblax]")]) == 3


@pytest.mark.slow
def test_eval_runs_attacks_and_reports_asr(tmp_path):
    """On the shapes model: a black-box and a white-box attack against the negative-prompt edit go
    through the runner (found, cached, generated on edit and base, scored) into results and report."""
    from conceptedit.eval.config import parse_config
    from conceptedit.eval.runner import evaluate

    data = _config()
    data["attacks"] = [
        {"name": "para", "plugin": "paraphrase", "config": {"n_prompts": 3}},
        {"name": "soft", "plugin": "soft-prompt", "config": {"steps": 3, "n_prompts": 2}, "images": 2},
    ]
    data["generation"] = {"num_inference_steps": 4, "batch_size": 8}
    data["output"] = str(tmp_path / "run")
    results = evaluate(parse_config(data), progress=False)
    runs = {r["attack"]: r for r in results["attacks"]}
    assert runs["para"]["prompt_set"] == "attack:para[zorblax]" and runs["para"]["n_prompts"] == 3
    assert runs["soft"]["prompt_set"] == "attack:soft@np[zorblax]" and runs["soft"]["white_box"]
    groups = {(g["edit"], g["prompt_set"]): g for g in results["groups"]}
    for name, n in (("attack:para[zorblax]", 3), ("attack:soft@np[zorblax]", 2)):
        for edit in ("base", "np"):
            asr = groups[(edit, name)]["metrics"]["probe.attack_success_rate"]
            assert asr["details"]["n"] == n and 0.0 <= asr["value"] <= 1.0
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Attack success rate (method × attack)" in html and "attack:soft@np" not in html.split("<h2>")[0]
    assert "<th>chance</th>" in html
    # the second run reuses the cached attack prompts and images: nothing is found or generated again
    again = evaluate(parse_config(data), progress=False)
    assert again["attacks"] == results["attacks"]
