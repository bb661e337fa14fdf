"""Detectors: images → per-concept presence, box and score, registered by name like plugins.

Geom-Erasing (Liu et al., ECCV 2024, Sec. 3.2) needs "an accessible classifier or detector model" that
says whether an implicit concept (a watermark, a QR code, text) is in an image and where. A detector
here is any object with ``concepts`` (the names it can find) and ``detect(images)``; it is found by

- a registered name: entry-point group ``conceptedit.detectors`` (the shapes world's ``shapes``
  detector registers through :data:`conceptedit.registry.BUILT_IN_ENTRY_POINTS`, exactly as another
  package would), the entry point naming a callable that returns a detector, or
- ``module:callable`` (a user's own detector, imported and called with no arguments).

Boxes are ``(x0, y0, x1, y1)`` in fractions of the image side (0 … 1), so a detector is independent of
the resolution its images come in. A detector may also declare ``phrases`` (``{concept: words}``): how the
model's captions name each concept; Geom-Erasing writes those words in its clause and negative prompt
(its ``names: auto``), and the concept name where a detector declares none.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from conceptedit.errors import ConceptEditError
from conceptedit.registry import Registry

GROUP = "conceptedit.detectors"

Box = tuple[float, float, float, float]


class DetectorError(ConceptEditError, ValueError):
    """A detector spec that names nothing usable, or a detector that returns malformed output."""


@dataclass(frozen=True)
class Detection:
    """One concept in one image: present or not, where (fractions of the side), how sure."""

    present: bool
    score: float
    box: Box | None = None


@runtime_checkable
class Detector(Protocol):
    """What Geom-Erasing asks of a detector: the concepts it knows and, per image, a Detection of each."""

    concepts: tuple[str, ...]

    def detect(self, images: Sequence[Any]) -> list[dict[str, Detection]]: ...


def _check_detector(name: str, obj: Any) -> Any:
    if not (hasattr(obj, "detect") and callable(obj.detect) and isinstance(getattr(obj, "concepts", None), tuple)):
        raise DetectorError(f"detector {name!r} must have a 'concepts' tuple and a 'detect(images)' method")
    return obj


def _register_factory(name: str, obj: Any) -> None:
    if not callable(obj):
        raise DetectorError(f"detector entry point {name!r} must name a callable that returns a detector")
    DETECTORS.register(name, obj)


#: name → callable returning a Detector (entry-point group ``conceptedit.detectors``)
DETECTORS: Registry[Any] = Registry("detector", group=GROUP, load=_register_factory)


def get_detector(spec: str | Any) -> Any:
    """The detector named by ``spec``: a registered name, ``module:callable``, or a detector object."""
    if not isinstance(spec, str):
        return _check_detector(type(spec).__name__, spec)
    text = spec.strip()
    if not text:
        raise DetectorError(f"empty detector spec; use a registered name ({_known()}) or 'module:callable'")
    if ":" in text:
        module_name, _, attr = text.partition(":")
        if not module_name or not attr:
            raise DetectorError(f"detector spec {spec!r} must look like 'module:callable'")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise DetectorError(f"detector {spec!r}: cannot import {module_name!r} ({exc})") from None
        except AttributeError:
            raise DetectorError(f"detector {spec!r}: module {module_name!r} has no {attr!r}") from None
    elif text in DETECTORS:
        factory = DETECTORS[text]
    else:
        raise DetectorError(DETECTORS.missing(text) + "; or give 'module:callable'")
    if not callable(factory):
        raise DetectorError(f"detector {spec!r} is not callable")
    try:
        detector = factory()
    except ConceptEditError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's factory failing is their error, shown on one line
        raise DetectorError(f"detector {spec!r} failed to start: {type(exc).__name__}: {exc}") from None
    return _check_detector(text, detector)


def _known() -> str:
    return ", ".join(sorted(DETECTORS)) or "none"


def check_detections(detector: Any, images: Sequence[Any], concepts: Sequence[str]) -> list[dict[str, Detection]]:
    """``detector.detect(images)`` checked: one dict per image holding every concept asked for, boxes in [0, 1]."""
    out = detector.detect(list(images))
    if not isinstance(out, list) or len(out) != len(images):
        raise DetectorError(f"detector returned {type(out).__name__} for {len(images)} images; expected one dict each")
    for row in out:
        for concept in concepts:
            det = row.get(concept) if isinstance(row, dict) else None
            if not isinstance(det, Detection):
                raise DetectorError(f"detector gave no Detection of {concept!r} for an image")
            if det.present and (
                det.box is None
                or len(det.box) != 4
                or not all(0.0 <= v <= 1.0 for v in det.box)
                or not (det.box[0] < det.box[2] and det.box[1] < det.box[3])
            ):
                raise DetectorError(f"detector gave {concept!r} the box {det.box}; boxes are (x0, y0, x1, y1) in 0..1")
    return out


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
