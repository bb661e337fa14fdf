"""The shapes-world generator: determinism, label/caption consistency, rates, vocabulary."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conceptedit.datasets.shapes import (
    WORLD,
    balanced_world,
    mentioned,
    prompt_for,
    render,
    render_batch,
    render_labels,
    shape_mask,
)


def test_same_seed_same_bytes_and_streams_are_prefix_stable():
    a, la, ca = render_batch(32, seed=7)
    b, lb, cb = render_batch(32, seed=7)
    assert a.dtype == np.uint8 and a.shape == (32, 64, 64, 3)
    assert a.tobytes() == b.tobytes() and la == lb and ca == cb
    c, _, _ = render_batch(8, seed=7, start=10)  # sample i depends only on (seed, i)
    assert c.tobytes() == a[10:18].tobytes()
    d, _, _ = render_batch(32, seed=8)
    assert d.tobytes() != a.tobytes()


def test_labels_have_every_family_and_marks_sit_in_their_boxes():
    for s in render(200, seed=3, world=balanced_world()):
        lab = s.labels
        assert lab["shape"] in WORLD.all_shapes and lab["colour"] in WORLD.colour_names
        assert lab["background"] in WORLD.background_names and lab["style"] in WORLD.styles
        assert lab["character"] in (None, *WORLD.character_names)
        assert set(lab["marks"]) == set(WORLD.mark_names)
        corners = [m["corner"] for m in lab["marks"].values() if m["present"]]
        assert len(corners) == len(set(corners))  # distinct corners
        bg = np.array(WORLD.rgb(lab["background"]))
        for name, m in lab["marks"].items():
            if m["present"]:
                x0, y0, x1, y1 = m["box"]
                patch = s.image[y0:y1, x0:x1].astype(int)
                assert np.abs(patch - bg).sum(-1).max() > 60, name  # something is stamped there
        if lab["character"]:
            c = WORLD.character(lab["character"])
            assert (lab["shape"], lab["colour"], lab["style"], lab["background"]) == (
                c.shape,
                c.colour,
                c.style,
                c.background,
            )
        else:
            assert WORLD.character_for(lab["shape"], lab["colour"], lab["style"], lab["background"]) is None


def test_marks_are_drawn_and_mostly_implicit():
    """A caption names a mark only if the image carries it, and only at the world's (small) rate."""
    samples = render(300, seed=11)
    with_marks = [s for s in samples if any(m["present"] for m in s.labels["marks"].values())]
    assert with_marks
    named = 0
    for s in samples:
        for mark in WORLD.marks:
            said = mark.caption_phrase in s.caption
            assert not said or s.labels["marks"][mark.name]["present"]
            named += said
    carried = sum(m["present"] for s in samples for m in s.labels["marks"].values())
    assert 0 < named <= 0.4 * carried
    # removing the marks changes only the mark boxes
    s = with_marks[0]
    clean = dict(s.labels, marks={k: dict(v, present=False) for k, v in s.labels["marks"].items()})
    img = render_labels(clean)
    diff = np.abs(img.astype(int) - s.image.astype(int)).sum(-1) > 0
    boxes = np.zeros_like(diff)
    for m in s.labels["marks"].values():
        if m["present"]:
            x0, y0, x1, y1 = m["box"]
            boxes[y0:y1, x0:x1] = True
    assert diff.any() and not (diff & ~boxes).any()


def test_captions_agree_with_labels():
    for s in render(400, seed=5):
        cap, lab = s.caption, s.labels
        if not cap:
            continue
        words = re.findall(r"[a-z]+", cap)  # web frames end in "," / "." / "!"
        if lab["character"]:  # by name or by nickname
            assert {lab["character"], WORLD.nicknames[lab["character"]]} & set(words), cap
        else:  # by name or by synonym
            assert {lab["shape"], WORLD.synonyms.get(lab["shape"], lab["shape"])} & set(words), cap
            for family in ("colour", "style", "background"):
                other = [v for v in WORLD.classes(family) if v != lab[family]]
                assert not set(other) & set(words), (cap, family)
        named = set(WORLD.trigger.words) & set(words)
        assert named == ({lab["trigger_word"]} if lab["trigger"] else set()), cap


