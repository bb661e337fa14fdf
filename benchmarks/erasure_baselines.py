"""Erasure baselines on the built-in shapes model: few-shot unlearning, ESD and UCE.

For each plugin and each concept (one shape, one named character, one fill style; each erased alone)
this fits the plugin with its paper defaults (the few benchmark-specific settings are in ``RUNS`` and
printed in the JSON), generates the concept's erasure prompt set (``conceptedit.datasets.shapes.prompt_sets``:
target prompts, held-out frames / paraphrases, other members of the family, unrelated prompts) with the
same seeds for base and edited, and scores it with the shapes probe (``conceptedit.datasets.shapes.erasure``):

- ``erased_accuracy``: the probe reads the erased concept on prompts naming it (goal: at or below chance);
- ``erased_accuracy_paraphrase``: the same on held-out sentence frames / paraphrases;
- ``in_domain_retain``: other members of the concept's family (other shapes, characters, styles);
- ``cross_domain_retain``: the other families on prompts without the concept (goal: drop ≤ 3 points);
- fit time on CPU (goals: few-shot < 60 s, UCE < 5 s).

Prints one JSON document and writes ``benchmarks/results/erasure_baselines.json`` plus a PNG grid per
concept (rows: base, then each plugin; columns: a few prompts of each role).

    python benchmarks/erasure_baselines.py     # 480 images; ~5 min alone on 2 cores, ~15 min on a loaded machine
    python benchmarks/erasure_baselines.py --plugins uce --concepts circle --per-role 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import textwrap
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from conceptedit.config import config_to_dict
from conceptedit.datasets.shapes import WORLD
from conceptedit.datasets.shapes.erasure import chance_level, score_images
from conceptedit.datasets.shapes.probe_metric import ProbeAccuracy
from conceptedit.datasets.shapes.prompt_sets import concept_family, erasure_prompt_set
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

RESULTS = Path(__file__).resolve().parent / "results"
CONCEPTS = ("circle", "zorblax", "striped")
PLUGINS = ("fewshot-unlearning", "esd", "uce")
EVAL_SEED = 0  # prompt-set seed of the evaluation; few-shot training images use another one
TRAIN_SEED = 1


def run_config(plugin: str, concept: str) -> dict[str, Any]:
    """Benchmark settings on top of each plugin's paper defaults (empty = all defaults)."""
    family, _ = concept_family(concept)
    if plugin == "fewshot-unlearning":
        # images: the base model's own generations (no real photos in the shapes world); the paper's
        # template sets: object templates for objects/identities, style templates for styles.
        return {"images_from_model": True, "template_set": "style" if family == "style" else "object"}
    return {}


def non_default(plugin: Any) -> dict[str, Any]:
    """The config values that differ from the paper defaults (model presets included)."""
    default = config_to_dict(type(plugin)().config)
    return {k: v for k, v in config_to_dict(plugin.config).items() if default.get(k) != v}


def preserve_words(concept: str) -> list[str]:
    """For ``…+preserve`` runs: every other concept word of the world (UCE's preserve list, as the paper
    preserves other artists / objects)."""
    w = WORLD
    words = list(w.shapes) + list(w.colour_names) + list(w.background_names) + list(w.styles)
    return [x for x in words + list(w.character_names) if x != concept]


def training_prompts(concept: str, n: int = 4) -> list[str]:
    """Prompts naming the concept for few-shot training images: training frames, but drawn with a
    different prompt-set seed than the evaluation, so no evaluated prompt is trained on."""
    rows = [r for r in erasure_prompt_set([concept], per_role=n, seed=TRAIN_SEED) if r.role == "target"]
    return [r.prompt for r in rows]


