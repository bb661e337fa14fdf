"""How the Compare tab scores a column: a **judge** turns the concept into prompt rows (roles
``target``, ``target_paraphrase``, ``in_domain``, ``cross_domain``) and images of them into rates.

- :class:`LabelJudge` (a model with a known world, e.g. the built-in shapes model): the world's
  prompt-set generator and label classifier, through the same :class:`LabelAccuracy` code as
  ``conceptedit eval``; rates with n and Wilson intervals, chance level, the verdict of
  :mod:`conceptedit.eval.verdicts`.
- :class:`ClipJudge` (any other model): CLIP score of each image against its prompt, per role,
  with a normal-approximation interval; its verdict can say ``partial``/``failed``/``damaging`` but
  never ``erased`` (a similarity score is not a detector).

A model folder names its world in ``conceptedit.json`` (``"world": "<package>"``); the world's
judge is the prompt-set generator and the label metric registered from that package (their
registry entries, built-in or by entry point), so nothing here names a particular world.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.verdicts import RULE, Rate, Verdict, chance_from_rows, verdict

from .model import DemoModel

ROLES = ("target", "target_paraphrase", "in_domain", "cross_domain")
BUCKET_OF_ROLE = {
    "target": "erased_accuracy",
    "target_paraphrase": "erased_accuracy_paraphrase",
    "in_domain": "in_domain_retain",
    "cross_domain": "cross_domain_retain",
}
COLUMN_TITLES = {
    "erased_accuracy": "erased (target)",
    "erased_accuracy_paraphrase": "paraphrase",
    "in_domain_retain": "in-domain retain",
    "cross_domain_retain": "cross-domain retain",
}
UNRELATED = ("a picture of a house", "a bowl of fruit on a table")


@dataclass
class Score:
    """One column's scores: bucket → rate (label judges) or role → (mean, low, high, n) (CLIP)."""

    rates: dict[str, Rate | None] = field(default_factory=dict)
    means: dict[str, tuple[float, float, float, int]] = field(default_factory=dict)
    unavailable: str = ""


def model_world(model: DemoModel) -> str | None:
    """The world package the model folder names in ``conceptedit.json`` (``None`` for hub ids, files)."""
    from conceptedit.loading import BUILTIN_MODELS, builtin_model_dir
    from conceptedit.toolkit import MODEL_SETTINGS_FILE

    source = model.source
    folder: Path | None = None
    if source and source in BUILTIN_MODELS:
        folder = builtin_model_dir(source)
    elif source and Path(source).is_dir():
        folder = Path(source)
    if folder is None or not (folder / MODEL_SETTINGS_FILE).is_file():
        return None
    try:
        world = json.loads((folder / MODEL_SETTINGS_FILE).read_text()).get("world")
    except (OSError, ValueError, AttributeError):
        return None
    return world if isinstance(world, str) and world else None


def _in(package: str, obj: Any) -> bool:
    module = getattr(obj, "__module__", "") or ""
    return module == package or module.startswith(package + ".")


