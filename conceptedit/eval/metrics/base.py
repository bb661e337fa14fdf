"""The metric interface and its registry. A metric scores images as they are generated (``score_images``: per-image
results are stored with each row, so a resumed run never rescores) and aggregates at the end
(``compute``: one value + details per metric name). A metric whose model cannot be loaded
offline reports itself unavailable with the reason; the run goes on. Before a model's images are
scored or aggregated, each metric gets a :class:`ModelContext` (``use_model``), so a metric can use
what that model folder ships (``clip_score``/``clip_fid`` use its CLIP) and be unavailable for one model only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from conceptedit.eval.store import ImageRow
from conceptedit.registry import Registry

BASE = "base"  # the edit name of unedited generations


@dataclass
class MetricResult:
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool | None = None
    unavailable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "details": self.details,
            "higher_is_better": self.higher_is_better,
            "unavailable": self.unavailable,
        }


@dataclass
class Group:
    """The rows of one (model, edit, prompt set), with the base rows of the same prompts and seeds."""

    model: str
    edit: str
    prompt_set: str
    rows: list[ImageRow]
    base_rows: dict[tuple[int, int], ImageRow]
    load_image: Callable[[str], Image.Image]

    def paired(self) -> list[tuple[ImageRow, ImageRow]]:
        return [
            (r, self.base_rows[(r.case_number, r.seed)]) for r in self.rows if (r.case_number, r.seed) in self.base_rows
        ]


@dataclass
class ModelContext:
    """The model whose images a metric is about to score: its source as the config names it and the
    files/folders its folder ships (``conceptedit.json`` → ``files``), e.g. a ``clip`` to score with."""

    model: str
    files: dict[str, str] = field(default_factory=dict)


class Metric:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, options: dict[str, Any] | None = None, device: torch.device | None = None) -> None:
        self.options = dict(options or {})
        self.device = device or torch.device("cpu")

    def unavailable_reason(self) -> str | None:
        """``None`` when the metric can run here, else why not (e.g. its model is not cached offline)."""
        return None

    def use_model(self, context: ModelContext) -> str | None:
        """Called before scoring or aggregating a model's images (a run may hold several models):
        ``None`` when the metric can score this model, else why not. Most metrics ignore the model."""
        return None

    def score_images(self, rows: list[ImageRow], images: list[Image.Image]) -> list[dict[str, Any]]:
        """Per-image results stored with each row (empty dicts when the metric only aggregates)."""
        return [{} for _ in rows]

    def compute(self, group: Group) -> dict[str, MetricResult]:
        raise NotImplementedError


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: add a :class:`Metric` subclass under its ``name``."""
    return METRICS.register(cls.name, cls)


def _metric_from_entry_point(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, Metric)):
        raise TypeError(f"entry point {name!r} must point at a conceptedit Metric subclass, not {obj!r}")
    if obj.name != name:
        raise TypeError(f"entry point {name!r} points at metric {obj.name!r}; use the metric's name")
    register_metric(obj)


METRICS: Registry[type[Metric]] = Registry("metric", group="conceptedit.metrics", load=_metric_from_entry_point)


def create_metric(name: str, options: dict[str, Any] | None = None, device: torch.device | None = None) -> Metric:
    from conceptedit.errors import ConfigError

    if name not in METRICS:
        raise ConfigError(METRICS.missing(name))
    return METRICS[name](options, device)


def mean(values: list[float]) -> float | None:
    """The mean, or ``None`` for no values (a metric with nothing to score reports no value)."""
    return float(np.mean(values)) if values else None
