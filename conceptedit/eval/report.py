"""The evaluation report: ``results.json`` (machine-readable), ``report.html`` (tables of every metric
before → after per edit, bar plots, base-vs-edited image grids of sampled cases), and the
comparison of two runs (``conceptedit eval compare A B``)."""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from conceptedit.eval.config import EvalConfig
from conceptedit.eval.metrics import BASE
from conceptedit.eval.store import ImageRow


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def attack_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The method × attack table: per (model, edit, attack) the attack success rate with n and its
    Wilson interval, the same prompts on the unedited model (sanity: they should produce the concept),
    the edit's rate on prompts naming the concept without attack, and the attack's cost. Rates are
    :class:`~conceptedit.eval.verdicts.Rate` (k of n, Wilson interval) or ``None``."""
    from conceptedit.eval.verdicts import Rate

    by_key = {(g["model"], g["edit"], g["prompt_set"]): g for g in results["groups"]}

    def asr(model: str, edit: str, prompt_set: str) -> Rate | None:
        metrics = by_key.get((model, edit, prompt_set), {}).get("metrics", {})
        for name, m in metrics.items():
            if name.endswith(".attack_success_rate"):
                return Rate.of(m.get("value"), m.get("details", {}).get("n"))
        return None

    def no_attack(model: str, edit: str) -> Rate | None:
        for (m_, e_, ps), g in by_key.items():
            if m_ == model and e_ == edit and not ps.startswith("attack:"):
                for name, m in g["metrics"].items():
                    if name.endswith(".erased_accuracy"):
                        return Rate.of(m.get("value"), m.get("details", {}).get("n"))
        return None

    rows = []
    for run in results.get("attacks", []):
        rows.append(
            {
                **{k: run[k] for k in ("model", "edit", "attack", "concept", "seconds_per_prompt")},
                "asr": asr(run["model"], run["edit"], run["prompt_set"]),
                "base_asr": asr(run["model"], BASE, run["prompt_set"]),
                "no_attack": no_attack(run["model"], run["edit"]),
            }
        )
    return rows


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, edit, prompt set, metric) with the base value of the same prompts."""
    by_key = {(g["model"], g["edit"], g["prompt_set"]): g for g in results["groups"]}
    rows = []
    for g in results["groups"]:
        if g["edit"] == BASE:
            continue
        base = by_key.get((g["model"], BASE, g["prompt_set"]), {"metrics": {}})
        for name, result in g["metrics"].items():
            before = base["metrics"].get(name, {}).get("value")
            rows.append(
                {
                    "model": g["model"],
                    "edit": g["edit"],
                    "prompt_set": g["prompt_set"],
                    "metric": name,
                    "base": before,
                    "edited": result["value"],
                    "higher_is_better": result.get("higher_is_better"),
                    "n": result.get("details", {}).get("n"),
                }
            )
    return rows


