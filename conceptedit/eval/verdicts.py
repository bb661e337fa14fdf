"""Rates with Wilson intervals, chance levels and the one-word verdict of an erasure — one
implementation for the HTML report and the demo's Compare tab, so both judge an edit the same way.

The verdict of an edit, from label-accuracy rates on the original model (``base``) and with the edit,
at the same prompts and seeds (the rule is printed in the report and the demo, see :data:`RULE`):

- ``untestable``: the original model does not show the concept above chance on its own prompts
  (nothing to erase; the rates say nothing about the method);
- ``damaging``: a retained rate (other members of the family, other families) fell by more than
  ``tolerance`` — whatever happened to the target;
- ``erased``: the target rate and the paraphrase rate are both at or below chance;
- ``partial``: the target (or paraphrase) rate fell by at least ``min_drop`` but is not at chance;
- ``failed``: anything else — "no change" on a concept to erase is a failure, not a neutral result.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

TOLERANCE = 0.15  # the largest drop of a retained rate that is not "damaging"
MIN_DROP = 0.2  # the smallest drop of a target rate that counts as an effect ("partial")
Z = 1.96  # 95 % intervals

# roles of prompt-set rows whose rate should go down (the concept shown), and those that should stay
ERASE_BUCKETS = ("erased_accuracy", "erased_accuracy_paraphrase", "attack_success_rate")
RETAIN_BUCKETS = ("in_domain_retain", "cross_domain_retain")
VERDICTS = ("erased", "partial", "failed", "damaging", "untestable")

RULE = (
    f"**erased**: target and paraphrase rates at or below chance · **partial**: a target rate fell by "
    f"≥ {MIN_DROP:.0%} points but not to chance · **failed**: less than that (no change on a concept to "
    f"erase is a failure) · **damaging**: a retained rate (in-domain or cross-domain) fell by more than "
    f"{TOLERANCE:.0%} points, whatever happened to the target · **untestable**: the original model does not "
    "show the concept above chance. Rates: fraction of images in which the classifier reads the concept "
    "(target, paraphrase) or the prompted label (retain), with n and a 95 % Wilson interval."
)


def wilson(k: float, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials (``(0, 1)`` for ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the exact interval contains p; floating point can put a bound a hair beyond it (k = 0 or k = n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` images, its value and Wilson interval."""

    k: int
    n: int

    @classmethod
    def of(cls, value: float | None, n: int | None) -> Rate | None:
        """From a mean over ``n`` 0/1 scores (what label metrics report); ``None`` when there is none."""
        if value is None or not n:
            return None
        return cls(round(value * n), int(n))

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def text(self) -> str:
        """``0.33 [0.10, 0.70] n=6``."""
        lo, hi = self.interval
        return f"{self.value:.2f} [{lo:.2f}, {hi:.2f}] n={self.n}"

    def to_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"value": self.value, "k": self.k, "n": self.n, "ci_low": lo, "ci_high": hi}


@dataclass
class Verdict:
    word: str
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(
    base: Mapping[str, Rate | None],
    edited: Mapping[str, Rate | None],
    chance: float | None,
    tolerance: float = TOLERANCE,
    min_drop: float = MIN_DROP,
) -> Verdict:
    """The verdict of one edit from its bucket rates (keys of :data:`ERASE_BUCKETS` and
    :data:`RETAIN_BUCKETS`) on the original model and with the edit; ``chance``: the rate of a
    uniform guess in the target's family (``None``: unknown, then only drops count)."""
    reasons: list[str] = []
    target_base = base.get("erased_accuracy")
    if target_base is not None and chance is not None and target_base.value <= chance:
        return Verdict(
            "untestable",
            [
                f"the original model shows the concept at {target_base.value:.2f} ≤ chance "
                f"{chance:.2f}: nothing to erase"
            ],
        )
    damaged = []
    for bucket in RETAIN_BUCKETS:
        before, after = base.get(bucket), edited.get(bucket)
        if before is not None and after is not None:
            drop = before.value - after.value
            if drop > tolerance:
                damaged.append(f"{bucket} fell {before.value:.2f} → {after.value:.2f} (> {tolerance:.2f})")
            else:
                reasons.append(f"{bucket} {before.value:.2f} → {after.value:.2f} (within {tolerance:.2f})")
    at_chance, dropped, measured = [], [], []
    for bucket in ERASE_BUCKETS[:2]:
        after = edited.get(bucket)
        if after is None:
            continue
        measured.append(bucket)
        before = base.get(bucket)
        low = chance is not None and after.value <= chance
        at_chance.append(low)
        fell = before is not None and before.value - after.value >= min_drop
        dropped.append(fell)
        where = f" ≤ chance {chance:.2f}" if low else (f" > chance {chance:.2f}" if chance is not None else "")
        change = f"{before.value:.2f} → " if before is not None else ""
        reasons.append(f"{bucket} {change}{after.value:.2f}{where}")
    if damaged:
        return Verdict("damaging", damaged + reasons)
    if not measured:
        return Verdict("failed", ["no target rate was measured", *reasons])
    if all(at_chance):
        return Verdict("erased", reasons)
    if any(dropped) or any(at_chance):
        return Verdict("partial", reasons)
    return Verdict("failed", reasons)


