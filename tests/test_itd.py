"""ItD on a tiny SD-architecture pipeline: the classifier gates the edit, untouched prompts stay bit
identical, touched ones change, remove() restores, the artifact round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptedit.edits import Edit, PromptClassifier
from conceptedit.errors import ArtifactError, ConceptEditError
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

CORPUS = [f"a {c} {a}" for c in ("red", "blue", "green") for a in ("cat", "dog", "bird", "fish", "car")] * 4


@pytest.fixture(scope="module")
def itd_setup(tmp_path_factory, tiny_model_dir):
    from conceptedit.loading import load_pipeline

    tmp = tmp_path_factory.mktemp("itd")
    with pytest.MonkeyPatch.context() as env:  # the SAE cache goes to a temporary folder, for this module only
        env.setenv("CONCEPTEDIT_CACHE", str(tmp / "cache"))
        yield _fit(tmp, tiny_model_dir, load_pipeline)


def _fit(tmp, tiny_model_dir, load_pipeline):
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    # τ from the template frames only: on a random tiny encoder, the diverse frames and corpus prompts
    # (the default) give a τ low enough to fire on almost every prompt, and this test needs quiet ones
    config = dict(
        sae_width=128,
        sae_k=8,
        train_tokens=12_000,
        train_warmup_steps=5,
        top_n=8,
        corpus=str(corpus),
        train_batch_prompts=16,
        target_templates=False,
        target_from_corpus=0,
    )
    edit = get_plugin("itd")(config).fit(pipe, Request(targets=["cat"]))
    return pipe, edit


def image(pipe, prompt: str) -> np.ndarray:
    return np.asarray(generate(pipe, [prompt], [0])[0])


def test_classifier_gates_the_edit(itd_setup, tmp_path):
    pipe, edit = itd_setup
    assert edit.manifest.extra["n_features"] > 0 and edit.tau > 0
    candidates = ["a blue dog", "a green car", "a red fish", "a blue bird", "a green dog", "a red car"]
    with edit.apply(pipe) as handle:
        assert isinstance(handle.edit, PromptClassifier)
        decisions = handle.classify(["a photo of cat", *candidates])
        assert decisions[0].fired and decisions[0].score >= decisions[0].threshold
        quiet = [d.prompt for d in decisions[1:] if not d.fired]
        assert len(quiet) >= 2, f"fewer than two candidates stayed below tau: {decisions}"
        features = handle.explain("a photo of cat", top_n=32)
        assert any(f["erased"] for f in features)
    before_cat, before_quiet = image(pipe, "a photo of cat"), image(pipe, quiet[0])
    with edit.apply(pipe):
        after_cat, after_quiet = image(pipe, "a photo of cat"), image(pipe, quiet[0])
        # batches with CFG and negative prompts go through the same ordinary call
        batch = generate(pipe, ["a photo of cat", quiet[0]], [0, 0], negative_prompt=quiet[1])
    assert not np.array_equal(before_cat, after_cat), "a prompt that fires must change"
    assert np.array_equal(before_quiet, after_quiet), "a prompt below tau must be bit-identical"
    plain = generate(pipe, ["a photo of cat", quiet[0]], [0, 0], negative_prompt=quiet[1])
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(plain[0]))
    assert np.array_equal(np.asarray(batch[1]), np.asarray(plain[1]))
    assert np.array_equal(image(pipe, "a photo of cat"), before_cat), "remove() restores"


def test_artifact_round_trip(itd_setup, tmp_path):
    pipe, edit = itd_setup
    edit.save(tmp_path / "itd")
    loaded = Edit.load(tmp_path / "itd")
    assert torch.equal(loaded.features, edit.features) and loaded.tau == edit.tau
    prompts = ["a photo of cat", "a blue dog", "cat"]
    with loaded.apply(pipe) as handle:
        from_disk = handle.classify(prompts)
    with edit.apply(pipe) as handle:
        in_memory = handle.classify(prompts)
    assert [d.fired for d in from_disk] == [d.fired for d in in_memory]
    assert [d.score for d in from_disk] == pytest.approx([d.score for d in in_memory])
    with pytest.raises(ArtifactError):
        type(edit)(edit.manifest, {k: v for k, v in edit.tensors.items() if k != "features"})


def test_classify_needs_an_applied_edit(itd_setup):
    _, edit = itd_setup
    from conceptedit.errors import ConceptEditError

    with pytest.raises(ConceptEditError, match="apply the itd edit"):
        edit.classify(["a cat"])


def test_classify_reads_the_unedited_activations(itd_setup):
    """The classifier must score the block's own output, not the output the edit already changed."""
    pipe, edit = itd_setup
    from conceptedit.plugins.itd import _layer_output, _tokenize, layer_name

    prompts = ["a photo of cat", "cat", "a blue dog"]
    with torch.no_grad():
        hidden = _layer_output(pipe.text_encoder, layer_name(edit.manifest.extra["layer"]), _tokenize(pipe, prompts))
        expected = edit.scores(hidden).tolist()
    with edit.apply(pipe) as handle:
        got = [d.score for d in handle.classify(prompts)]
    assert got == pytest.approx(expected)
    assert got[0] >= edit.tau