def _plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r["metric"].startswith("probe.") and r["edited"] is not None]
    if not rows:
        return None
    labels = [f"{r['edit']}\n{r['metric'].removeprefix('probe.')}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["base"] or 0 for r in rows], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [r["edited"] for r in rows], width=0.4, label="edited")
    ax.set_xticks(list(xs), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probe accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(pairs: list[tuple[ImageRow, ImageRow]], path: Path, cell: int = 128) -> Path:
    """Base (left) and edited (right) images of the same prompt and seed, prompts as labels."""
    label_h = 28
    grid = Image.new("RGB", (2 * cell + 8, len(pairs) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (edited, base) in enumerate(pairs):
        y = i * (cell + label_h)
        draw.text((2, y + 2), f"{edited.prompt[:44]} (seed {edited.seed})", fill="black")
        for j, row in enumerate((base, edited)):
            with Image.open(row.image_path) as image:
                grid.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST), (j * (cell + 8), y + label_h - 4))
    grid.save(path)
    return path


def write_report(out: Path, cfg: EvalConfig, results: dict[str, Any], rows: list[ImageRow]) -> Path:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    comparisons = comparison_rows(results)
    plot = _plot(comparisons, out / "probe.png")
    grids = []
    base_index = {(r.model, r.prompt_set, r.case_number, r.seed): r for r in rows if r.edit == BASE}
    edits = sorted({(r.model, r.edit) for r in rows if r.edit != BASE})
    for model, edit in edits:
        pairs = [
            (r, base_index[(r.model, r.prompt_set, r.case_number, r.seed)])
            for r in rows
            if r.model == model and r.edit == edit and (r.model, r.prompt_set, r.case_number, r.seed) in base_index
        ]
        targets = [p for p in pairs if p[0].role in ("target", "target_paraphrase", "attack")]
        others = [p for p in pairs if p not in targets]
        rng = random.Random(0)
        chosen = rng.sample(targets, min(len(targets), cfg.grid_cases // 2 or 1)) if targets else []
        chosen += rng.sample(others, min(len(others), cfg.grid_cases - len(chosen)))
        if chosen:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{model}_{edit}")
            grids.append((model, edit, image_grid(chosen, out / f"grid_{safe}.png")))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>conceptedit eval: "
        f"{html.escape(cfg.name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,td:nth-child(2),td:nth-child(3),td:nth-child(4){text-align:left}"
        ".good{background:#dfd}.bad{background:#fdd}</style></head><body>",
        f"<h1>{html.escape(cfg.name)}</h1><p>{results['n_images']} images; models: "
        f"{html.escape(', '.join(cfg.models))}</p>",
    ]
    if results["unavailable"]:
        parts.append("<h2>Unavailable metrics</h2><ul>")
        parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in results["unavailable"].items()]
        parts.append("</ul>")
    parts.append(
        "<h2>Edited vs base (same prompts and seeds)</h2><table><tr><th>model</th><th>edit</th>"
        "<th>prompt set</th><th>metric</th><th>base</th><th>edited</th><th>n</th></tr>"
    )
    for r in comparisons:
        cls = ""
        if r["base"] is not None and r["edited"] is not None and r["higher_is_better"] is not None:
            improved = (r["edited"] > r["base"]) == r["higher_is_better"]
            cls = "good" if improved else "bad" if r["edited"] != r["base"] else ""
        parts.append(
            f"<tr class='{cls}'><td>{_fmt(r['model'])}</td><td>{_fmt(r['edit'])}</td><td>{_fmt(r['prompt_set'])}</td>"
            f"<td>{_fmt(r['metric'])}</td><td>{_fmt(r['base'])}</td><td>{_fmt(r['edited'])}</td><td>{_fmt(r['n'])}</td></tr>"
        )
    parts.append("</table>")
    attacks = attack_rows(results)
    if attacks:
        parts.append(
            "<h2>Attack success rate (method × attack)</h2><table><tr><th>model</th><th>edit</th>"
            "<th>attack</th><th>concept</th><th>no attack</th><th>ASR</th>"
            "<th>same prompts, unedited model</th><th>s per prompt</th></tr>"
        )
        for r in attacks:
            rates = [html.escape(r[k].text()) if r[k] else "–" for k in ("no_attack", "asr", "base_asr")]
            parts.append(
                f"<tr><td>{_fmt(r['model'])}</td><td>{_fmt(r['edit'])}</td><td>{_fmt(r['attack'])}</td>"
                f"<td>{_fmt(r['concept'])}</td><td>{rates[0]}</td><td>{rates[1]}</td><td>{rates[2]}</td>"
                f"<td>{_fmt(r['seconds_per_prompt'])}</td></tr>"
            )
        parts.append(
            "</table><p>Rates: k/n of images in which the judge reads the concept, 95 % Wilson "
            "interval in brackets. ASR counts the attack's prompts on the edit; the same prompts on "
            "the unedited model should show the concept (sanity).</p>"
        )
    if plot:
        parts.append(f"<h2>Probe accuracy</h2><img src='{plot.name}'>")
    for model, edit, grid in grids:
        parts.append(
            f"<h2>{html.escape(edit)} on {html.escape(model)}: base (left) vs edited (right)</h2>"
            f"<img src='{grid.name}'>"
        )
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def compare_runs(a: str | Path, b: str | Path) -> list[dict[str, Any]]:
    """Metric values of two runs side by side (``b - a``), matched on (model, edit, prompt set, metric)."""

    def load(p: str | Path) -> dict[tuple[str, str, str, str], Any]:
        path = Path(p)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            from conceptedit.errors import ConceptEditError

            raise ConceptEditError(f"{p}: no results.json (run `conceptedit eval CONFIG` first)")
        data = json.loads(path.read_text())
        return {
            (g["model"], g["edit"], g["prompt_set"], name): m["value"]
            for g in data["groups"]
            for name, m in g["metrics"].items()
        }

    left, right = load(a), load(b)
    out = []
    for key in sorted(set(left) | set(right)):
        va, vb = left.get(key), right.get(key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        out.append(
            {"model": key[0], "edit": key[1], "prompt_set": key[2], "metric": key[3], "a": va, "b": vb, "delta": delta}
        )
    return out
