"""The evaluation report: ``results.json`` (machine-readable), ``report.html`` (first a verdict per
edit — erased / partial / failed / damaging, the rule of :mod:`conceptedit.eval.verdicts` — then
every metric before → after per edit with n and Wilson intervals on rates, bar plots with chance
lines, one grid of all edits on the same prompts and seeds, and labelled base-vs-edited grids), and
the comparison of two runs (``conceptedit eval compare A B``)."""

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
from conceptedit.eval.verdicts import RULE, Rate, bucket_of, chance_from_rows, change_class, rates_from_metrics, verdict

GRID_CELL = 160  # thumbnail side in the report's grids (small models are scaled up, pixels kept sharp)


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
                **{k: run[k] for k in ("model", "edit", "attack", "concept", "prompt_set", "seconds_per_prompt")},
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
            base_n = base["metrics"].get(name, {}).get("details", {}).get("n")
            n = result.get("details", {}).get("n")
            is_rate = bucket_of(name) is not None
            rows.append(
                {
                    "model": g["model"],
                    "edit": g["edit"],
                    "prompt_set": g["prompt_set"],
                    "metric": name,
                    "base": before,
                    "edited": result["value"],
                    "higher_is_better": result.get("higher_is_better"),
                    "n": n,
                    "base_n": base_n,
                    "base_rate": Rate.of(before, base_n) if is_rate else None,
                    "rate": Rate.of(result["value"], n) if is_rate else None,
                }
            )
    return rows


