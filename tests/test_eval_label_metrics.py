"""LabelAccuracy: a classifier scored against the prompt rows' labels (the probe metric's generic half),
and the shapes probe metric's own rules (bare concept words, marks in any corner)."""

from __future__ import annotations

import pytest
from PIL import Image

from conceptedit.eval.metrics import METRICS, Group, LabelAccuracy
from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.runner import _with_concept
from conceptedit.eval.store import ImageRow

COLOURS = {(255, 0, 0): "red", (0, 0, 255): "blue", (0, 255, 0): "green"}


class ColourReader(LabelAccuracy):
    """A user's classifier: reads the colour family off 1×1 images (not registered)."""

    name = "colour_reader"

    def predict_labels(self, images: list[Image.Image]) -> list[dict[str, str]]:
        return [{"colour": COLOURS[image.getpixel((0, 0))]} for image in images]


def _scored(metric: LabelAccuracy, cases: list[tuple[str, str, dict[str, str], str]]) -> dict[str, object]:
    """cases: (role, concept, row labels, colour the image shows) → the metric's results by bucket."""
    rows = [
        ImageRow("m", "edit", "set", i, 0, "p", role, concept, labels, "", "", {})
        for i, (role, concept, labels, _) in enumerate(cases)
    ]
    images = [Image.new("RGB", (1, 1), next(k for k, v in COLOURS.items() if v == shown)) for *_, shown in cases]
    for row, score in zip(rows, metric.score_images(rows, images), strict=True):
        row.per_image[metric.name] = score
    group = Group("m", "edit", "set", rows, {}, lambda path: Image.new("RGB", (1, 1)))
    return {key.removeprefix(f"{metric.name}."): result for key, result in metric.compute(group).items()}


def test_buckets_follow_the_rows_roles_and_labels():
    results = _scored(
        ColourReader(),
        [
            ("target", "colour:red", {"colour": "red"}, "red"),  # erased concept still shown
            ("target", "colour:red", {"colour": "red"}, "blue"),  # erased
            ("target_paraphrase", "colour:red", {}, "blue"),
            ("attack", "colour:red", {}, "red"),
            ("in_domain", "colour:red", {"colour": "blue"}, "blue"),  # kept
            ("in_domain", "colour:red", {"colour": "green"}, "blue"),  # damaged
            ("cross_domain", "colour:red", {"colour": "green"}, "red"),  # the target family is not scored here
            ("cross_domain", "shape:circle", {"colour": "green"}, "green"),
            ("target", "", {"colour": "red"}, "red"),  # no concept: skipped
            ("target", "no family", {"colour": "red"}, "red"),  # not family:value: skipped
        ],
    )
    values = {key: result.value for key, result in results.items()}
    assert values == {
        "erased_accuracy": 0.5,
        "erased_accuracy_paraphrase": 0.0,
        "attack_success_rate": 1.0,
        "in_domain_retain": 0.5,
        "cross_domain_retain": 1.0,
    }
    assert results["erased_accuracy"].details["n"] == 2
    assert results["cross_domain_retain"].details == {"n": 1, "per_family": {"colour": 1.0}}
    assert results["erased_accuracy"].higher_is_better is False
    assert results["in_domain_retain"].higher_is_better is True


def test_attack_rows_without_a_concept_get_the_edits_target_as_a_metric_reads_it():
    row = PromptRow("an attack prompt", 0, 0, role="attack")
    # the shapes probe (registered through its entry point) knows the word: family:value, as before
    assert _with_concept(row, ["zorblax", "circle"]).concept == "character:zorblax"
    assert _with_concept(row, ["Circle"]).concept == "shape:circle"
    assert _with_concept(row, ["a cat"]).concept == "a cat"  # no metric knows it: kept as requested
    assert _with_concept(row, ["colour:red"]).concept == "colour:red"
    assert _with_concept(row, []).concept == ""


def test_the_shapes_probe_metric_reads_bare_words_and_marks_in_any_corner():
    probe = METRICS["probe"]()  # registered through its built-in entry point
    assert isinstance(probe, LabelAccuracy)
    assert probe.target_of("shape:circle") == ("shape", "circle")
    assert probe.target_of("Circle") == ("shape", "circle")  # as _with_concept leaves an attack row
    assert probe.target_of("not-a-shapes-word") is None
    from conceptedit.datasets.shapes import WORLD

    mark = WORLD.mark_names[0]
    assert probe.target_of(mark) == (mark, "present")
    assert probe.detected(mark, "present", "top_left") and not probe.detected(mark, "present", "absent")
    assert probe.detected("trigger", "present", "present") and not probe.detected("trigger", "present", "absent")
    assert not probe.detected("shape", "circle", "square")


def test_base_class_needs_a_classifier():
    with pytest.raises(NotImplementedError):
        LabelAccuracy().predict_labels([])
