"""LoRA vs weight delta: does ``artifact: lora`` erase as well as the full mode at its defaults?

For each (plugin, concept) this fits the plugin twice with the same settings (model presets + paper
defaults), once with ``artifact: weight_delta`` and once with ``artifact: lora`` (rank, alpha and
``lora_lr`` at their defaults: rank 4, alpha = rank, lr x 10 — see ``plugins/_training.py``), and scores
both on the same erasure prompt set and seeds with the shapes probe (the scoring of
``benchmarks/erasure_baselines.py``): erased accuracy on training and held-out frames, in- and
cross-domain retain, and the mean absolute pixel change (0-255) on the target prompts. A third run
(``lora@same-lr``) trains the LoRA at the full mode's lr, the setting before ``lora_lr`` existed.

    python benchmarks/lora_vs_full.py                       # few-shot on zorblax; ~2 min alone on 2 cores
    python benchmarks/lora_vs_full.py --runs esd:circle --set esd.iterations=60 --set esd.train_method=esd-u
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptedit.datasets.shapes.erasure import chance_level, score_images
from conceptedit.datasets.shapes.probe_metric import ProbeAccuracy
from conceptedit.datasets.shapes.prompt_sets import erasure_prompt_set
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_SEED, TRAIN_SEED = 0, 1


def training_prompts(concept: str, n: int = 4) -> list[str]:
    """Few-shot training images' prompts: training frames from another prompt-set seed than the evaluation."""
    return [r.prompt for r in erasure_prompt_set([concept], per_role=n, seed=TRAIN_SEED) if r.role == "target"][:n]


def pixel_change(a: list, b: list) -> float:
    diffs = [np.abs(np.asarray(x, float) - np.asarray(y, float)).mean() for x, y in zip(a, b, strict=True)]
    return float(np.mean(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="fewshot-unlearning:zorblax", help="PLUGIN:CONCEPT,...")
    parser.add_argument("--per-role", type=int, default=6, help="prompts per role (4 roles)")
    parser.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE", help="config override")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    metric = ProbeAccuracy()
    started, results = time.perf_counter(), []
    for run in args.runs.split(","):
        name, _, concept = run.partition(":")
        rows = erasure_prompt_set([concept], args.per_role, seed=EVAL_SEED)
        prompts, seeds = [r.prompt for r in rows], [r.evaluation_seed for r in rows]
        targets = [i for i, r in enumerate(rows) if r.role == "target"]
        base = generate(pipe, prompts, seeds, batch_size=24)
        record: dict[str, Any] = {
            "plugin": name,
            "concept": concept,
            "chance": round(chance_level(concept), 4),
            "base": score_images(metric, rows, seeds, base, "base"),
        }
        common: dict[str, Any] = {"images_from_model": True} if name == "fewshot-unlearning" else {}
        for item in args.set:
            key, _, value = item.partition("=")
            if key.startswith(name + "."):
                common[key[len(name) + 1 :]] = json.loads(value) if value[:1] in "0123456789-[{tn" else value
        full_lr = get_plugin(name).for_pipeline(pipe, common).config.lr
        variants = {
            "weight_delta": {"artifact": "weight_delta"},
            "lora": {"artifact": "lora"},
            "lora@same-lr": {"artifact": "lora", "lora_lr": full_lr},
        }
        for label, extra in variants.items():
            plugin = get_plugin(name).for_pipeline(pipe, {**common, **extra})
            request = Request(targets=[concept], prompts=training_prompts(concept) if common else [])
            t0 = time.perf_counter()
            edit = plugin.fit(pipe, request)
            fit_seconds = time.perf_counter() - t0
            with edit.apply(pipe):
                after = generate(pipe, prompts, seeds, batch_size=24)
            record[label] = {
                "lr": edit.manifest.extra.get("lr"),
                "fit_seconds": round(fit_seconds, 1),
                "pixel_change_target": round(pixel_change([base[i] for i in targets], [after[i] for i in targets]), 2),
                **{k: round(v, 3) for k, v in score_images(metric, rows, seeds, after, label).items()},
            }
            print(json.dumps({"run": run, label: record[label]}), flush=True)
        results.append(record)
    report = {
        "benchmark": "lora_vs_full",
        "model": args.model,
        "per_role": args.per_role,
        "overrides": args.set,
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_vs_full.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
