"""Fingerprints of pipeline components, so an Edit refuses a base model it was not made for.

A fingerprint has a hash of the parameter names and shapes (the architecture, compared exactly) and
two numbers per floating-point tensor, computed on a strided sample of at most ``SAMPLE`` values:

- ``scale``: the sample's root mean square;
- ``projection``: the sample, divided by its scale, projected on a fixed random ±1 vector and divided
  by √n. Two samples that differ by a relative error ε give projections that differ by about ε, so
  the root mean square of the projection differences over all tensors estimates how far apart the
  weights are, with hundreds of tensors as independent measurements.

The sample is rounded to bfloat16 before anything is computed, so an fp32 and a bf16 load of the
same checkpoint fingerprint identically, and an fp16 load differs only by double rounding. The
tolerances sit between the two measured distributions (``benchmarks/fingerprint_tolerance.py``): the
same weights in fp16 differ by at most 0.0011 (root mean square over tensors), weights with 1 %
relative noise by at least 0.0060, a checkpoint of another seed by 0.8 or more. Hashing every byte of
a UNet would cost seconds per apply; the sample costs milliseconds. A fingerprint tells checkpoints
apart; it is not a hash: a change confined to values outside the sample goes unnoticed.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

SAMPLE = 1024
FINGERPRINT_VERSION = 2
RMS_TOL = 2.5e-3  # root mean square over tensors of projection / relative scale differences
TENSOR_TOL = 5e-2  # any single tensor: |projection difference| or relative scale difference
_SIGNS = (torch.randint(0, 2, (SAMPLE,), generator=torch.Generator().manual_seed(0)) * 2 - 1).double()


def _scale_and_projection(tensor: torch.Tensor) -> tuple[float, float]:
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    sample = flat[::step][:SAMPLE].to(device="cpu", dtype=torch.bfloat16).double()
    scale = float(sample.pow(2).mean().sqrt()) if sample.numel() else 0.0
    if not math.isfinite(scale) or scale == 0.0:
        return scale, 0.0
    projection = float((sample * _SIGNS[: sample.numel()]).sum() / (scale * math.sqrt(sample.numel())))
    return scale, projection


def fingerprint(module: nn.Module) -> dict[str, Any]:
    names_shapes, scales, projections = [], [], []
    for name, tensor in sorted(module.state_dict().items()):
        names_shapes.append(f"{name}:{tuple(tensor.shape)}")
        if tensor.is_floating_point():  # integer buffers (position ids) are covered by the structure
            scale, projection = _scale_and_projection(tensor)
            scales.append(float(f"{scale:.6g}"))
            projections.append(float(f"{projection:.6g}"))
    structure = hashlib.sha256("\n".join(names_shapes).encode()).hexdigest()[:16]
    return {"version": FINGERPRINT_VERSION, "structure": structure, "scale": scales, "projection": projections}


def distance(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, float]:
    """How far apart two fingerprints of the same architecture are (see the module docstring)."""
    dp = [x - y for x, y in zip(expected["projection"], actual["projection"], strict=True)]
    ds = [
        0.0 if x == y else abs(x - y) / max(abs(x), abs(y))
        for x, y in zip(expected["scale"], actual["scale"], strict=True)
    ]
    n = max(1, len(dp))
    return {
        "projection_rms": math.sqrt(sum(d * d for d in dp) / n),
        "scale_rms": math.sqrt(sum(d * d for d in ds) / n),
        "tensor_max": max([abs(d) for d in dp] + ds + [0.0]),
    }


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """``None`` when the fingerprints match, else a short description of the mismatch."""
    if expected.get("version") != FINGERPRINT_VERSION:
        return "a fingerprint from an older conceptedit (fit the edit again)"
    if expected["structure"] != actual["structure"] or len(expected["scale"]) != len(actual["scale"]):
        return "different architecture (parameter names or shapes differ)"
    d = distance(expected, actual)
    if not all(math.isfinite(v) for v in d.values()):
        return "non-finite weights"
    if d["projection_rms"] > RMS_TOL or d["scale_rms"] > RMS_TOL or d["tensor_max"] > TENSOR_TOL:
        return (
            f"different weights (distance {d['projection_rms']:.4f}, scale {d['scale_rms']:.4f}, "
            f"worst tensor {d['tensor_max']:.3f}; the same weights in another dtype stay below {RMS_TOL})"
        )
    return None
