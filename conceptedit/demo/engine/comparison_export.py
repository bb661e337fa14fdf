"""A method comparison as the page shows it and as files: the labelled grid (PNG), the scored table
(Markdown, CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .comparison import MethodComparison
from .scoring import rule_text, score_cells, score_header, score_record

GRID_CELL = 128  # side of a thumbnail in the exported grid (small models are scaled up, pixels kept sharp)
LABEL_WIDTH = 220
HEADER_HEIGHT = 22


def grid_image(result: MethodComparison, cell: int = GRID_CELL) -> Image.Image:
    """One row per (prompt, seed), one column per method (the original first), labelled."""
    columns = [c for c in result.columns if c.ok]
    captions = result.cell_captions()
    width = LABEL_WIDTH + len(columns) * (cell + 4)
    grid = Image.new("RGB", (width, HEADER_HEIGHT + len(captions) * (cell + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for j, column in enumerate(columns):
        draw.text((LABEL_WIDTH + j * (cell + 4) + 2, 4), column.label[: cell // 6], fill="black")
    for i, caption in enumerate(captions):
        y = HEADER_HEIGHT + i * (cell + 4)
        for line, start in enumerate(range(0, min(len(caption), 34 * 4), 34)):
            draw.text((4, y + 4 + 12 * line), caption[start : start + 34], fill="black")
        for j, column in enumerate(columns):
            image = column.images[i].convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(image, (LABEL_WIDTH + j * (cell + 4), y))
    return grid


def table_rows(result: MethodComparison) -> list[dict[str, Any]]:
    """One row per column (the original first): status, fit time, scores, verdict and its reasons."""
    header = score_header(result.judge) if result.judge is not None and result.score_rows else []
    rows = []
    for column in result.columns:
        status = (
            "original"
            if column is result.original
            else (f"error: {column.error}" if column.error else "fitted (cached)" if column.cached else "fitted")
        )
        row: dict[str, Any] = {
            "method": column.label,
            "status": status,
            "fit s": "" if column is result.original else f"{column.fit_seconds:.1f}",
        }
        if header:
            cells = score_cells(result.judge, column.score) if column.score else [""] * len(header)
            row |= dict(zip(header, cells, strict=True))
        if header:  # unscored comparisons have no verdicts
            row["verdict"] = column.verdict.word if column.verdict else ""
            row["why"] = "; ".join(column.verdict.reasons) if column.verdict else ""
        rows.append(row)
    return rows


def table_markdown(result: MethodComparison) -> str:
    from .tables import markdown_table

    rows = table_rows(result)
    parts = [markdown_table([{k: v for k, v in row.items() if k != "why"} for row in rows])]
    reasons = [f"- **{row['method']}** — {row['verdict']}: {row['why']}" for row in rows if row.get("why")]
    if reasons:
        parts.append("\n".join(reasons))
    if result.judge is not None and result.score_rows:
        chance = f"chance level {result.chance:.2f} · " if result.chance is not None else ""
        parts.append(
            f"_Scored on {len(result.score_rows)} prompts × 1 seed per column ({result.judge.describe()});"
            f" {chance}the same prompts and seeds in every column._"
        )
        parts.append(rule_text(result.judge))
    elif result.unscored:
        parts.append(f"_Not scored: {result.unscored}_")
    return "\n\n".join(parts)


def table_csv(result: MethodComparison) -> str:
    rows = table_rows(result)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def table_json(result: MethodComparison) -> dict[str, Any]:
    """Everything needed to reproduce and judge the comparison."""
    judge = result.judge
    return {
        "targets": result.targets,
        "preserve": result.preserve,
        "prompts": result.prompts,
        "seeds": result.seeds,
        "settings": result.settings,
        "judge": judge.describe() if judge is not None else None,
        "chance": result.chance,
        "unscored": result.unscored or None,
        "score_prompts": [
            {"prompt": r.prompt, "seed": r.evaluation_seed, "role": r.role, "concept": r.concept}
            for r in result.score_rows
        ],
        "columns": [
            {
                "method": c.label,
                "plugin": c.plugin,
                "folder": c.folder,
                "config": c.edit.manifest.config if c.edit is not None else None,
                "error": c.error or None,
                "fit_seconds": c.fit_seconds,
                "cached": c.cached,
                "scores": score_record(judge, c.score) if judge is not None and c.score else None,
                "verdict": c.verdict.to_dict() if c.verdict else None,
            }
            for c in result.columns
        ],
        "seconds": result.seconds,
    }


def export(result: MethodComparison, folder: str | Path) -> list[Path]:
    """Write ``compare.png``, ``compare.csv`` and ``compare.json`` into ``folder`` (created)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    png, csv_path, json_path = out / "compare.png", out / "compare.csv", out / "compare.json"
    grid_image(result).save(png)
    csv_path.write_text(table_csv(result), encoding="utf-8")
    json_path.write_text(json.dumps(table_json(result), indent=2, default=str), encoding="utf-8")
    return [png, csv_path, json_path]