class LabelJudge:
    """A world's prompt-set generator (``prompt_set``) and label metric (``metric``, a LabelAccuracy)."""

    kind = "label"

    def __init__(self, prompt_set: str, metric: str, per_role: int = 6, seed: int = 0) -> None:
        self.prompt_set, self.metric_name, self.per_role, self.seed = prompt_set, metric, per_role, seed
        self._metric: Any = None

    @classmethod
    def for_world(cls, world: str, **kwargs: Any) -> LabelJudge | None:
        from conceptedit.eval.metrics import METRICS, LabelAccuracy
        from conceptedit.eval.prompts import BUILTIN_PROMPT_SETS, builtin_prompt_set

        metric = next((n for n, c in METRICS.items() if _in(world, c) and issubclass(c, LabelAccuracy)), None)
        prompt_set = None
        for name in BUILTIN_PROMPT_SETS:
            try:
                if _in(world, builtin_prompt_set(name)):
                    prompt_set = name
                    break
            except Exception:  # a broken entry is reported where it is used by name
                continue
        return cls(prompt_set, metric, **kwargs) if metric and prompt_set else None

    def describe(self) -> str:
        return f"prompt set `{self.prompt_set}` ({self.per_role} per role), classifier `{self.metric_name}`"

    def rows(self, targets: list[str]) -> list[PromptRow]:
        from conceptedit.eval.prompts import builtin_prompt_set

        return builtin_prompt_set(self.prompt_set)(targets, self.per_role, self.seed)

    def grid_prompts(self, targets: list[str], preserve: list[str]) -> list[str]:
        """One prompt per role of the first target (target, paraphrase, in-domain, two unrelated)."""
        rows = self.rows(targets[:1])
        chosen = [next((r.prompt for r in rows if r.role == role), None) for role in ROLES]
        chosen += [r.prompt for r in rows if r.role == "cross_domain"][1:2]
        return [p for p in dict.fromkeys(chosen) if p]

    def metric(self) -> Any:
        if self._metric is None:
            from conceptedit.eval.metrics import create_metric

            self._metric = create_metric(self.metric_name)
        return self._metric

    def chance(self, rows: Sequence[PromptRow]) -> float | None:
        return chance_from_rows(rows)

    def score(self, rows: Sequence[PromptRow], images: Sequence[Image.Image], label: str) -> Score:
        from conceptedit.eval.metrics import Group
        from conceptedit.eval.store import ImageRow

        metric = self.metric()
        reason = metric.unavailable_reason()
        if reason:
            return Score(unavailable=reason)
        image_rows = [
            ImageRow(
                "demo",
                label,
                self.prompt_set,
                r.case_number,
                r.evaluation_seed,
                r.prompt,
                r.role,
                r.concept,
                dict(r.labels),
                "",
                "",
                {},
            )
            for r in rows
        ]
        for row, result in zip(image_rows, metric.score_images(image_rows, list(images)), strict=True):
            row.per_image[metric.name] = result
        group = Group("demo", label, self.prompt_set, image_rows, {}, lambda _: Image.new("RGB", (1, 1)))
        results = metric.compute(group)
        rates = {}
        for bucket in BUCKET_OF_ROLE.values():
            result = results.get(f"{metric.name}.{bucket}")
            rates[bucket] = Rate.of(result.value, result.details.get("n")) if result else None
        return Score(rates=rates)

    def unavailable(self) -> str | None:
        """Why this judge cannot score here (checked before any image is generated for it)."""
        return self.metric().unavailable_reason()

    def verdict(self, base: Score, edited: Score, chance: float | None) -> Verdict:
        if edited.unavailable or base.unavailable:
            return Verdict("—", [edited.unavailable or base.unavailable])
        return verdict(base.rates, edited.rates, chance)


class ClipJudge:
    """CLIP score per role on any model (the model folder's CLIP, else a cached hub CLIP)."""

    kind = "clip"
    MIN_DROP = 2.0  # CLIP-score points (0-100 scale) that count as an effect on the target
    TOLERANCE = 2.0  # the largest fall of a retained CLIP score that is not "damaging"

    def __init__(self, model: DemoModel, per_role: int = 2) -> None:
        self.model, self.per_role = model, per_role
        self._metric: Any = None

    def describe(self) -> str:
        return "CLIP score of each image against its prompt (no classifier for this model)"

    def rows(self, targets: list[str], preserve: Sequence[str] = ()) -> list[PromptRow]:
        frames = {
            "target": ("a picture of {}", "a photo of {}"),
            "target_paraphrase": ("an image showing {}", "{}, detailed illustration"),
        }
        out: list[tuple[str, str, str]] = []
        for concept in targets:
            for role, templates in frames.items():
                out += [(role, t.format(concept), concept) for t in templates[: self.per_role]]
        out += [("in_domain", f"a picture of {c}", c) for c in preserve]
        out += [("cross_domain", p, "") for p in UNRELATED[: self.per_role]]
        return [PromptRow(p, i, i, role, c) for i, (role, p, c) in enumerate(out)]

    def grid_prompts(self, targets: list[str], preserve: list[str]) -> list[str]:
        rows = self.rows(targets[:1], preserve[:1])
        return list(dict.fromkeys(r.prompt for r in rows if r.role != "target" or r.prompt.startswith("a picture")))

    def metric(self) -> Any:
        if self._metric is None:
            from conceptedit.eval.metrics import ModelContext, create_metric
            from conceptedit.loading import model_files, model_id

            self._metric = create_metric("clip_score")
            reason = self._metric.use_model(ModelContext(model_id(self.model.pipe), model_files(self.model.pipe)))
            self._reason = reason
        return self._metric

    def chance(self, rows: Sequence[PromptRow]) -> float | None:
        return None

    def unavailable(self) -> str | None:
        metric = self.metric()
        reason = self._reason or metric.unavailable_reason()
        return f"CLIP score unavailable: {reason}" if reason else None

    def score(self, rows: Sequence[PromptRow], images: Sequence[Image.Image], label: str) -> Score:
        from conceptedit.eval.store import ImageRow

        metric = self.metric()
        reason = self.unavailable()
        if reason:
            return Score(unavailable=reason)
        image_rows = [
            ImageRow(
                "demo", label, "compare", r.case_number, r.evaluation_seed, r.prompt, r.role, r.concept, {}, "", "", {}
            )
            for r in rows
        ]
        scores = [s["score"] for s in metric.score_images(image_rows, list(images))]
        means = {}
        for role in ROLES:
            values = [s for s, r in zip(scores, rows, strict=True) if r.role == role]
            if values:
                m = sum(values) / len(values)
                sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
                half = 1.96 * sd / math.sqrt(len(values))
                means[role] = (m, m - half, m + half, len(values))
        return Score(means=means)

    def verdict(self, base: Score, edited: Score, chance: float | None) -> Verdict:
        if edited.unavailable or base.unavailable:
            return Verdict("—", [edited.unavailable or base.unavailable])
        reasons, damaged = [], []
        for role in ("in_domain", "cross_domain"):
            if role in base.means and role in edited.means:
                fall = base.means[role][0] - edited.means[role][0]
                (damaged if fall > self.TOLERANCE else reasons).append(f"{role} CLIP score fell {fall:.1f}")
        if damaged:
            return Verdict("damaging", damaged + reasons)
        falls = [
            base.means[r][0] - edited.means[r][0]
            for r in ("target", "target_paraphrase")
            if r in base.means and r in edited.means
        ]
        reasons.append(
            "target CLIP score fell " + ", ".join(f"{f:.1f}" for f in falls) + " (no detector: never 'erased')"
        )
        return Verdict("partial" if falls and max(falls) >= self.MIN_DROP else "failed", reasons)


