"""Reading one arm of ``benchmarks/geom_erasing.py``: mark rates with Wilson intervals, the probe's accuracy
and agreement with the base, CLIP score, the pooled row of a one-edit-per-mark arm, the detector's quality on
held-out renders, and the image grid."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from conceptedit.datasets.shapes import WORLD, render
from conceptedit.datasets.shapes.detector import ShapesMarkDetector, ground_truth_boxes
from conceptedit.detectors import box_iou
from conceptedit.eval.metrics.clip import ClipScore
from conceptedit.eval.verdicts import wilson
from conceptedit.plugins._geom_erasing_fit import covered_cells
from conceptedit.plugins.geom_erasing import GeomErasingConfig

MARKS = list(WORLD.mark_names)
FAMILIES = ("shape", "colour", "background", "style")
STEER_CELL = 0  # the steering control asks for the watermark in the top-left cell


def rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": round(k / n, 4), "ci95": [round(lo, 4), round(hi, 4)]}


def detector_quality(detector: ShapesMarkDetector, n: int = 600) -> dict[str, Any]:
    samples = render(n, seed=4242)
    out: dict[str, Any] = {}
    for side in (64, 32):
        images = [s.pil().resize((side, side), Image.BOX) if side != 64 else s.pil() for s in samples]
        found = detector.detect(images)
        per = {}
        for m in MARKS:
            correct, ious = 0, []
            for s, f in zip(samples, found, strict=True):
                gt = ground_truth_boxes(s.labels)[m]
                correct += (gt is not None) == f[m].present
                if gt is not None:
                    ious.append(box_iou(gt, f[m].box) if f[m].present else 0.0)
            per[m] = {"presence_accuracy": round(correct / n, 4), "box_iou": round(float(np.mean(ious)), 4),
                      "with_mark": len(ious)}  # fmt: skip
        out[f"{side}px"] = per
    return out


def save_grid(rows: dict[str, list[Image.Image]], path: Path, count: int = 12) -> None:
    arms = list(rows)
    cell = 96
    grid = Image.new("RGB", (cell * count, (cell + 14) * len(arms)), "white")
    draw = ImageDraw.Draw(grid)
    for r, arm in enumerate(arms):
        draw.text((2, r * (cell + 14)), arm, fill="black")
        for c, im in enumerate(rows[arm][:count]):
            grid.paste(im.resize((cell, cell), Image.NEAREST), (c * cell, r * (cell + 14) + 14))
    grid.save(path)


class Reader:
    """Reads one set of generations: mark rates, the probe's accuracy and agreement with the base, CLIP."""

    def __init__(
        self, detector: ShapesMarkDetector, clip: ClipScore, prompts: list[str], labels: list[dict], base: list
    ) -> None:
        self.detector, self.clip, self.prompts, self.labels = detector, clip, prompts, labels
        self.base_read = detector.probe.predict(base)

    def __call__(self, images: list[Image.Image]) -> dict[str, Any]:
        found = self.detector.detect(images)
        probe = self.detector.probe.predict(images)
        scores = self.clip.score_images([SimpleNamespace(prompt=p) for p in self.prompts], images)
        row: dict[str, Any] = {}
        row["marks"] = {m: rate(sum(f[m].present for f in found), len(found)) for m in MARKS}
        row["any_mark"] = rate(sum(any(f[m].present for m in MARKS) for f in found), len(found))
        drawn = [f["watermark"].box for f in found if f["watermark"].present]
        in_cell = sum(STEER_CELL in covered_cells(box, GeomErasingConfig.grid) for box in drawn)
        row["watermark_in_cell"] = rate(in_cell, len(drawn)) if drawn else {"k": 0, "n": 0}
        row["probe_accuracy"] = {
            f: round(float(np.mean([p[f]["label"] == lab[f] for p, lab in zip(probe, self.labels, strict=True)])), 4)
            for f in FAMILIES
        }
        pairs = list(zip(probe, self.base_read, strict=True))
        row["agreement_with_base"] = {
            f: round(float(np.mean([p[f]["label"] == b[f]["label"] for p, b in pairs])), 4) for f in FAMILIES
        }
        row["clip_score"] = round(float(np.mean([s["score"] for s in scores])), 3)
        return row


def pooled(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row from one edit per mark: each mark's rate under its own edit; side effects averaged."""
    out: dict[str, Any] = {"marks": {m: rows[m]["marks"][m] for m in MARKS}}
    for key in ("probe_accuracy", "agreement_with_base"):
        out[key] = {f: round(float(np.mean([r[key][f] for r in rows.values()])), 4) for f in FAMILIES}
    out["clip_score"] = round(float(np.mean([r["clip_score"] for r in rows.values()])), 3)
    out["watermark_in_cell"] = rows["watermark"]["watermark_in_cell"]
    return out
