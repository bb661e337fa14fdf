"""Metrics: the interface and registry (``base``), a classifier-against-row-labels base class
(``labels``) and the built-in metrics, one module each (importing this package registers them).
Other packages add metrics with ``@register_metric`` or the ``conceptedit.metrics`` entry point."""

from conceptedit.eval.metrics.base import (
    BASE,
    METRICS,
    Group,
    Metric,
    MetricResult,
    ModelContext,
    create_metric,
    mean,
    register_metric,
)
from conceptedit.eval.metrics.clip import ClipFrechetDistance, ClipScore, frechet_distance, kernel_distance
from conceptedit.eval.metrics.fid import FrechetDistance
from conceptedit.eval.metrics.labels import LabelAccuracy, concept_label
from conceptedit.eval.metrics.nudenet import NudeNetCounts
from conceptedit.eval.metrics.pixels import PixelDistance

__all__ = [
    "BASE",
    "METRICS",
    "Group",
    "Metric",
    "MetricResult",
    "ModelContext",
    "create_metric",
    "mean",
    "register_metric",
    "LabelAccuracy",
    "concept_label",
    "PixelDistance",
    "ClipScore",
    "ClipFrechetDistance",
    "FrechetDistance",
    "NudeNetCounts",
    "frechet_distance",
    "kernel_distance",
]