def test_edit_leaves_the_bos_token_alone(itd_setup):
    """On a prompt that fires, the edited block output is bit-identical to the unedited one at BOS (position
    0, the attention sink every prompt shares) while a concept token's output changes."""
    pipe, edit = itd_setup
    from conceptedit.plugins.itd import _layer_output, _tokenize, layer_name

    name, ids = layer_name(edit.manifest.extra["layer"]), _tokenize(pipe, ["a photo of cat"])
    with torch.no_grad():
        plain = _layer_output(pipe.text_encoder, name, ids)
        with edit.apply(pipe) as handle:
            assert handle.classify(["a photo of cat"])[0].fired
            edited = _layer_output(pipe.text_encoder, name, ids)  # our hook runs after the edit's
    assert torch.equal(edited[:, 0], plain[:, 0]), "the edit changed the BOS token"
    changed = (edited[0] != plain[0]).any(dim=-1)
    assert changed[1:].any(), "the edit changed no token at all: the check above shows nothing"


HALO = "glowing|radiant|shining|luminous|halo|aura"
RETAIN_CORPUS = [
    "a radiant circle",
    "a red circle with an aura",
    "zorblax on a sky background",
    "a glowing star",
    "a blue square",
    "zorb in the picture",
    "a Halo, big",
    "a green disc",
    "a luminous cross",
]


def test_retain_set_excludes_the_concepts_other_words():
    """Corpus prompts with any word of the concept (targets, and groups that contain a target) stay out of
    the retain set; groups of other concepts do not apply; plain words always do."""
    itd = get_plugin("itd")
    plugin = itd({"retain_from_corpus": 100, "retain_exclude": [HALO, "zorblax|zorb"]})
    retain = plugin.retain_prompts(Request(targets=["glowing", "halo"]), RETAIN_CORPUS)
    assert retain == ["zorblax on a sky background", "a blue square", "zorb in the picture", "a green disc"]
    retain = plugin.retain_prompts(Request(targets=["zorblax"]), RETAIN_CORPUS)
    assert "zorb in the picture" not in retain and "zorblax on a sky background" not in retain
    assert "a radiant circle" in retain and "a glowing star" in retain  # the halo group is not zorblax's
    plain = itd({"retain_from_corpus": 100, "retain_exclude": ["disc"]})
    assert "a green disc" not in plain.retain_prompts(Request(targets=["zorblax"]), RETAIN_CORPUS)
    # without the list only the literal target words are filtered (punctuation and case ignored)
    bare = itd({"retain_from_corpus": 100}).retain_prompts(Request(targets=["glowing", "halo"]), RETAIN_CORPUS)
    assert "a glowing star" not in bare and "a Halo, big" not in bare and "a radiant circle" in bare
    # explicit retain prompts and preserve concepts are the user's choice: never filtered
    asked = plugin.retain_prompts(Request(targets=["halo"], retain_prompts=["a radiant moon"]), RETAIN_CORPUS)
    assert asked[0] == "a radiant moon"
    with pytest.raises(ConceptEditError, match="retain_exclude"):
        itd({"retain_exclude": ["|"]})


