"""Input checks shared by every entry point (CLI, YAML configs, the Python API, plugin configs).

Why: a bad number must be refused before any work, in one line that names it — not a ZeroDivisionError
deep in a scheduler, a hang (``--shard-rows 0``), or a silently wrong result (a NaN guidance scale turns
classifier-free guidance off; a NaN erase scale makes every image black).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conceptedit.errors import ConfigError

#: seeds are non-negative and below 2**63: ``torch.Generator.manual_seed`` takes them, and JSON, SQLite
#: and every other tool that stores them reads them back as the same integer
SEED_LIMIT = 2**63


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error never quotes a huge value back."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool, not 1.5) within ``[minimum, maximum]``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {short(value)}")
    try:
        number = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise ConfigError(f"{name} must be an integer, got {short(value)}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {short(number)}")
    return number


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed every generator accepts and every store reads back: ``0 <= seed < 2**63``."""
    return check_int(name, value, 0, SEED_LIMIT - 1)


def check_float(name: str, value: Any, minimum: float | None = None, *, above: float | None = None) -> float:
    """A finite number (NaN and ±inf are refused), at least ``minimum`` / strictly above ``above``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {short(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a number, got {short(value)}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    if above is not None and number <= above:
        raise ConfigError(f"{name} must be > {above}, got {number}")
    return number


#: generation settings that are sizes or counts (>= 1)
_POSITIVE_INT_SETTINGS = ("num_inference_steps", "height", "width", "num_images_per_prompt")


def check_generation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Steps and sizes >= 1, every float setting (guidance, eta, …) finite; None means "the default"."""
    out = dict(settings)
    for key, value in settings.items():
        if value is None:
            continue
        if key in _POSITIVE_INT_SETTINGS:
            out[key] = check_int(key, value, 1)
        elif isinstance(value, float) or key in ("guidance_scale", "eta", "guidance_rescale"):
            out[key] = check_float(key, value)
    return out


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a leading byte-order mark, as spreadsheets write, is dropped); any other
    encoding or a binary file is one line that says how to fix it."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError(f"{what} {path} is UTF-16 text; save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start}); "
            "save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)"
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ConfigError(f"{what} {path} line {line}: contains a NUL byte (a binary file?)")
    return text
