"""Fingerprints of pipeline components, so an Edit refuses a base model it was not made for.

A fingerprint has two parts: a hash of the parameter names and shapes (the architecture, compared
exactly) and a value signature (one number per tensor: a strided sample summed in float64,
compared with a relative tolerance) so that fp32, fp16 and bf16 loads of the same checkpoint
match while another checkpoint of the same architecture does not. Hashing every byte of a UNet
would cost seconds per apply; the sample costs milliseconds.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

SAMPLE = 1024
SIGNATURE_RTOL = 2e-2


def _sample_sum(tensor: torch.Tensor) -> float:
    flat = tensor.detach().reshape(-1)
    step = max(1, flat.numel() // SAMPLE)
    sample = flat[::step][:SAMPLE].to(device="cpu", dtype=torch.float64)
    return float(sample.abs().sum() + sample.sum())


def fingerprint(module: nn.Module) -> dict[str, Any]:
    names_shapes = []
    signature = []
    for name, tensor in sorted(module.state_dict().items()):
        names_shapes.append(f"{name}:{tuple(tensor.shape)}")
        signature.append(_sample_sum(tensor) if tensor.is_floating_point() else float(tensor.sum()))
    structure = hashlib.sha256("\n".join(names_shapes).encode()).hexdigest()[:16]
    return {"structure": structure, "signature": [float(f"{v:.6g}") for v in signature]}


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """``None`` when the fingerprints match, else a short description of the mismatch."""
    if expected["structure"] != actual["structure"]:
        return "different architecture (parameter names or shapes differ)"
    a, b = expected["signature"], actual["signature"]
    differing = [
        i
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if not math.isclose(x, y, rel_tol=SIGNATURE_RTOL, abs_tol=1e-4)
    ]
    if differing:
        return f"different weights ({len(differing)} of {len(a)} tensors differ)"
    return None
