"""Prompt sets: CSV files in the I2P/ESD/UCE/MACE schema (``prompt, evaluation_seed, case_number``)
with optional columns ``role``, ``concept`` and ``label_<family>`` that label-reading metrics use."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptedit.errors import ConfigError

LABEL_PREFIX = "label_"
# I2P's per-row generation columns (the I2P/ESD/UCE protocol generates each row with its own guidance and
# size) -> (generation keyword, type). ``evaluation_seed`` is the row's seed (always read).
ROW_SETTING_COLUMNS: dict[str, tuple[str, type]] = {
    "evaluation_guidance": ("guidance_scale", float),
    "sd_image_width": ("width", int),
    "sd_image_height": ("height", int),
}


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    evaluation_seed: int
    case_number: int
    role: str = ""  # e.g. target | target_paraphrase | in_domain | cross_domain | attack
    concept: str = ""  # the concept the row was made for ("family:value" in the shapes world)
    labels: dict[str, str] = field(default_factory=dict)  # family -> expected value
    settings: dict[str, Any] = field(default_factory=dict)  # this row's own generation settings (I2P columns)


def row_settings(row: dict[str, str | None], where: str) -> dict[str, Any]:
    """Generation settings from a CSV row's I2P columns (blank cells are absent)."""
    out: dict[str, Any] = {}
    for column, (key, kind) in ROW_SETTING_COLUMNS.items():
        text = (row.get(column) or "").strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value <= 0 or (kind is int and not value.is_integer()):
            raise ConfigError(f"{where}: {column} must be a positive {kind.__name__}, got {text!r}")
        out[key] = kind(value)
    return out


def read_prompt_csv(path: str | Path, limit: int | None = None, default_seed: int = 0) -> list[PromptRow]:
    """Rows of a prompt CSV; only ``prompt`` is required (seeds default to ``default_seed``, case numbers
    to the row index)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt CSV {path} not found")
    rows: list[PromptRow] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise ConfigError(f"{path} needs a 'prompt' column (found {reader.fieldnames})")
        for i, row in enumerate(reader):
            try:
                seed = int(row.get("evaluation_seed") or default_seed)
                case = int(row.get("case_number") or i)
            except ValueError:
                raise ConfigError(f"{path} row {i + 2}: evaluation_seed and case_number must be integers") from None
            labels = {k[len(LABEL_PREFIX) :]: v for k, v in row.items() if k.startswith(LABEL_PREFIX) and v}
            settings = row_settings(row, f"{path} row {i + 2}")
            rows.append(
                PromptRow(row["prompt"], seed, case, row.get("role") or "", row.get("concept") or "", labels, settings)
            )
            if limit is not None and len(rows) >= limit:
                break
    cases = [r.case_number for r in rows]
    if len(set(cases)) != len(cases):
        raise ConfigError(f"{path}: case_number values must be unique")
    return rows


def write_prompt_csv(rows: list[PromptRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    families = sorted({f for r in rows for f in r.labels})
    own = [c for c, (key, _) in ROW_SETTING_COLUMNS.items() if any(key in r.settings for r in rows)]
    columns = ["prompt", "evaluation_seed", "case_number", "role", "concept"] + own
    columns += [LABEL_PREFIX + f for f in families]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            base = {
                "prompt": r.prompt,
                "evaluation_seed": r.evaluation_seed,
                "case_number": r.case_number,
                "role": r.role,
                "concept": r.concept,
            }
            base |= {c: r.settings.get(ROW_SETTING_COLUMNS[c][0], "") for c in own}
            writer.writerow(base | {LABEL_PREFIX + f: r.labels.get(f, "") for f in families})
    return path


# Built-in prompt-set generators: name -> f(target concepts, rows per role, seed) -> rows.
BuiltinPromptSet = Callable[[list[str], int, int], list[PromptRow]]
BUILTIN_PROMPT_SETS: dict[str, str] = {
    "shapes-erasure": "conceptedit.eval.shapes_prompts:erasure_prompt_set",
}


def builtin_prompt_set(name: str) -> BuiltinPromptSet:
    import importlib

    if name not in BUILTIN_PROMPT_SETS:
        raise ConfigError(f"unknown built-in prompt set {name!r}; available: {', '.join(BUILTIN_PROMPT_SETS)}")
    module, _, func = BUILTIN_PROMPT_SETS[name].partition(":")
    return getattr(importlib.import_module(module), func)
