"""``pixel_distance``: paired pixel differences of edited vs base images (a runtime edit that does not
fire must leave images bit-identical)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from conceptedit.eval.metrics.base import BASE, Group, Metric, MetricResult, mean, register_metric


@register_metric
class PixelDistance(Metric):
    """Mean absolute pixel difference (0–1) between edited and base images of the same prompt and
    seed, per role; ``identical`` is the fraction of bit-identical pairs (runtime edits that do not
    fire must leave images untouched)."""

    name = "pixel_distance"
    description = "paired |edited - base| in pixels, and the fraction of identical images"

    def compute(self, group: Group) -> dict[str, MetricResult]:
        if group.edit == BASE:
            return {}
        by_role: dict[str, list[float]] = defaultdict(list)
        identical: list[float] = []
        for row, base in group.paired():
            a = np.asarray(group.load_image(row.image_path), dtype=np.float32) / 255.0
            b = np.asarray(group.load_image(base.image_path), dtype=np.float32) / 255.0
            distance = float(np.abs(a - b).mean())
            by_role[row.role or "all"].append(distance)
            identical.append(float(distance == 0.0))
        all_values = [v for values in by_role.values() for v in values]
        details = {
            "per_role": {k: mean(v) for k, v in sorted(by_role.items())},
            "n": len(all_values),
            "identical_fraction": mean(identical),
        }
        return {self.name: MetricResult(mean(all_values), details, None)}
