"""The direction of an erasure, on the shipped shapes model: each erase plugin, fitted with a small budget to
erase the character "zorblax", lowers the probe's rate of zorblax on prompts that ask for it, and keeps the
rate of other concepts (another character, a shape) on prompts that ask for those. A plugin whose objective
is reversed (trains towards the concept) leaves the zorblax rate where it was and fails.

Measure: the fraction of generations (same prompts, same seeds for base and edited) whose probe label is the
prompted concept. Thresholds are relative to the unedited model at the same seeds, with margins that a decent
model meets. A character, not a shape: on v2 UCE's paper edit erases characters (word outputs far from
BOS) but not "circle" (its word output is close to BOS; docs/shapes_model.md).
"""

from __future__ import annotations

import pytest

from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

SEEDS = list(range(8))
STEPS = 10  # the model's default is 25; 10 keep the shapes readable and the test fast
TARGET = ("character", "zorblax")
TARGET_PROMPTS = ("zorblax", "a picture of zorblax")
OTHERS = (("a picture of drelva", ("character", "drelva")), ("a green square", ("shape", "square")))
ERASED_BY = 0.3  # the concept's rate must fall by at least this much
KEPT_WITHIN = 0.25  # another concept's rate may fall by at most this much

# small budgets (the paper defaults run in benchmarks/erasure_baselines.py); model presets apply underneath
BUDGETS = {
    "uce": {},
    "esd": {"iterations": 20, "num_inference_steps": 10, "lr": 1e-3},
    "fewshot-unlearning": {"images_from_model": True, "lr": 1e-3},  # the smallest lr that erases on v2
}


@pytest.fixture(scope="module")
def shapes():
    from conceptedit.datasets.shapes.probe import Probe
    from conceptedit.loading import load_pipeline

    pipe = load_pipeline("shapes", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe, Probe.load()


def rates(pipe, probe) -> dict[tuple[str, str], float]:
    """Probe rate of the prompted concept: the target's (over its prompts) and each other concept's."""
    cases = [(p, TARGET) for p in TARGET_PROMPTS] + list(OTHERS)
    prompts = [p for p, _ in cases for _ in SEEDS]
    images = generate(pipe, prompts, SEEDS * len(cases), num_inference_steps=STEPS, batch_size=16)
    predictions = probe.predict(images)
    out: dict[tuple[str, str], list[bool]] = {}
    for i, (_, (family, label)) in enumerate(cases):
        block = predictions[i * len(SEEDS) : (i + 1) * len(SEEDS)]
        out.setdefault((family, label), []).extend(p[family]["label"] == label for p in block)
    return {concept: sum(hits) / len(hits) for concept, hits in out.items()}


@pytest.fixture(scope="module")
def base_rates(shapes) -> dict[str, float]:
    got = rates(*shapes)
    assert min(got.values()) >= 0.6, f"the built-in model draws these concepts too rarely to test erasure: {got}"
    return got


def check_erases(name: str, shapes, base_rates, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CONCEPTEDIT_CACHE", str(tmp_path / "cache"))  # ItD's SAE cache stays in the test
    pipe, probe = shapes
    edit = get_plugin(name).for_pipeline(pipe, BUDGETS[name]).fit(pipe, Request(targets=[TARGET[1]]))
    with edit.apply(pipe):
        edited = rates(pipe, probe)
    assert edited[TARGET] <= base_rates[TARGET] - ERASED_BY, (name, edited, base_rates)
    for _, concept in OTHERS:
        assert edited[concept] >= base_rates[concept] - KEPT_WITHIN, (name, concept, edited, base_rates)


def test_uce_lowers_the_concept_and_keeps_others(shapes, base_rates, monkeypatch, tmp_path):
    check_erases("uce", shapes, base_rates, monkeypatch, tmp_path)


@pytest.mark.slow
def test_esd_lowers_the_concept_and_keeps_others(shapes, base_rates, monkeypatch, tmp_path):
    check_erases("esd", shapes, base_rates, monkeypatch, tmp_path)


@pytest.mark.slow
def test_fewshot_lowers_the_concept_and_keeps_others(shapes, base_rates, monkeypatch, tmp_path):
    check_erases("fewshot-unlearning", shapes, base_rates, monkeypatch, tmp_path)
