"""Rates, chance levels, verdicts and the report's colours (conceptedit.eval.verdicts): an unchanged
rate of a concept to erase is a failure, never a neutral or green result."""

from __future__ import annotations

import pytest

from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.verdicts import Rate, chance_from_rows, change_class, verdict, wilson


def test_wilson_interval_matches_the_formula_and_stays_in_0_1():
    lo, hi = wilson(0, 6)
    assert lo == 0.0 and hi == pytest.approx(0.3903, abs=1e-4)
    lo, hi = wilson(3, 6)
    assert (lo, hi) == pytest.approx((0.1876, 0.8124), abs=1e-4)
    lo, hi = wilson(6, 6)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.6097, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert Rate.of(0.5, 6) == Rate(3, 6) and Rate.of(None, 6) is None and Rate.of(0.5, 0) is None
    assert Rate(3, 6).text() == "0.50 [0.19, 0.81] n=6"


def _rates(erased, paraphrase, in_domain=1.0, cross=1.0, n=10):
    return {
        "erased_accuracy": Rate.of(erased, n),
        "erased_accuracy_paraphrase": Rate.of(paraphrase, n),
        "in_domain_retain": Rate.of(in_domain, n),
        "cross_domain_retain": Rate.of(cross, n),
    }


@pytest.mark.parametrize(
    "edited, expected",
    [
        (_rates(0.1, 0.2), "erased"),  # both at or below chance (0.2)
        (_rates(0.1, 0.7), "partial"),  # paraphrases bring it back
        (_rates(0.6, 0.9), "partial"),  # fell by >= 0.2 but not to chance
        (_rates(1.0, 1.0), "failed"),  # no change is a failure
        (_rates(0.9, 0.9), "failed"),  # a small change too
        (_rates(0.0, 0.0, in_domain=0.5), "damaging"),  # erased, but its neighbours went with it
        (_rates(1.0, 1.0, cross=0.7), "damaging"),
    ],
)
def test_verdict_rule(edited, expected):
    base = _rates(1.0, 0.9)
    result = verdict(base, edited, chance=0.2)
    assert result.word == expected, result.reasons
    assert result.reasons


def test_verdict_is_untestable_when_the_original_does_not_show_the_concept():
    assert verdict(_rates(0.1, 0.1), _rates(0.0, 0.0), chance=0.2).word == "untestable"
    # without a chance level only drops count: never "erased"
    assert verdict(_rates(1.0, 1.0), _rates(0.0, 0.0), chance=None).word == "partial"


def test_report_colours_an_unchanged_erased_rate_as_failure():
    assert change_class("probe.erased_accuracy", 1.0, 1.0, False, chance=0.2) == "bad"
    assert change_class("probe.erased_accuracy", 1.0, 1.0, False) == "bad"
    assert change_class("probe.erased_accuracy_paraphrase", 0.9, 0.95, False, chance=0.2) == "bad"
    assert change_class("probe.erased_accuracy", 1.0, 0.6, False, chance=0.2) == "partial"
    assert change_class("probe.erased_accuracy", 1.0, 0.1, False, chance=0.2) == "good"
    assert change_class("probe.erased_accuracy", 0.1, 0.1, False, chance=0.2) == ""  # untestable
    assert change_class("probe.in_domain_retain", 1.0, 1.0, True) == "good"
    assert change_class("probe.in_domain_retain", 1.0, 0.8, True) == "bad"
    assert change_class("pixel_distance", 0.1, 0.1, False) == ""
    assert change_class("clip_score", 30.0, 25.0, True) == "bad"


def test_chance_counts_the_family_members_of_the_prompt_set():
    rows = [
        PromptRow("a picture of zorblax", 0, 0, "target", "character:zorblax", {"character": "zorblax"}),
        *[
            PromptRow(f"a picture of {c}", 0, i, "in_domain", "character:zorblax", {"character": c})
            for i, c in enumerate(["quimbo", "fizzle", "blorp"], 1)
        ],
        PromptRow("a red square", 0, 9, "cross_domain", "character:zorblax", {"shape": "square"}),
    ]
    assert chance_from_rows(rows) == pytest.approx(1 / 4)
    detector = [PromptRow("a halo", 0, 0, "target", "trigger:present", {"trigger": "present"})]
    assert chance_from_rows(detector) == pytest.approx(0.5)
    assert chance_from_rows([PromptRow("x", 0, 0, "cross_domain", "", {})]) is None


def test_wilson_interval_always_contains_the_rate():
    """k = 0 and k = n put a bound a rounding error beyond the rate (e.g. 6/6 -> hi 0.9999999999999999)
    unless clamped; the report's error bars are then negative and matplotlib refuses them."""
    for n in range(1, 60):
        for k in range(n + 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
