"""The Inspect tab's work: per-prompt decisions of prompt-classifier edits (ItD) and the strongest
SAE features of edits that explain prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conceptedit.edits import FeatureExplainer, PromptClassifier

from .inputs import parse_prompts
from .model import DemoModel, applied
from .stack import StackEntry


@dataclass
class Inspection:
    decisions: list[dict[str, Any]]  # edit, prompt, fired, score, threshold
    features: list[dict[str, Any]]  # edit, prompt, rank, feature, activation (+ any extra keys)
    message: str


def inspect_stack(
    model: DemoModel, stack: Sequence[StackEntry], prompts: str | Sequence[str], top_n: int = 10
) -> Inspection:
    """For edits that classify prompts (ItD) and edits that explain them (SAE features)."""
    classifiers = [e for e in stack if isinstance(e.edit, PromptClassifier)]
    explainers = [e for e in stack if isinstance(e.edit, FeatureExplainer)]
    if not classifiers and not explainers:
        what = "The stack is empty." if not stack else "None of the edits in the stack can be inspected."
        return Inspection(
            [],
            [],
            f"{what} Inspection needs an edit that decides per prompt whether it intervenes "
            "(a prompt classifier, e.g. ItD) or that explains prompts by SAE features.",
        )
    prompt_list = parse_prompts(prompts)
    top_n = max(1, int(top_n or 10))
    decisions: list[dict[str, Any]] = []
    features: list[dict[str, Any]] = []
    with model.lock, applied(model, stack) as handles:
        by_entry = dict(zip((e.id for e in stack), handles, strict=True))
        for entry in classifiers:
            for d in by_entry[entry.id].classify(prompt_list):
                decisions.append(
                    {
                        "edit": entry.label,
                        "prompt": d.prompt,
                        "fired": "yes" if d.fired else "no",
                        "score": round(float(d.score), 4),
                        "threshold": round(float(d.threshold), 4),
                    }
                )
        for entry in explainers:
            for prompt in prompt_list:
                for rank, row in enumerate(by_entry[entry.id].explain(prompt, top_n), 1):
                    extra = {k: v for k, v in row.items() if k not in ("feature", "activation")}
                    features.append(
                        {
                            "edit": entry.label,
                            "prompt": prompt,
                            "rank": rank,
                            "feature": row.get("feature"),
                            "activation": round(float(row.get("activation", 0.0)), 4),
                            **extra,
                        }
                    )
    fired = sum(1 for d in decisions if d["fired"] == "yes")
    parts = []
    if classifiers:
        parts.append(f"{fired} of {len(decisions)} prompt decisions intervened")
    if explainers:
        parts.append(f"top {top_n} features of {len(prompt_list)} prompt(s)")
    return Inspection(decisions, features, "; ".join(parts) + ".")
