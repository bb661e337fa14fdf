"""Concept residue on the shapes world: RealEra vs UCE (and ESD), with RealEra's ablations.

Each concept is erased with ONE word and measured through the words that were not erased (RealEra,
arXiv 2410.09140, calls what comes back "concept residue"):

- the halo, erased as ``glowing``, through its five other trigger words (``WORLD.trigger.words``);
- a character, erased by name, through its nickname (``WORLD.nicknames``);
- a shape, erased by name, through its synonym (``WORLD.synonyms``);

each with the training sentence frames and with held-out frames (``WORLD.heldout_templates``), plus the
erased word itself (training and held-out frames), other members of the family (in-domain retain) and
the other families on prompts without the concept (cross-domain retain, from
``conceptedit.datasets.shapes.prompt_sets.erasure_prompt_set``). Every run uses the same prompts and seeds;
the shapes probe (the judge of every erasure figure) reads the images. Rates are printed with their
``n`` and 95 % Wilson intervals; fit time per stage (RealEra: mining, closed form, LoRA) on this
machine's CPU.

Runs (``--runs``, comma-separated; ``LABEL`` or ``LABEL:PLUGIN``): ``realera`` (paper defaults as
implemented), ``realera-no-mining`` (``n_neighbours=0``), ``realera-no-reg`` (no beyond-concept terms),
``realera-no-lora`` (``lora_steps=0``), ``uce`` (defaults, the same target word), ``esd`` (defaults;
200 iterations: did not finish within 10 minutes for one concept on the loaded 2-core machine, so not in
the default list), ``realera-templates`` (context keys from the six templates, no corpus captions),
``realera-word`` (``keys=word``: the bare word's row, the default before Dec 4), ``uce-all`` (``token=all``).
``--set LABEL.KEY=VALUE`` overrides a run's config (recorded in the JSON).

Goals (issue 14): residue ≤ chance + 0.10 while UCE leaves more; erased ≤ chance + 0.10; in-domain
and cross-domain retain within 3 points of UCE's.

    python benchmarks/realera_residue.py                       # 3 concepts, n=10 per set: ~15 min on 2 cores
    python benchmarks/realera_residue.py --n 3 --concepts glowing,zorblax   # a quick check
    python benchmarks/realera_residue.py --model path/to/shapes-v2 --runs realera,uce,esd

Prints one JSON document (and a table) and writes ``benchmarks/results/realera_residue.json`` and, per concept,
``realera_CONCEPT.png``: two prompts of each set (columns), the base model and every run (rows), same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from erasure_baselines import grid

from conceptedit.config import config_to_dict
from conceptedit.datasets.shapes import WORLD, prompt_for
from conceptedit.datasets.shapes.erasure import chance_level
from conceptedit.datasets.shapes.probe_metric import ProbeAccuracy
from conceptedit.datasets.shapes.prompt_sets import ATTRIBUTE_SETS, concept_family, erasure_prompt_set
from conceptedit.eval.verdicts import wilson
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin
from conceptedit.toolkit import parse_overrides

RESULTS = Path(__file__).resolve().parent / "results"
CONCEPTS = ("glowing", "zorblax", "circle")
RUNS = ("realera", "realera-no-mining", "realera-no-reg", "realera-no-lora", "uce", "uce-all")
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "realera": ("realera", {}),
    "realera-no-mining": ("realera", {"n_neighbours": 0}),
    "realera-no-reg": ("realera", {"regularisation_scale": 0.0, "lora_regularisation": 0.0}),
    "realera-no-lora": ("realera", {"lora_steps": 0}),
    "uce": ("uce", {}),
    "esd": ("esd", {}),
    "realera-templates": ("realera", {"context_from_corpus": 0}),  # context keys from the six templates only
    "realera-word": ("realera", {"keys": "word", "context_from_corpus": 0}),  # UCE's keys: the bare word's row
    "uce-all": ("uce", {"token": "all"}),  # UCE's paper-time keys: the word's row through the padding
}
SETS = ("erased", "erased_heldout", "residue", "residue_heldout", "in_domain", "cross_domain")


def other_words(concept: str) -> list[str]:
    """The words of the concept that were not erased: trigger synonyms, the nickname, the shape's synonym."""
    family, value = concept_family(concept)
    if family == "trigger":
        return [w for w in WORLD.trigger.words if w != concept]
    if family == "character":
        return [WORLD.nicknames[value]]
    if family == "shape" and value in WORLD.synonyms:
        return [WORLD.synonyms[value]]
    raise SystemExit(f"{concept!r} has no other word in the world (pick a trigger word, a character or one of "
                     f"the shapes {sorted(WORLD.synonyms)})")  # fmt: skip


