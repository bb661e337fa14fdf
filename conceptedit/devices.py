"""Device and dtype are chosen once (cuda > mps > cpu) and passed down, never hard-coded."""

from __future__ import annotations

import re

import torch

from conceptedit.errors import ConfigError
from conceptedit.validate import check_seed

DEVICES = ("cpu", "cuda", "cuda:N", "mps")


def _available() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str | torch.device) -> torch.device:
    """A device this machine has; anything else is one line listing the valid values."""
    if isinstance(device, torch.device):
        return device
    text = str(device).strip().lower()
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", text):
        raise ConfigError(f"unknown device {str(device)[:40]!r}; use one of {', '.join(DEVICES)}")
    available = _available()
    if text not in available:
        raise ConfigError(f"device {text!r} is not available on this machine; available: {', '.join(available)}")
    return torch.device(text)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on accelerators, fp32 on CPU (CPU half-precision convolutions are slow or missing)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    try:
        return _DTYPES[str(dtype).strip().lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {str(dtype)[:40]!r}; use one of {', '.join(sorted(_DTYPES))}") from None


def generator_for(seed: int) -> torch.Generator:
    """A CPU generator: the same seed gives the same initial noise on every device."""
    return torch.Generator("cpu").manual_seed(check_seed(seed))