DEMO_PER_ROLE = 4  # scored prompts per role and column: 16 images per column, seconds on CPU


def judge_for(model: DemoModel, per_role: int = DEMO_PER_ROLE) -> LabelJudge | ClipJudge:
    """The model's world's label judge when it names one and it is registered, else CLIP."""
    world = model_world(model)
    judge = LabelJudge.for_world(world, per_role=per_role) if world else None
    return judge or ClipJudge(model)


def score_header(judge: LabelJudge | ClipJudge) -> list[str]:
    if isinstance(judge, LabelJudge):
        return [COLUMN_TITLES[b] for b in BUCKET_OF_ROLE.values()]
    return [f"CLIP {r}" for r in ROLES]


def score_cells(judge: LabelJudge | ClipJudge, score: Score) -> list[str]:
    """The table's cells of one column (rates with interval and n, or CLIP means with interval and n)."""
    if score.unavailable:
        return ["unavailable"] * len(score_header(judge))
    if isinstance(judge, LabelJudge):
        return [r.text() if (r := score.rates.get(b)) else "–" for b in BUCKET_OF_ROLE.values()]
    cells = []
    for role in ROLES:
        if role in score.means:
            m, lo, hi, n = score.means[role]
            cells.append(f"{m:.1f} [{lo:.1f}, {hi:.1f}] n={n}")
        else:
            cells.append("–")
    return cells


def score_record(judge: LabelJudge | ClipJudge, score: Score) -> dict[str, Any]:
    """JSON-ready scores of one column."""
    if score.unavailable:
        return {"unavailable": score.unavailable}
    if isinstance(judge, LabelJudge):
        return {b: (r.to_dict() if r else None) for b, r in score.rates.items()}
    return {
        f"clip_{role}": {"mean": m, "ci_low": lo, "ci_high": hi, "n": n} for role, (m, lo, hi, n) in score.means.items()
    }


def rule_text(judge: LabelJudge | ClipJudge) -> str:
    if isinstance(judge, LabelJudge):
        return RULE
    return (
        f"CLIP judge (no classifier for this model): **partial**: the target's CLIP score fell by ≥ "
        f"{ClipJudge.MIN_DROP:g} points · **failed**: less · **damaging**: a retained CLIP score fell by more "
        f"than {ClipJudge.TOLERANCE:g} points. A similarity score is not a detector, so never **erased**."
    )


__all__ = [
    "ClipJudge",
    "LabelJudge",
    "Score",
    "judge_for",
    "model_world",
    "rule_text",
    "score_cells",
    "score_header",
    "score_record",
]