def concept_rows(concept: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Prompts naming the concept by its erased word or by its other words, in training / held-out frames."""
    family, value = concept_family(concept)
    rng = np.random.default_rng([seed, sum(map(ord, concept))])
    aliases = other_words(concept)
    rows = []
    for set_name, frames, alias in (("erased", WORLD.train_templates, False),
                                    ("erased_heldout", WORLD.heldout_templates, False),
                                    ("residue", WORLD.train_templates, True),
                                    ("residue_heldout", WORLD.heldout_templates, True)):  # fmt: skip
        for i in range(n):
            word = aliases[i % len(aliases)] if alias else concept
            include = ATTRIBUTE_SETS[int(rng.integers(len(ATTRIBUTE_SETS)))]
            labels: dict[str, Any] = {
                "shape": WORLD.shapes[int(rng.integers(len(WORLD.shapes)))],
                "colour": WORLD.colour_names[int(rng.integers(len(WORLD.colour_names)))],
                "style": WORLD.styles[int(rng.integers(len(WORLD.styles)))],
                "background": WORLD.background_names[int(rng.integers(len(WORLD.background_names)))],
                "character": None,
                "trigger": family == "trigger",
            }
            trigger_word = None
            if family == "character":
                c = WORLD.character(value)
                labels.update(shape=c.shape, colour=c.colour, style=c.style, background=c.background, character=value)
                labels["character_word"] = word
            elif family == "shape":
                labels["shape"] = value
                labels["shape_word"] = word
            else:
                include = include + ("trigger",)
                trigger_word = word
            prompt = prompt_for(labels, frames[i % len(frames)], include, trigger_word=trigger_word)
            rows.append({"set": set_name, "prompt": prompt, "word": word, "target": (family, value)})
    return rows


def retain_rows(concept: str, n: int, seed: int) -> list[dict[str, Any]]:
    """In-domain and cross-domain rows of the standard erasure prompt set (labels per family)."""
    out = []
    for r in erasure_prompt_set([concept], per_role=n, seed=seed):
        if r.role in ("in_domain", "cross_domain"):
            out.append({"set": r.role, "prompt": r.prompt, "labels": dict(r.labels), "target": concept_family(concept)})
    return out


def grid_indices(rows: list[dict[str, Any]], per_set: int = 2) -> list[int]:
    """The rows shown in the benchmark's image grid: the first ``per_set`` of each set."""
    out: list[int] = []
    for name in SETS:
        out += [i for i, r in enumerate(rows) if r["set"] == name][:per_set]
    return out


def hits(row: dict[str, Any], pred: dict[str, str]) -> list[float]:
    """Per row, 1/0 per scored label: the concept read back (erased/residue sets) or a label kept (retain)."""
    family, value = row["target"]
    if row["set"] in ("in_domain", "cross_domain"):
        keys = [family] if row["set"] == "in_domain" else [f for f in row["labels"] if f != family]
        return [float(pred.get(f) == row["labels"][f]) for f in keys if f in row["labels"]]
    return [float(pred.get(family) == value)]


def score(metric: ProbeAccuracy, rows: list[dict[str, Any]], images: list[Any]) -> dict[str, dict[str, Any]]:
    preds = [s["pred"] for s in metric.score_images([], images)]
    counts: dict[str, list[float]] = {s: [] for s in SETS}
    for row, pred in zip(rows, preds, strict=True):
        counts[row["set"]] += hits(row, pred)
    out = {}
    for name, values in counts.items():
        if values:
            k, n = int(sum(values)), len(values)
            lo, hi = wilson(k, n)
            out[name] = {"rate": round(k / n, 4), "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes", help="anything load_pipeline accepts (default: shapes)")
    parser.add_argument("--probe", default=None, help="probe folder (default: <model>/probe, else the shipped one)")
    parser.add_argument("--concepts", default=",".join(CONCEPTS), help="erase words (one per erasure)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"runs among {', '.join(ABLATIONS)}, or LABEL:PLUGIN")
    parser.add_argument("--n", type=int, default=10, help="prompts per set per concept")
    parser.add_argument("--seed", type=int, default=0, help="prompt-set seed; image seeds are seed*10000 + index")
    parser.add_argument("--set", action="append", default=[], metavar="LABEL.KEY=VALUE", help="config override")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CONCEPTEDIT_THREADS", "1")))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set, "--set")

    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    probe = args.probe or (str(Path(args.model) / "probe") if (Path(args.model) / "probe").is_dir() else None)
    metric = ProbeAccuracy({"path": probe} if probe else None)
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    for concept in [c for c in args.concepts.split(",") if c]:
        rows = concept_rows(concept, args.n, args.seed) + retain_rows(concept, args.n, args.seed)
        prompts = [r["prompt"] for r in rows]
        seeds = [args.seed * 10000 + i for i in range(len(rows))]
        t0 = time.perf_counter()
        shown = grid_indices(rows)
        base_images = generate(pipe, prompts, seeds, batch_size=args.batch_size)
        base = score(metric, rows, base_images)
        grid_rows = [("base", [base_images[i] for i in shown])]
        record: dict[str, Any] = {
            "concept": concept,
            "other_words": other_words(concept),
            "chance": round(chance_level(concept), 4),
            "base": base,
            "base_generation_seconds": round(time.perf_counter() - t0, 1),
            "examples": {r["set"]: r["prompt"] for r in reversed(rows)},
            "runs": {},
        }
        print(json.dumps({"concept": concept, "base": base}), flush=True)
        for run in [r for r in args.runs.split(",") if r]:
            label, _, name = run.rpartition(":")
            label = label or name
            plugin_name, config = ABLATIONS.get(name, (name, {}))
            config = dict(config)
            config.update({k[len(label) + 1 :]: v for k, v in overrides.items() if k.startswith(label + ".")})
            plugin = get_plugin(plugin_name).for_pipeline(pipe, config)
            t0 = time.perf_counter()
            edit = plugin.fit(pipe, Request(targets=[concept]))
            fit_seconds = time.perf_counter() - t0
            with edit.apply(pipe):
                images = generate(pipe, prompts, seeds, batch_size=args.batch_size)
            after = score(metric, rows, images)
            grid_rows.append((label, [images[i] for i in shown]))
            entry = {
                "plugin": plugin_name,
                "config_overrides": config,
                "config": config_to_dict(plugin.config),
                "fit_seconds": round(fit_seconds, 2),
                "stage_seconds": edit.manifest.extra.get("stage_seconds"),
                "after": after,
            }
            record["runs"][label] = entry
            print(json.dumps({"concept": concept, "run": label, "fit_seconds": entry["fit_seconds"],
                              "stage_seconds": entry["stage_seconds"], "after": after}), flush=True)  # fmt: skip
        add_goals(record)
        results.append(record)
        args.out.mkdir(parents=True, exist_ok=True)
        grid([f"{rows[i]['set']}: {rows[i]['prompt']}" for i in shown], grid_rows, args.out / f"realera_{concept}.png")
    report = {
        "benchmark": "realera_residue",
        "model": args.model,
        "n_per_set": args.n,
        "seed": args.seed,
        "sets": list(SETS),
        "results": results,
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "platform": platform.platform()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "realera_residue.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    print(table(results))


def add_goals(record: dict[str, Any]) -> None:
    """Issue 14's goals for every RealEra run, against the UCE run of the same concept (if any)."""
    chance = record["chance"]
    uce = record["runs"].get("uce", {}).get("after", {})
    for entry in record["runs"].values():
        if entry["plugin"] != "realera":
            continue
        a = entry["after"]
        rate = lambda d, k: d.get(k, {}).get("rate")  # noqa: E731
        base = record["base"]
        goals = {
            # untestable when the original model does not show the concept through the other words either
            "residue_testable": (rate(base, "residue") or 0) > chance + 0.10,
            "residue_le_chance_plus_0.10": rate(a, "residue") is not None and rate(a, "residue") <= chance + 0.10,
            "erased_le_chance_plus_0.10": rate(a, "erased") is not None and rate(a, "erased") <= chance + 0.10,
        }
        if uce:
            goals["uce_leaves_more_residue"] = (rate(uce, "residue") or 0) > (rate(a, "residue") or 0)
            for key in ("in_domain", "cross_domain"):
                if rate(a, key) is not None and rate(uce, key) is not None:
                    goals[f"{key}_within_3pts_of_uce"] = rate(a, key) >= rate(uce, key) - 0.03
        entry["goals"] = goals


def table(results: list[dict[str, Any]]) -> str:
    """Rates (n) per concept and run, one line each: base first."""
    head = f"{'concept':10} {'run':18} " + " ".join(f"{s:>16}" for s in SETS) + "   fit s"
    lines = [head]
    for rec in results:
        rows = [("base", rec["base"], None)] + [(k, v["after"], v["fit_seconds"]) for k, v in rec["runs"].items()]
        for label, scores, fit in rows:
            cells = [f"{scores[s]['rate']:.2f} ({scores[s]['n']:>3})" if s in scores else "-" for s in SETS]
            lines.append(f"{rec['concept']:10} {label:18} " + " ".join(f"{c:>16}" for c in cells)
                         + (f"   {fit:.1f}" if fit is not None else ""))  # fmt: skip
        lines.append(f"{'':10} chance {rec['chance']:.2f}; other words: {', '.join(rec['other_words'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
