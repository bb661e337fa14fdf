"""Evaluation overhead: images/s of `conceptedit eval` versus a bare loop calling the diffusers
pipeline on the same prompts, seeds and batch size; and 2 processes versus 1 on the same config.

Prints one JSON object. Each measurement starts from an empty cache and an empty store.

    python benchmarks/eval_overhead.py --model shapes --prompts 48 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def bare_loop(model: str, prompts: list[str], seeds: list[int], batch_size: int, out: Path) -> float:
    from conceptedit.devices import generator_for
    from conceptedit.generation import generation_settings
    from conceptedit.loading import load_pipeline

    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    settings = generation_settings(pipe)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        gens = [generator_for(s) for s in seeds[i : i + batch_size]]
        images = pipe(prompt=prompts[i : i + batch_size], generator=gens, **settings).images
        for j, image in enumerate(images):
            image.save(out / f"{i + j}.png")
    return time.perf_counter() - start


def write_config(tmp: Path, model: str, csv: Path, batch_size: int, metrics: list[str], name: str) -> Path:
    config = {
        "name": name,
        "models": [model],
        "edits": [],
        "prompt_sets": [{"name": "p", "csv": str(csv)}],
        "metrics": metrics,
        "generation": {"batch_size": batch_size},
        "output": str(tmp / name),
        "cache_dir": str(tmp / f"cache-{name}"),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def timed(cmd: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    from conceptedit.datasets.shapes.prompt_sets import erasure_prompt_set
    from conceptedit.eval.prompts import write_prompt_csv

    rows = erasure_prompt_set(["zorblax", "striped", "circle"], per_role=max(1, args.prompts // 12))[: args.prompts]
    tmp = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    csv = write_prompt_csv(rows, tmp / "prompts.csv")
    n = len(rows)
    bare = bare_loop(
        args.model, [r.prompt for r in rows], [r.evaluation_seed for r in rows], args.batch_size, tmp / "bare"
    )
    # In-process eval timing (same process, model load excluded like the bare loop).
    from conceptedit.eval.config import load_config
    from conceptedit.eval.runner import Evaluation

    def in_process(metrics: list[str], name: str) -> float:
        cfg = load_config(write_config(tmp, args.model, csv, args.batch_size, metrics, name))
        evaluation = Evaluation(cfg, progress=False)
        from conceptedit import loading

        original = loading.load_pipeline
        cached = original(args.model)  # load outside the timed region, as the bare loop does
        loading.load_pipeline = lambda *a, **k: cached
        try:
            start = time.perf_counter()
            evaluation.run()
            return time.perf_counter() - start
        finally:
            loading.load_pipeline = original
            evaluation.store.close()

    eval_plain = in_process([], "plain")
    eval_probe = in_process(["probe"], "probe")
    one = timed(
        [
            sys.executable,
            "-m",
            "conceptedit",
            "eval",
            str(write_config(tmp, args.model, csv, args.batch_size, [], "one")),
        ]
    )
    two = timed(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "conceptedit",
            "eval",
            str(write_config(tmp, args.model, csv, args.batch_size, [], "two")),
        ]
    )
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        json.dumps(
            {
                "model": args.model,
                "images": n,
                "batch_size": args.batch_size,
                "cpu_count": os.cpu_count(),
                "bare_loop_images_per_s": round(n / bare, 3),
                "eval_no_metrics_images_per_s": round(n / eval_plain, 3),
                "eval_overhead_pct": round(100 * (eval_plain - bare) / bare, 2),
                "eval_with_probe_images_per_s": round(n / eval_probe, 3),
                "probe_metric_cost_pct": round(100 * (eval_probe - eval_plain) / eval_plain, 2),
                "cli_1_process_s": round(one, 2),
                "cli_2_processes_s": round(two, 2),
                "speedup_2_vs_1_processes": round(one / two, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