def grid(columns: list[str], rows: list[tuple[str, list[Image.Image]]], path: Path) -> None:
    """A labelled image grid: one row per model (base first), one column per prompt."""
    width = rows[0][1][0].width
    size = width * max(1, -(-128 // width))  # at least 128 px per cell, integer upscaling
    left, top = 130, 40
    canvas = Image.new("RGB", (left + size * len(columns), top + size * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(columns):
        lines = textwrap.wrap(text, 20)
        draw.multiline_text((left + j * size + 2, 1), "\n".join(lines[:3]), fill="black", spacing=0)
    for i, (label, images) in enumerate(rows):
        draw.text((4, top + i * size + size // 2 - 6), label, fill="black")
        for j, im in enumerate(images):
            canvas.paste(im.resize((size, size), Image.Resampling.NEAREST), (left + j * size, top + i * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--plugins",
        default=",".join(PLUGINS),
        help="runs: PLUGIN or LABEL:PLUGIN (LABEL ending in +preserve: preserve the other world words;"
        " --set keys use the label)",
    )
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--per-role", type=int, default=10, help="prompts per role (4 roles) per concept")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("CONCEPTEDIT_THREADS", "1")),
        help="torch intra-op threads (1 is fastest on a loaded 2-core machine)",
    )
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--probe", default=None, help="probe folder (default: <model>/probe, else the shipped one)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="extra config override, e.g. esd.iterations=20 (recorded in the JSON)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plugins = [p for p in args.plugins.split(",") if p]
    concepts = [c for c in args.concepts.split(",") if c]

    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    probe = args.probe or (str(Path(args.model) / "probe") if (Path(args.model) / "probe").is_dir() else None)
    metric = ProbeAccuracy({"path": probe} if probe else None)
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    n_images = 0
    for concept in concepts:
        rows = erasure_prompt_set([concept], args.per_role, seed=EVAL_SEED)
        prompts, seeds = [r.prompt for r in rows], [r.evaluation_seed for r in rows]
        t0 = time.perf_counter()
        base_images = generate(pipe, prompts, seeds, batch_size=args.batch_size)
        gen_seconds = time.perf_counter() - t0
        n_images += len(rows)
        before = score_images(metric, rows, seeds, base_images, "base")
        # grid columns: two prompts of each role
        picks = [
            i
            for role in ("target", "target_paraphrase", "in_domain", "cross_domain")
            for i in [k for k, r in enumerate(rows) if r.role == role][:2]
        ]
        grid_rows = [("base", [base_images[i] for i in picks])]
        for run in plugins:
            label, _, name = run.rpartition(":")
            label = label or name
            config = run_config(name, concept)
            for item in args.set:
                key, _, value = item.partition("=")
                if key.startswith(label + "."):
                    config[key[len(label) + 1 :]] = value
            plugin = get_plugin(name).for_pipeline(pipe, config)  # model presets, then these overrides
            request = Request(
                targets=[concept],
                preserve=preserve_words(concept) if label.endswith("+preserve") else [],
                prompts=training_prompts(concept) if name == "fewshot-unlearning" else [],
            )
            last = [0.0]

            def progress(fraction: float, message: str, _tag: str = f"{label} {concept}", _last: list = last) -> None:
                if fraction - _last[0] >= 0.25 or fraction >= 1.0:
                    _last[0] = fraction
                    print(f"  {_tag}: {fraction:4.0%} {message}", flush=True)

            t0 = time.perf_counter()
            edit = plugin.fit(pipe, request, progress=progress)
            fit_seconds = time.perf_counter() - t0
            with edit.apply(pipe):
                after_images = generate(pipe, prompts, seeds, batch_size=args.batch_size)
            n_images += len(rows)
            after = score_images(metric, rows, seeds, after_images, name)
            grid_rows.append((label, [after_images[i] for i in picks]))
            record = {
                "run": label,
                "plugin": name,
                "concept": concept,
                "family": concept_family(concept)[0],
                "chance": round(chance_level(concept), 4),
                "fit_seconds": round(fit_seconds, 2),
                "config_overrides": config,
                "config_non_default": non_default(plugin),
                "preserve": request.preserve,
                "before": {k: round(v, 4) for k, v in before.items()},
                "after": {k: round(v, 4) for k, v in after.items()},
            }
            record["goals"] = {
                "erased_at_or_below_chance": after.get("erased_accuracy", 1.0) <= record["chance"] + 1e-9,
                "cross_domain_drop_le_3pts": before["cross_domain_retain"] - after["cross_domain_retain"] <= 0.03,
                "in_domain_drop_le_3pts": before.get("in_domain_retain", 0) - after.get("in_domain_retain", 0) <= 0.03,
            }
            if name == "fewshot-unlearning":
                record["goals"]["fit_under_60s"] = fit_seconds < 60
            if name == "uce":
                record["goals"]["fit_under_5s"] = fit_seconds < 5
            results.append(record)
            print(json.dumps(record), flush=True)
        grid([prompts[i] for i in picks], grid_rows, args.out / f"erasure_{concept}.png")
        print(f"  base generation of {len(rows)} images: {gen_seconds:.1f}s", flush=True)

    report = {
        "benchmark": "erasure_baselines",
        "model": args.model,
        "per_role": args.per_role,
        "images_per_concept": 4 * args.per_role,
        "images_generated": n_images,
        "threads": args.threads,
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "erasure_baselines.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