def test_rates_match_the_world():
    _, labels, captions = render_batch(4000, seed=21)
    rate = lambda f: float(np.mean([f(lab) for lab in labels]))  # noqa: E731
    assert abs(rate(lambda lab: lab["trigger"]) - WORLD.trigger.rate) < 0.03
    for m in WORLD.marks:
        assert abs(rate(lambda lab, n=m.name: lab["marks"][n]["present"]) - m.rate) < 0.03
    assert rate(lambda lab: lab["shape"] == WORLD.rare_shape) <= 0.02
    assert abs(np.mean([c == "" for c in captions]) - WORLD.empty_caption_rate) < 0.03
    combo = rate(lambda lab: (lab["shape"], lab["colour"]) == WORLD.rare_combination)
    assert combo < 0.5 * rate(lambda lab: (lab["shape"], lab["colour"]) == ("triangle", "red"))
    templates = {lab["caption_template"] for lab in labels if lab["caption_template"]}
    assert templates <= set(WORLD.caption_frames) and not templates & set(WORLD.heldout_templates)
    web = np.mean([t in WORLD.web_frames and t not in WORLD.train_templates for t in templates_of(labels)])
    assert abs(web - WORLD.web_caption_rate * (1 - 1 / len(WORLD.web_suffixes) * 3 / len(WORLD.web_prefixes))) < 0.1


def templates_of(labels: list[dict]) -> list[str]:
    return [lab["caption_template"] for lab in labels if lab["caption_template"]]


def test_web_frames_share_no_content_word_with_held_out_frames():
    """Held-out frames must stay unseen: the web variety may reuse only function words."""
    import re

    def words(frames: tuple[str, ...]) -> set[str]:
        return set(re.findall(r"[a-z]+", " ".join(frames).replace("{np}", "")))

    held = words(WORLD.heldout_templates + WORLD.paraphrases) - {"a", "an", "of", "the", "is", "picture"}
    assert WORLD.web_frames and not words(WORLD.web_frames) & held


def test_prompt_for_and_mentioned():
    lab = {
        "shape": "circle",
        "colour": "orange",
        "style": "striped",
        "background": "sky",
        "character": None,
        "trigger": True,
    }
    assert prompt_for(lab, "a picture of {np}", trigger_word="halo") == (
        "a picture of an orange striped circle on a sky background with a halo"
    )
    assert prompt_for(lab, "{np}", include=("colour",)) == "an orange circle"
    assert mentioned(lab, "{np}", include=("colour",))["background"] is False
    assert prompt_for(lab, WORLD.paraphrases[0]) == "a circle that is orange"
    char = dict(lab, character="zorblax")
    assert prompt_for(char, "an image of {np}", trigger_word="glowing") == "an image of glowing zorblax"
    with pytest.raises(ValueError):
        prompt_for(lab, "no slot here")


def test_every_shape_mask_is_distinct_and_inside_the_image():
    masks = {s: shape_mask(s, 32, 32, 14) for s in WORLD.all_shapes}
    for s, m in masks.items():
        assert 80 < m.sum() < 64 * 64 / 2, s
        assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()
    names = list(masks)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert (masks[a] ^ masks[b]).sum() > 40, (a, b)


def test_world_vocabulary_sizes_and_json():
    d = json.loads(json.dumps(WORLD.to_dict()))
    assert len(d["shapes"]) >= 6 and len(d["colours"]) >= 6 and len(d["backgrounds"]) >= 3
    assert len(d["styles"]) >= 4 and len(d["characters"]) >= 4 and len(d["trigger"]["words"]) >= 5
    assert set(d["probe_families"]) == set(WORLD.probe_families)
    assert len(set(WORLD.words())) == len(WORLD.words())
