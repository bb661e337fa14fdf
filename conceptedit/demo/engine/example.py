"""The ready example a newcomer's page opens with: a concept, preserved concepts and fast methods,
preselected so that pressing **Compare** shows an erasure within seconds on CPU.

UCE (closed form, seconds) and the negative-prompt baseline (no fitting) are the fast methods;
the example concept is used only where the model's judge knows it (its world's prompt set accepts
it), so a model of another world opens with the methods chosen and the concept left to the user.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import DemoModel
from .plugins import usable
from .scoring import LabelJudge, judge_for

FAST_METHODS = ("uce", "negative-prompt")
EXAMPLE_TARGET = "zorblax"
EXAMPLE_PRESERVE = "quimbo"


@dataclass(frozen=True)
class Example:
    targets: str
    preserve: str
    methods: tuple[str, ...]
    prompts: str
    seeds: str = "0"


def first_example(model: DemoModel) -> Example:
    """The example for ``model``: fast usable methods; the example concept and its grid prompts when
    the model's judge knows the concept, else empty concept and prompts."""
    methods = tuple(m for m in FAST_METHODS if usable(m))
    judge = judge_for(model)
    if isinstance(judge, LabelJudge):
        try:
            prompts = judge.grid_prompts([EXAMPLE_TARGET], [EXAMPLE_PRESERVE])
        except Exception:  # the world does not know the example concept
            prompts = []
        if prompts:
            return Example(EXAMPLE_TARGET, EXAMPLE_PRESERVE, methods, "\n".join(prompts))
    return Example("", "", methods, "")