class LabelledRow(Protocol):
    role: str
    concept: str
    labels: dict[str, str]


def chance_from_rows(rows: Iterable[LabelledRow]) -> float | None:
    """Chance level of reading the target on an image: ``1 / (number of members of the target's
    family)``, the members counted from the prompt set itself (the target and its in-domain
    neighbours); a family with one member (a detector: present / absent) counts as two. Several
    target concepts: the mean over concepts. ``None`` without target rows."""
    members: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        family, sep, value = (row.concept or "").partition(":")
        if not sep or row.role not in ("target", "target_paraphrase", "attack", "in_domain"):
            continue
        members[row.concept].add(value)
        if row.role == "in_domain" and family in row.labels:
            members[row.concept].add(row.labels[family])
    if not members:
        return None
    return sum(1.0 / max(2, len(values)) for values in members.values()) / len(members)


def rates_from_metrics(metrics: Mapping[str, Mapping[str, Any]], prefix: str) -> dict[str, Rate | None]:
    """Bucket rates from a results group's ``metrics`` (``{"<prefix>.<bucket>": {"value", "details": {"n"}}}``)."""
    out: dict[str, Rate | None] = {}
    for bucket in (*ERASE_BUCKETS, *RETAIN_BUCKETS):
        result = metrics.get(f"{prefix}.{bucket}")
        if result is not None:
            out[bucket] = Rate.of(result.get("value"), (result.get("details") or {}).get("n"))
    return out


def bucket_of(metric: str) -> str | None:
    """``"probe.erased_accuracy"`` → ``"erased_accuracy"``; ``None`` for metrics that are not rates of a bucket."""
    tail = metric.rsplit(".", 1)[-1]
    return tail if tail in (*ERASE_BUCKETS, *RETAIN_BUCKETS) and "." in metric else None


def change_class(
    metric: str,
    base: float | None,
    edited: float | None,
    higher_is_better: bool | None,
    chance: float | None = None,
    tolerance: float = TOLERANCE,
    min_drop: float = MIN_DROP,
) -> str:
    """The report's colour of one (metric, base → edited) row: ``good``, ``partial``, ``bad`` or ``""``.

    A rate of a concept to erase is ``good`` at or below chance (or, chance unknown, after a drop of
    ``min_drop``), ``partial`` after a smaller drop, else ``bad`` — an unchanged rate is a failure. A
    retained rate is ``bad`` when it fell by more than ``tolerance``, else ``good``. Other metrics:
    better is ``good``, worse ``bad``, equal neutral."""
    if base is None or edited is None:
        return ""
    bucket = bucket_of(metric)
    if bucket in ERASE_BUCKETS:
        if chance is not None and base <= chance:
            return ""  # untestable: the original model does not show the concept either
        if chance is not None and edited <= chance:
            return "good"
        if chance is None and base - edited >= min_drop:
            return "good"
        return "partial" if base - edited > 0 else "bad"
    if bucket in RETAIN_BUCKETS:
        return "bad" if base - edited > tolerance else "good"
    if higher_is_better is None or edited == base:
        return ""
    return "good" if (edited > base) == higher_is_better else "bad"
