"""The direction of an erasure, on the shipped shapes model: each erase plugin, fitted with a small budget to
erase "circle", lowers the probe's rate of circles on prompts that ask for one, and keeps the rate of other
shapes on prompts that ask for those. A plugin whose objective is reversed (trains towards the concept)
leaves the circle rate where it was and fails.

Measure: the fraction of generations (same prompts, same seeds for base and edited) whose probe label is the
prompted shape. Thresholds are relative to the unedited model at the same seeds, with margins that a decent
model meets (measured on the built-in model of 2026-12-03, 10 sampling steps, 8 seeds: base 1.0 everywhere;
UCE circle 0.19 / others >= 0.88, ESD 0.25 / 1.0, few-shot 0.0 / 1.0).
"""

from __future__ import annotations

import pytest

from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

SEEDS = list(range(8))
STEPS = 10  # the model's default is 25; 10 keep the shapes readable and the test fast
TARGET = "circle"
TARGET_PROMPTS = ("a red circle", "a blue circle on a white background")
OTHERS = (("a green square", "square"), ("a yellow triangle on a black background", "triangle"))
ERASED_BY = 0.3  # the concept's rate must fall by at least this much
KEPT_WITHIN = 0.25  # another shape's rate may fall by at most this much

# small budgets (the paper defaults run in benchmarks/erasure_baselines.py); model presets apply underneath
BUDGETS = {
    "uce": {},
    "esd": {"iterations": 20, "num_inference_steps": 10, "lr": 1e-3},
    "fewshot-unlearning": {"images_from_model": True},
}


@pytest.fixture(scope="module")
def shapes():
    from conceptedit.datasets.shapes.probe import Probe
    from conceptedit.loading import load_pipeline

    pipe = load_pipeline("shapes", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe, Probe.load()


def rates(pipe, probe) -> dict[str, float]:
    """Probe rate of the prompted shape: the target's (over its prompts) and each other shape's."""
    cases = [(p, TARGET) for p in TARGET_PROMPTS] + list(OTHERS)
    prompts = [p for p, _ in cases for _ in SEEDS]
    images = generate(pipe, prompts, SEEDS * len(cases), num_inference_steps=STEPS, batch_size=16)
    labels = [p["shape"]["label"] for p in probe.predict(images)]
    out: dict[str, list[bool]] = {}
    for i, (_, shape) in enumerate(cases):
        out.setdefault(shape, []).extend(label == shape for label in labels[i * len(SEEDS) : (i + 1) * len(SEEDS)])
    return {shape: sum(hits) / len(hits) for shape, hits in out.items()}


@pytest.fixture(scope="module")
def base_rates(shapes) -> dict[str, float]:
    got = rates(*shapes)
    assert min(got.values()) >= 0.6, f"the built-in model draws these shapes too rarely to test erasure: {got}"
    return got


def check_erases(name: str, shapes, base_rates, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CONCEPTEDIT_CACHE", str(tmp_path / "cache"))  # ItD's SAE cache stays in the test
    pipe, probe = shapes
    edit = get_plugin(name).for_pipeline(pipe, BUDGETS[name]).fit(pipe, Request(targets=[TARGET]))
    with edit.apply(pipe):
        edited = rates(pipe, probe)
    assert edited[TARGET] <= base_rates[TARGET] - ERASED_BY, (name, edited, base_rates)
    for _, shape in OTHERS:
        assert edited[shape] >= base_rates[shape] - KEPT_WITHIN, (name, shape, edited, base_rates)


def test_uce_lowers_the_concept_and_keeps_others(shapes, base_rates, monkeypatch, tmp_path):
    check_erases("uce", shapes, base_rates, monkeypatch, tmp_path)


@pytest.mark.slow
def test_esd_lowers_the_concept_and_keeps_others(shapes, base_rates, monkeypatch, tmp_path):
    check_erases("esd", shapes, base_rates, monkeypatch, tmp_path)


@pytest.mark.slow
def test_fewshot_lowers_the_concept_and_keeps_others(shapes, base_rates, monkeypatch, tmp_path):
    check_erases("fewshot-unlearning", shapes, base_rates, monkeypatch, tmp_path)
