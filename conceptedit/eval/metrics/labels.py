"""Classifier accuracy against labels that come from the prompt rows, split UnlearnCanvas-style.

A prompt set says what each image should show: the row's ``role`` (``target``, ``target_paraphrase``,
``attack``, ``in_domain``, ``cross_domain``), its ``concept`` (``family:value``, the concept the row
was made for) and ``label_<family>`` columns. A classifier that reads families off images is all a
metric needs on top: subclass :class:`LabelAccuracy`, implement :meth:`LabelAccuracy.predict_labels`
and register it (``@register_metric`` or the ``conceptedit.metrics`` entry point). The shapes
world's ``probe`` metric is one; a user's own classifier plugs in the same way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from PIL import Image

from conceptedit.eval.metrics.base import METRICS, Group, Metric, MetricResult, mean
from conceptedit.eval.store import ImageRow

# result name -> higher is better
BUCKETS: dict[str, bool] = {
    "erased_accuracy": False,  # the target concept read back on prompts naming it
    "erased_accuracy_paraphrase": False,  # the same on held-out frames / other words for it
    "attack_success_rate": False,  # the same on attack prompts
    "in_domain_retain": True,  # other members of the target's family
    "cross_domain_retain": True,  # every other labelled family on prompts without the target
}
TARGET_ROLES = {
    "target": "erased_accuracy",
    "target_paraphrase": "erased_accuracy_paraphrase",
    "attack": "attack_success_rate",
}


class LabelAccuracy(Metric):
    """Accuracy of :meth:`predict_labels` against the rows' labels, one result per bucket
    (``<name>.erased_accuracy``, ``<name>.in_domain_retain`` …, see :data:`BUCKETS`); rows without a
    concept the metric understands (:meth:`target_of`) are skipped."""

    def predict_labels(self, images: list[Image.Image]) -> list[dict[str, str]]:
        """Per image, family → predicted label (the families the classifier reads)."""
        raise NotImplementedError

    @classmethod
    def target_of(cls, concept: str) -> tuple[str, str] | None:
        """A row's ``concept`` → ``(family, value)``; ``None`` when the metric cannot score it."""
        family, sep, value = concept.partition(":")
        return (family, value) if sep and family else None

    def detected(self, family: str, expected: str, predicted: str) -> bool:
        """Whether the prediction shows the target concept (override for looser notions of "shown")."""
        return predicted == expected

    def score_images(self, rows: list[ImageRow], images: list[Image.Image]) -> list[dict[str, Any]]:
        return [{"pred": dict(pred)} for pred in self.predict_labels(images)]

    def compute(self, group: Group) -> dict[str, MetricResult]:
        buckets: dict[str, list[float]] = defaultdict(list)
        per_family: dict[str, list[float]] = defaultdict(list)
        for row in group.rows:
            pred = row.per_image.get(self.name, {}).get("pred")
            target = self.target_of(row.concept) if row.concept else None
            if not pred or target is None:
                continue
            target_family, target_value = target
            if row.role in TARGET_ROLES:
                detected = self.detected(target_family, target_value, pred.get(target_family, ""))
                buckets[TARGET_ROLES[row.role]].append(float(detected))
            elif row.role == "in_domain":
                expected = row.labels.get(target_family)
                if expected is not None:
                    buckets["in_domain_retain"].append(float(pred.get(target_family) == expected))
            elif row.role == "cross_domain":
                for family, expected in row.labels.items():
                    if family == target_family:
                        continue
                    hit = float(pred.get(family) == expected)
                    buckets["cross_domain_retain"].append(hit)
                    per_family[family].append(hit)
        out = {}
        for key, values in buckets.items():
            details: dict[str, Any] = {"n": len(values)}
            if key == "cross_domain_retain":
                details["per_family"] = {f: mean(v) for f, v in sorted(per_family.items())}
            out[f"{self.name}.{key}"] = MetricResult(mean(values), details, BUCKETS[key])
        return out


def concept_label(concept: str) -> str:
    """``family:value`` for a bare concept word, as the first registered label-reading metric that knows
    the word reads it (the shapes probe: ``"zorblax"`` → ``"character:zorblax"``); the text unchanged
    when it already names its family or no metric knows it. The runner labels attack rows with it."""
    if ":" in concept:
        return concept
    for metric in METRICS.values():
        if isinstance(metric, type) and issubclass(metric, LabelAccuracy):
            target = metric.target_of(concept)
            if target is not None:
                return f"{target[0]}:{target[1]}"
    return concept
