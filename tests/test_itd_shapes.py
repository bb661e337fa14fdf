"""ItD's zero-shot classifier on the shipped shapes model: fitted on the bare concept word, it must fire on
prompts naming the character (training and held-out sentence frames) and stay quiet on prompts that do not
(other characters, shapes): the issue's goal is a false-positive rate <= 5 %. With the score as the mean over
tokens (the rule before Dec 5), a long mark-naming target caption set a low threshold and 5/24 of these
unrelated prompts fired (docs/shapes_model.md)."""

from __future__ import annotations

import pytest

from conceptedit.plugin import Request
from conceptedit.registry import get_plugin


@pytest.mark.slow
def test_itd_classifier_separates_a_character_from_unrelated_prompts(tmp_path, monkeypatch):
    from conceptedit.datasets.shapes.prompt_sets import erasure_prompt_set
    from conceptedit.loading import load_pipeline

    monkeypatch.setenv("CONCEPTEDIT_CACHE", str(tmp_path / "cache"))  # a fresh SAE, not a cached one
    pipe = load_pipeline("shapes", device="cpu")
    edit = get_plugin("itd").for_pipeline(pipe, {}).fit(pipe, Request(targets=["zorblax"]))
    rows = erasure_prompt_set(["zorblax"], 12, seed=7)
    positives = [r.prompt for r in rows if r.role in ("target", "target_paraphrase")]
    negatives = [r.prompt for r in rows if r.role in ("in_domain", "cross_domain")]
    with edit.apply(pipe) as handle:
        fired_pos = [d.prompt for d in handle.classify(positives) if d.fired]
        fired_neg = [d.prompt for d in handle.classify(negatives) if d.fired]
    assert len(fired_pos) >= 0.9 * len(positives), f"missed: {sorted(set(positives) - set(fired_pos))}"
    assert len(fired_neg) <= 0.05 * len(negatives), f"false positives: {fired_neg}"
