"""Prompt sets: CSV files in the I2P/ESD/UCE/MACE schema (``prompt, evaluation_seed, case_number``)
with optional columns ``role``, ``concept`` and ``label_<family>`` that label-reading metrics use."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptedit.errors import ConfigError
from conceptedit.registry import Registry
from conceptedit.validate import check_int, check_seed, read_text

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


def read_csv_rows(path: str | Path, required: str = "prompt") -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` pairs of a UTF-8 CSV with a header row containing ``required``.

    Checked so that nothing is read silently wrong: a byte-order mark is accepted, other encodings are
    an error; a row with more fields than the header, a quoted field spanning lines or a quote that is
    never closed (which would swallow the rest of the file) is an error naming its line. Blank lines
    are skipped; missing trailing fields read as empty.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt CSV {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    text = read_text(path, "prompt CSV")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    out: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            reason = str(exc)
            if "end of data" in reason:
                reason = "a quote is never closed"
            elif "field limit" in reason:
                reason = f"a field is longer than {csv.field_size_limit():,} characters (a quote that is never closed?)"
            raise ConfigError(f"{path} line {line}: {reason}") from None
        if reader.line_num != line and any("\n" in f or "\r" in f for f in fields):
            raise ConfigError(
                f"{path} lines {line}-{reader.line_num}: a quoted field spans several lines (a quote that is not "
                "closed?); prompts cannot contain line breaks"
            )
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip() for f in fields]
            if required not in header:
                raise ConfigError(f"{path} needs a {required!r} column (found {', '.join(header)[:200]})")
            continue
        if len(fields) > len(header):
            raise ConfigError(
                f"{path} line {line}: {len(fields)} fields but the header has {len(header)}; "
                "quote a prompt that contains commas"
            )
        out.append((line, dict(zip(header, fields + [""] * (len(header) - len(fields)), strict=True))))
    if header is None:
        raise ConfigError(f"{path} is empty; it needs a header row with a {required!r} column")
    return out


def read_prompt_csv(path: str | Path, limit: int | None = None, default_seed: int = 0) -> list[PromptRow]:
    """Rows of a prompt CSV; only ``prompt`` is required (seeds default to ``default_seed``, case numbers
    to the row index). Seeds must be in ``[0, 2**63)``, case numbers >= 0 and unique."""
    path = Path(path)
    rows: list[PromptRow] = []
    seen: dict[int, int] = {}
    for i, (line, row) in enumerate(read_csv_rows(path)):
        try:
            seed = check_seed(_integer(row.get("evaluation_seed"), default_seed), "evaluation_seed")
            case = check_int("case_number", _integer(row.get("case_number"), i), 0)
        except ConfigError as exc:
            raise ConfigError(f"{path} line {line}: {exc}") from None
        if case in seen:
            raise ConfigError(f"{path} line {line}: case_number {case} is already used on line {seen[case]}")
        seen[case] = line
        labels = {k[len(LABEL_PREFIX) :]: v for k, v in row.items() if k.startswith(LABEL_PREFIX) and v}
        settings = row_settings(row, f"{path} line {line}")
        rows.append(
            PromptRow(row["prompt"], seed, case, row.get("role") or "", row.get("concept") or "", labels, settings)
        )
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _integer(text: str | None, default: int) -> int:
    if text is None or not text.strip():
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"expected an integer, got {text.strip()[:40]!r}") from None


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


# Prompt-set generators: name -> f(target concepts, rows per role, seed) -> rows. Other packages (and
# the built-in shapes world) add theirs through the ``conceptedit.prompt_sets`` entry point.
BuiltinPromptSet = Callable[[list[str], int, int], list[PromptRow]]


def _prompt_set_from_entry_point(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"entry point {name!r} must point at a function (targets, per_role, seed) -> rows")
    BUILTIN_PROMPT_SETS.register(name, obj)


BUILTIN_PROMPT_SETS: Registry[BuiltinPromptSet] = Registry(
    "built-in prompt set", group="conceptedit.prompt_sets", load=_prompt_set_from_entry_point
)


def builtin_prompt_set(name: str) -> BuiltinPromptSet:
    if name not in BUILTIN_PROMPT_SETS:
        raise ConfigError(BUILTIN_PROMPT_SETS.missing(name))
    return BUILTIN_PROMPT_SETS[name]
