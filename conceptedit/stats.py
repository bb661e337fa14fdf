"""Rates with their uncertainty: every success rate conceptedit reports carries n and a Wilson interval
(a 6-image rate of 0.667 means little without them)."""

from __future__ import annotations

import math
from typing import Any

from conceptedit.errors import ConceptEditError


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate ``k / n`` (95 % for the default ``z``); ``(0, 1)`` when ``n = 0``.

    Wilson rather than the normal approximation: it stays inside [0, 1] and is honest at 0/n and n/n,
    the common cases of an attack that always or never works."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or n < 0 or not 0 <= k <= n:
        raise ConceptEditError(f"a rate needs 0 <= k <= n (integers), got k={k!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> dict[str, Any]:
    """``{"rate", "k", "n", "ci95"}`` of ``k`` successes out of ``n`` (rate ``None`` when ``n = 0``)."""
    low, high = wilson_interval(k, n)
    return {"rate": k / n if n else None, "k": int(k), "n": int(n), "ci95": [round(low, 4), round(high, 4)]}
