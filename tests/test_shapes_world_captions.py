"""Caption rates a training run can set: backgrounds read "with …" and present marks are named."""

from __future__ import annotations

import json
import re
from dataclasses import replace

from conceptedit.datasets.shapes import WORLD, prompt_for, render
from conceptedit.pipelines.shapes import model_dir
from conceptedit.pipelines.shapes_corpus import CORPUS_FILE, corpus

MARK_WORDS = {"watermark": "watermark", "qr": "qr code", "glyphs": "glyphs"}


def test_backgrounds_read_with_and_present_marks_are_named_at_their_rates():
    world = replace(WORLD, background_with_rate=0.3, mark_caption_rate=0.2)
    samples = [s for s in render(3000, seed=4, world=world) if s.caption]
    with_bg = [s for s in samples if re.search(r"\b(on|with) an? \w+ background", s.caption)]
    share = sum(bool(re.search(r"\bwith an? \w+ background", s.caption)) for s in with_bg) / len(with_bg)
    assert 0.24 <= share <= 0.36, share
    for name, phrase in MARK_WORDS.items():
        present = [s for s in samples if s.labels["marks"][name]["present"]]
        absent = [s for s in samples if not s.labels["marks"][name]["present"]]
        named = sum(phrase in s.caption for s in present) / len(present)
        assert 0.14 <= named <= 0.26, (name, named)
        assert not any(phrase in s.caption for s in absent)  # only what the image carries is named


def test_the_world_captions_at_the_rates_the_shipped_unet_was_trained_on():
    """The shipped model (v2.1) fine-tuned its UNet with both rates set; the world must say so, since the
    prompt corpus, Geom-Erasing's data setting and the blind-spot analysis caption from it."""
    report = json.loads((model_dir() / "training_report.json").read_text())
    assert report["caption_rates"] == {k: getattr(WORLD, k) for k in report["caption_rates"]}
    assert WORLD.background_with_rate > 0 and WORLD.mark_caption_rate > 0
    corpus_text = (model_dir() / CORPUS_FILE).read_text(encoding="utf-8")
    assert all(p in corpus_text for p in MARK_WORDS.values()) and " with a black background" in corpus_text


def test_with_frames_put_with_before_the_object_at_their_rate_and_leave_other_captions_unchanged():
    """A "with" frame ("a picture with {np}") replaces the frame of ``with_frame_rate`` of the captions; a world
    that does not set the rate captions bit for bit as before (the shipped corpus depends on it)."""
    world = replace(WORLD, with_frame_rate=0.2)
    samples = [s for s in render(2000, seed=6, world=world) if s.caption]
    share = sum(s.labels["caption_template"] in WORLD.with_frames for s in samples) / len(samples)
    assert 0.16 <= share <= 0.24, share
    assert set(WORLD.with_frames) <= set(world.caption_frames) and not set(WORLD.with_frames) & set(
        WORLD.caption_frames
    )
    assert not set(WORLD.with_frames) & set(WORLD.heldout_templates)
    unchanged = render(300, seed=6, world=replace(WORLD, with_frames=()))
    assert [s.caption for s in unchanged] == [s.caption for s in render(300, seed=6)]


def test_rare_shape_subset_keeps_the_rare_shape_at_the_asked_share_and_everything_else():
    import numpy as np

    from conceptedit.pipelines.shapes_train import rare_shape_subset

    labels = [s.labels for s in render(4000, seed=8)]
    rare = [i for i, lab in enumerate(labels) if lab["shape"] == WORLD.rare_shape]
    assert len(rare) >= 30
    for keep, low, high in ((0.0, 0, 0), (1.0, len(rare), len(rare)), (0.5, 0.3 * len(rare), 0.7 * len(rare))):
        kept = rare_shape_subset(labels, keep, np.random.default_rng(0))
        assert set(range(len(labels))) - set(rare) <= set(kept)  # every other image stays
        assert low <= len(set(kept) & set(rare)) <= high, keep


def test_prompt_for_writes_the_with_background_and_the_mark_clause():
    labels = {
        "shape": "circle", "colour": "red", "style": "solid", "background": "black", "character": None,
        "trigger": True, "trigger_word": "halo", "background_with": True, "named_marks": ["watermark", "qr"],
    }  # fmt: skip
    assert prompt_for(labels, "a picture of {np}", ("colour", "background", "trigger")) == (
        "a picture of a red circle with a black background with a halo, with a watermark and a qr code"
    )


def test_the_shipped_prompt_corpus_is_the_worlds_caption_stream():
    """prompts.txt must be what the world's captions are (plugins sample it as the training distribution)."""
    settings = json.loads((model_dir() / "conceptedit.json").read_text())
    assert settings["files"]["prompt_corpus"] == CORPUS_FILE
    assert (model_dir() / CORPUS_FILE).read_text(encoding="utf-8").splitlines() == corpus()


def test_the_shapes_detector_names_each_mark_with_the_words_of_the_captions():
    """Geom-Erasing writes a mark with the detector's phrase: it must be what the captions say."""
    from conceptedit.datasets.shapes.detector import ShapesMarkDetector

    named = [s for s in render(600, seed=3, world=replace(WORLD, mark_caption_rate=0.5)) if s.caption]
    for mark in WORLD.marks:
        phrase = ShapesMarkDetector.phrases[mark.name]
        carry = [s for s in named if phrase in s.caption]
        assert len(carry) >= 10 and all(s.labels["marks"][mark.name]["present"] for s in carry), mark.name