def _plot(rows: list[dict[str, Any]], path: Path, chances: dict[tuple[str, str], float | None]) -> Path | None:
    """Bars of every label-accuracy rate (base and edited, Wilson intervals as error bars) with a
    dashed chance line over the rates of the concept to erase."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if r.get("rate") is not None]
    if not rows:
        return None
    labels = [  # an attack's rate is named by its attack (every attack set has the same metric name)
        f"{r['edit']}\n"
        + (r["prompt_set"][7:].split("@")[0].split("[")[0] + " ASR" if r["prompt_set"].startswith("attack:") else "")
        + (r["metric"].rsplit(".", 1)[-1] if not r["prompt_set"].startswith("attack:") else "")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.4))
    xs = list(range(len(rows)))
    for offset, key, name in ((-0.2, "base_rate", "base"), (0.2, "rate", "edited")):
        rates = [r[key] for r in rows]
        values = [rate.value if rate else 0.0 for rate in rates]
        err = [  # clamped: a Wilson bound equal to the rate can come out a rounding error beyond it
            [max(0.0, v - (rt.interval[0] if rt else v)) for v, rt in zip(values, rates, strict=True)],
            [max(0.0, (rt.interval[1] if rt else v) - v) for v, rt in zip(values, rates, strict=True)],
        ]
        ax.bar([x + offset for x in xs], values, width=0.4, label=name, yerr=err, capsize=2)
    shown = False
    for x, r in zip(xs, rows, strict=True):
        chance = chances.get((r["model"], r["prompt_set"]))
        if chance is not None and bucket_of(r["metric"]) in (
            "erased_accuracy",
            "erased_accuracy_paraphrase",
            "attack_success_rate",
        ):
            ax.hlines(
                chance, x - 0.45, x + 0.45, colors="black", linestyles="dashed", label=None if shown else "chance"
            )
            shown = True
    ax.set_xticks(xs, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (95 % Wilson interval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labelled_grid(
    columns: list[str], cases: list[tuple[str, list[ImageRow | None]]], path: Path, cell: int = GRID_CELL
) -> Path:
    """A grid with a header of column labels and one labelled row per case (missing images grey)."""
    label_h, header_h, gap = 30, 20, 6
    grid = Image.new("RGB", (len(columns) * (cell + gap), header_h + len(cases) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(columns):
        draw.text((j * (cell + gap) + 2, 4), name[: cell // 6], fill="black")
    for i, (caption, images) in enumerate(cases):
        y = header_h + i * (cell + label_h)
        draw.text((2, y + 4), caption[: len(columns) * (cell + gap) // 6], fill="black")
        for j, row in enumerate(images):
            if row is None:
                grid.paste(
                    (220, 220, 220),
                    (j * (cell + gap), y + label_h - 4, j * (cell + gap) + cell, y + label_h - 4 + cell),
                )
                continue
            with Image.open(row.image_path) as image:
                tile = image.convert("RGB").resize((cell, cell), Image.NEAREST)
                grid.paste(tile, (j * (cell + gap), y + label_h - 4))
    grid.save(path)
    return path


def image_grid(pairs: list[tuple[ImageRow, ImageRow]], path: Path, cell: int = GRID_CELL) -> Path:
    """Base (left) and edited (right) images of the same prompt and seed, column labels on top and
    prompts as row labels."""
    cases = [
        (f"{edited.role or 'prompt'}: {edited.prompt} (seed {edited.seed})", [base, edited]) for edited, base in pairs
    ]
    return _labelled_grid(["base", "edited"], cases, path, cell)


def _sample_cases(rows: list[ImageRow], count: int) -> list[ImageRow]:
    """About half target-like rows (the concept should be gone), half the others, seeded."""
    targets = [r for r in rows if r.role in ("target", "target_paraphrase", "attack")]
    others = [r for r in rows if r not in targets]
    rng = random.Random(0)
    chosen = rng.sample(targets, min(len(targets), count // 2 or 1)) if targets else []
    return chosen + rng.sample(others, min(len(others), count - len(chosen)))


def compare_grid(rows: list[ImageRow], model: str, prompt_set: str, path: Path, count: int) -> Path | None:
    """All edits of a (model, prompt set) on the same sampled prompts and seeds: base first, one column per edit."""
    mine = [r for r in rows if r.model == model and r.prompt_set == prompt_set]
    base = sorted((r for r in mine if r.edit == BASE), key=lambda r: (r.case_number, r.seed))
    edits = sorted({r.edit for r in mine if r.edit != BASE})
    if not base or not edits:
        return None
    index = {(r.edit, r.case_number, r.seed): r for r in mine}
    cases = [
        (
            f"{b.role or 'prompt'}: {b.prompt} (seed {b.seed})",
            [b, *(index.get((e, b.case_number, b.seed)) for e in edits)],
        )
        for b in _sample_cases(base, count)
    ]
    return _labelled_grid(["base", *edits], cases, path)


def verdict_rows(results: dict[str, Any], rows: list[ImageRow]) -> list[dict[str, Any]]:
    """Per (model, edit, prompt set, label metric): the rates, the chance level and the verdict."""
    by_key = {(g["model"], g["edit"], g["prompt_set"]): g for g in results["groups"]}
    chances = chance_levels(rows)
    out = []
    for g in results["groups"]:
        if g["edit"] == BASE:
            continue
        base = by_key.get((g["model"], BASE, g["prompt_set"]), {"metrics": {}})
        prefixes = sorted({name.rsplit(".", 1)[0] for name in g["metrics"] if bucket_of(name)})
        for prefix in prefixes:
            after, before = rates_from_metrics(g["metrics"], prefix), rates_from_metrics(base["metrics"], prefix)
            chance = chances.get((g["model"], g["prompt_set"]))
            result = verdict(before, after, chance)
            out.append(
                {
                    "model": g["model"],
                    "edit": g["edit"],
                    "prompt_set": g["prompt_set"],
                    "metric": prefix,
                    "chance": chance,
                    "base": before,
                    "edited": after,
                    "verdict": result,
                }
            )
    return out


def chance_levels(rows: list[ImageRow]) -> dict[tuple[str, str], float | None]:
    """Chance level per (model, prompt set), from the base rows' roles and labels. A set of attack
    prompts names no neighbours of its concept, so its chance counts the family's members from the
    model's other prompt sets with the same concept (else a character would count as present/absent)."""
    groups: dict[tuple[str, str], list[ImageRow]] = {}
    for r in rows:
        if r.edit == BASE:
            groups.setdefault((r.model, r.prompt_set), []).append(r)
    out = {}
    for (model, prompt_set), members in groups.items():
        if all(r.role == "attack" for r in members):
            concepts = {r.concept for r in members}
            members = members + [
                r
                for (m, ps), others in groups.items()
                if m == model and ps != prompt_set
                for r in others
                if r.concept in concepts and r.role != "attack"
            ]
        out[(model, prompt_set)] = chance_from_rows(members)
    return out


