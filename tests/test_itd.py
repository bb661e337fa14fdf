"""ItD on a tiny SD-architecture pipeline: the classifier gates the edit, untouched prompts stay bit
identical, touched ones change, remove() restores, the artifact round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptedit.edits import Edit, PromptClassifier
from conceptedit.errors import ArtifactError
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

CORPUS = [f"a {c} {a}" for c in ("red", "blue", "green") for a in ("cat", "dog", "bird", "fish", "car")] * 4


@pytest.fixture(scope="module")
def itd_setup(tmp_path_factory, tiny_model_dir):
    import os

    from conceptedit.loading import load_pipeline

    tmp = tmp_path_factory.mktemp("itd")
    os.environ["CONCEPTEDIT_CACHE"] = str(tmp / "cache")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    config = dict(sae_width=128, sae_k=8, train_tokens=12_000, train_warmup_steps=5, top_n=8, corpus=str(corpus),
                  train_batch_prompts=16)  # fmt: skip
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
