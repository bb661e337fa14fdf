"""The ``probe`` metric: the shapes-world probe as a :class:`~conceptedit.eval.metrics.LabelAccuracy`
(labels from the prompt rows, results split UnlearnCanvas-style: erased / paraphrase / attack /
in-domain / cross-domain accuracy). Registered through the ``conceptedit.metrics`` entry point
(``conceptedit.registry.BUILT_IN_ENTRY_POINTS``), as another package's metric would be.

What is shapes-specific is here, not in the core: which family a bare word of the world belongs to
(``"zorblax"`` → ``character:zorblax``; the runner asks through ``concept_label`` when it labels attack
rows with the edit's target), and an implicit mark counts as shown in any corner.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from conceptedit.errors import ConceptEditError
from conceptedit.eval.metrics import LabelAccuracy, register_metric


def _label_of(prediction: Any) -> str:
    if isinstance(prediction, dict):
        return str(prediction.get("label", prediction.get("value")))
    return str(prediction)


@register_metric
class ProbeAccuracy(LabelAccuracy):
    """Probe accuracy on the shapes world (``options.path``: another probe folder)."""

    name = "probe"
    description = "shapes-world probe accuracy: erased / paraphrase / in-domain / cross-domain"

    def __init__(self, options: dict[str, Any] | None = None, device: torch.device | None = None) -> None:
        super().__init__(options, device)
        self._probe = None

    def unavailable_reason(self) -> str | None:
        try:
            self.probe()
        except Exception as exc:  # the probe ships with the shapes model
            return f"the shapes probe could not be loaded: {exc}"
        return None

    def probe(self) -> Any:
        if self._probe is None:
            from conceptedit.datasets.shapes.probe import Probe

            self._probe = Probe.load(self.options.get("path"))
        return self._probe

    def predict_labels(self, images: list[Image.Image]) -> list[dict[str, str]]:
        return [{family: _label_of(p) for family, p in pred.items()} for pred in self.probe().predict(images)]

    @classmethod
    def target_of(cls, concept: str) -> tuple[str, str] | None:
        if ":" in concept:
            return super().target_of(concept)
        from conceptedit.datasets.shapes.prompt_sets import concept_family

        try:
            return concept_family(concept)
        except ConceptEditError:  # not a word of the shapes world: nothing to score
            return None

    def detected(self, family: str, expected: str, predicted: str) -> bool:
        if expected == "present" and family != "trigger":  # implicit marks: any corner counts
            return predicted != "absent"
        return predicted == expected