def attack_successes(rows: list[ImageRow]) -> dict[tuple[str, str, str], list[ImageRow]]:
    """Per (model, edit, attack prompt set): the attack images in which a label metric reads the row's
    concept (the successes the ASR counts), in case order."""
    from conceptedit.eval.metrics.base import METRICS
    from conceptedit.eval.metrics.labels import LabelAccuracy

    readers: dict[str, LabelAccuracy | None] = {}
    out: dict[tuple[str, str, str], list[ImageRow]] = {}
    for r in rows:
        if r.role != "attack" or not r.concept:
            continue
        for name, score in r.per_image.items():
            if name not in readers:
                cls = METRICS[name] if name in METRICS else None
                readers[name] = cls() if isinstance(cls, type) and issubclass(cls, LabelAccuracy) else None
            reader, pred = readers[name], (score or {}).get("pred")
            target = reader.target_of(r.concept) if reader is not None and pred else None
            if target and reader.detected(target[0], target[1], pred.get(target[0], "")):
                out.setdefault((r.model, r.edit, r.prompt_set), []).append(r)
                break
    return out


def _rate_cell(rate: Rate | None) -> str:
    return html.escape(rate.text()) if rate else "–"


def write_report(out: Path, cfg: EvalConfig, results: dict[str, Any], rows: list[ImageRow]) -> Path:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    comparisons = comparison_rows(results)
    chances = chance_levels(rows)
    plot = _plot(comparisons, out / "probe.png", chances)
    grids = []
    base_index = {(r.model, r.prompt_set, r.case_number, r.seed): r for r in rows if r.edit == BASE}

    def safe(text: str) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)

    compare_grids = []
    for model, prompt_set in sorted({(r.model, r.prompt_set) for r in rows}):
        grid = compare_grid(
            rows, model, prompt_set, out / f"compare_{safe(f'{model}_{prompt_set}')}.png", cfg.grid_cases
        )
        if grid:
            compare_grids.append((model, prompt_set, grid))
    edits = sorted({(r.model, r.edit) for r in rows if r.edit != BASE})
    for model, edit in edits:
        pairs = {
            id(r): (r, base_index[(r.model, r.prompt_set, r.case_number, r.seed)])
            for r in rows
            if r.model == model and r.edit == edit and (r.model, r.prompt_set, r.case_number, r.seed) in base_index
        }
        chosen = [pairs[id(r)] for r in _sample_cases([p[0] for p in pairs.values()], cfg.grid_cases)]
        if chosen:
            grids.append((model, edit, image_grid(chosen, out / f"grid_{safe(f'{model}_{edit}')}.png")))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>conceptedit eval: "
        f"{html.escape(cfg.name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,td:nth-child(2),td:nth-child(3),td:nth-child(4){text-align:left}"
        ".good{background:#dfd}.bad{background:#fdd}.partial{background:#ffe9b3}"
        ".v-erased{background:#bfb}.v-partial{background:#ffe9b3}.v-failed,.v-damaging{background:#fbb}"
        "</style></head><body>",
        f"<h1>{html.escape(cfg.name)}</h1><p>{results['n_images']} images; models: "
        f"{html.escape(', '.join(cfg.models))}</p>",
    ]
    from conceptedit.eval.image_edits import image_edit_html

    parts += image_edit_html(results.get("image_edits", []))
    verdicts = verdict_rows(results, rows)
    if verdicts:
        parts.append(
            "<h2>Verdicts</h2><table><tr><th>model</th><th>edit</th><th>prompt set</th><th>verdict</th>"
            "<th>erased (target)</th><th>paraphrase</th><th>in-domain retain</th><th>cross-domain retain</th>"
            "<th>chance</th><th>why</th></tr>"
        )
        for v in verdicts:
            cells = [
                f"{_rate_cell(v['base'].get(b))} → {_rate_cell(v['edited'].get(b))}"
                for b in ("erased_accuracy", "erased_accuracy_paraphrase", "in_domain_retain", "cross_domain_retain")
            ]
            word = v["verdict"].word
            parts.append(
                f"<tr><td>{_fmt(v['model'])}</td><td>{_fmt(v['edit'])}</td><td>{_fmt(v['prompt_set'])}</td>"
                f"<td class='v-{word}'><b>{html.escape(word)}</b></td>"
                + "".join(f"<td>{c}</td>" for c in cells)
                + f"<td>{_fmt(v['chance'])}</td><td style='text-align:left'>"
                f"{html.escape('; '.join(v['verdict'].reasons))}</td></tr>"
            )
        rule = html.escape(RULE).replace("**", "")
        parts.append(
            f"</table><p>Base → edited, same prompts and seeds. {rule} Chance: a uniform guess among "
            "the members of the target's family in the prompt set.</p>"
        )
    if results["unavailable"]:
        parts.append("<h2>Unavailable metrics</h2><ul>")
        parts += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in results["unavailable"].items()]
        parts.append("</ul>")
    parts.append(
        "<h2>Edited vs base (same prompts and seeds)</h2><table><tr><th>model</th><th>edit</th>"
        "<th>prompt set</th><th>metric</th><th>base</th><th>edited</th><th>n</th></tr>"
    )
    for r in comparisons:
        chance = chances.get((r["model"], r["prompt_set"]))
        cls = change_class(r["metric"], r["base"], r["edited"], r["higher_is_better"], chance)
        before = _rate_cell(r["base_rate"]) if r["base_rate"] else _fmt(r["base"])
        after = _rate_cell(r["rate"]) if r["rate"] else _fmt(r["edited"])
        parts.append(
            f"<tr class='{cls}'><td>{_fmt(r['model'])}</td><td>{_fmt(r['edit'])}</td><td>{_fmt(r['prompt_set'])}</td>"
            f"<td>{_fmt(r['metric'])}</td><td>{before}</td><td>{after}</td><td>{_fmt(r['n'])}</td></tr>"
        )
    parts.append(
        "</table><p>Rates: value [95 % Wilson interval] n=images. Green: the concept to erase is at or below "
        "chance, or a retained rate held; amber: the concept's rate fell but not to chance; red: no change (or "
        "a rise) on the concept to erase, or a retained rate fell by more than the tolerance.</p>"
    )
    attacks = attack_rows(results)
    successes = attack_successes(rows)
    success_grids = []
    if attacks:
        parts.append(
            "<h2>Attack success rate (method × attack)</h2><table><tr><th>model</th><th>edit</th>"
            "<th>attack</th><th>concept</th><th>no attack</th><th>ASR</th>"
            "<th>same prompts, unedited model</th><th>chance</th><th>s per prompt</th></tr>"
        )
        for r in attacks:
            rates = [html.escape(r[k].text()) if r[k] else "–" for k in ("no_attack", "asr", "base_asr")]
            chance = chances.get((r["model"], r["prompt_set"]))
            asr = r["asr"]
            cls = "" if asr is None or chance is None else ("bad" if asr.interval[0] > chance else "good")
            parts.append(
                f"<tr><td>{_fmt(r['model'])}</td><td>{_fmt(r['edit'])}</td><td>{_fmt(r['attack'])}</td>"
                f"<td>{_fmt(r['concept'])}</td><td>{rates[0]}</td><td class='{cls}'>{rates[1]}</td>"
                f"<td>{rates[2]}</td><td>{_fmt(chance)}</td><td>{_fmt(r['seconds_per_prompt'])}</td></tr>"
            )
            found = successes.get((r["model"], r["edit"], r["prompt_set"]), [])
            pairs = [
                (row, base_index[(row.model, row.prompt_set, row.case_number, row.seed)])
                for row in found
                if (row.model, row.prompt_set, row.case_number, row.seed) in base_index
            ][: cfg.grid_cases]
            if pairs:
                name = safe(f"attack_{r['model']}_{r['edit']}_{r['prompt_set']}")
                success_grids.append((r, len(found), image_grid(pairs, out / f"{name}.png")))
        parts.append(
            "</table><p>Rates: k/n of images in which the judge reads the concept, 95 % Wilson "
            "interval in brackets. ASR counts the attack's prompts on the edit (red: its interval lies "
            "above chance, the attack brings the concept back; green: it does not); the same prompts on "
            "the unedited model should show the concept (sanity). Chance: a uniform guess among the "
            "members of the concept's family.</p>"
        )
        for r, k, grid in success_grids:
            parts.append(
                f"<h2>Successful attacks: {html.escape(r['attack'])} against {html.escape(r['edit'])} "
                f"({k} of {r['asr'].n if r['asr'] else '?'}; unedited left, edited right)</h2>"
                f"<img src='{grid.name}'>"
            )
    if plot:
        parts.append(f"<h2>Rates, base and edited (dashed: chance)</h2><img src='{plot.name}'>")
    for model, prompt_set, grid in compare_grids:
        parts.append(
            f"<h2>All edits on {html.escape(model)}, prompt set {html.escape(prompt_set)}: the same prompts and "
            f"seeds</h2><img src='{grid.name}'>"
        )
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