def test_target_prompts_are_diverse():
    """F and τ are fitted on the given prompts plus template frames and corpus prompts naming a target."""
    from conceptedit.plugins.itd import DIVERSE_TEMPLATES, TEMPLATES

    itd = get_plugin("itd")
    request = Request(targets=["halo"], prompts=["a picture of a halo"])
    prompts = itd({"target_from_corpus": 1}).target_prompts(request, RETAIN_CORPUS)
    assert prompts[0] == "a picture of a halo"
    assert {t.format("halo") for t in TEMPLATES + DIVERSE_TEMPLATES} <= set(prompts)
    assert prompts[-1] == "a Halo, big" and len(prompts) == len(set(prompts))
    only = itd({"target_templates": False, "target_from_corpus": 0}).target_prompts(request, RETAIN_CORPUS)
    assert only == ["a picture of a halo"]


def test_fit_uses_the_diverse_target_set(itd_setup):
    from conceptedit.plugins.itd import DIVERSE_TEMPLATES, TEMPLATES

    _, edit = itd_setup  # fitted with target_templates=False, target_from_corpus=0
    assert edit.manifest.extra["n_target_prompts"] == len(TEMPLATES)
    plugin = get_plugin("itd")()  # the defaults: template and diverse frames plus corpus prompts naming a target
    naming_cat = sorted({p for p in CORPUS if "cat" in p.split()})
    prompts = plugin.target_prompts(Request(targets=["cat"]), CORPUS)
    assert len(prompts) == len(TEMPLATES + DIVERSE_TEMPLATES) + len(naming_cat)
    assert set(naming_cat) <= set(prompts) and "a photo of cat" in prompts


def test_retain_prompts_filter_features(itd_setup):
    """Latents among the top ones of any retain prompt are not erased, however strongly the target uses them."""
    pipe, edit = itd_setup
    from conceptedit.plugins.itd import TEMPLATES, _layer_output, _tokenize, layer_name, top_latents

    plugin = get_plugin("itd")(edit.manifest.config)
    layer = int(edit.manifest.extra["layer"])
    targets = [t.format("cat") for t in TEMPLATES]
    retain = [t.format(c) for c in ("dog", "bird", "red car") for t in TEMPLATES[:4]]
    with torch.no_grad():
        hidden = _layer_output(pipe.text_encoder, layer_name(layer), _tokenize(pipe, retain))
    retained = set().union(*top_latents(edit.sae, hidden, plugin.config.top_n))
    unfiltered = set(plugin.interpret(edit.sae, pipe, layer, targets, []).tolist())
    features = set(plugin.interpret(edit.sae, pipe, layer, targets, retain).tolist())
    assert unfiltered & retained, "no overlap between target and retain latents: the test shows nothing"
    assert features == unfiltered - retained


def test_score_rule_is_max_or_mean_over_tokens_after_bos(itd_setup):
    """s(p) is the per-token squared change (mean over channels), then the max (default) or the mean over
    tokens t >= 1; an artifact saved before the rule was recorded keeps the mean it was calibrated with."""
    _, edit = itd_setup
    assert edit.manifest.extra["score"] == "max"
    delta = torch.zeros(2, 4, 3)
    delta[0, 0] = 100.0  # BOS never counts
    delta[0, 2] = 2.0  # per-token mean over channels: 4
    delta[1, 1:] = 1.0  # every token 1
    extra = edit.manifest.extra
    try:
        assert edit.scores(torch.zeros(2, 4, 3), delta).tolist() == pytest.approx([4.0, 1.0])
        extra["score"] = "mean"
        assert edit.scores(torch.zeros(2, 4, 3), delta).tolist() == pytest.approx([4.0 / 3, 1.0])
        del extra["score"]
        assert edit.score_rule == "mean"
    finally:
        extra["score"] = "max"


def test_unknown_score_rule_is_a_clear_error(itd_setup):
    _, edit = itd_setup
    with pytest.raises(ArtifactError, match="extra.score"):
        extra = {**edit.manifest.extra, "score": "median"}
        type(edit)(type(edit.manifest)(**{**edit.manifest.__dict__, "extra": extra}), edit.tensors)
    with pytest.raises(ValueError, match="score"):
        get_plugin("itd")({"score": "median"})


def test_threshold_ignores_targets_the_feature_set_does_not_reach():
    from conceptedit.plugins.itd import threshold

    assert threshold(torch.tensor([5.0, 0.0, 2.0, 3.0]), 0.99) == (pytest.approx(1.98), 1)
    assert threshold(torch.tensor([4.0, 2.0]), 0.5) == (pytest.approx(1.0), 0)
    with pytest.raises(ConceptEditError, match="no target prompt activates"):
        threshold(torch.zeros(3), 0.99)
