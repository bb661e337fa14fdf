"""GPU figures for the erase plugins on full-size random-weight SD 1.5 and SDXL base (fp16; the published
architectures of ``tests/data/full_size/``, built on the device, nothing downloaded):

- per plugin: fit time (the minimal budget of ``benchmarks/full_size.py``: paper sizes, one or two
  optimiser steps; ``--budget paper`` for the papers' full budgets), the time to apply the edit, and the
  runtime-edit overhead: seconds per image with the edit applied / without it (same prompts, seeds, steps);
- generation throughput of the eval path (``conceptedit.generation.generate``, batched) in images/s with one
  process, and with ``accelerate launch`` over N processes (one per GPU) when N > 1 GPUs exist.

One JSON line per figure. Without a CUDA device it stops with one line; ``--device cpu --tiny`` runs
the same code on the test suite's tiny pipelines (seconds: a smoke test, not a measurement).

    python benchmarks/gpu.py                               # on a CUDA machine (~10 min on one H100-class GPU)
    python benchmarks/gpu.py --device cpu --tiny --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from full_size import MINIMAL, PLUGINS, write_corpus  # noqa: E402  (benchmarks/full_size.py)

PROMPTS = ["a photo of a cat", "a red car in the street", "a dog on the grass", "a painting of a house"]


def build(model: str, tiny: bool, device: str, dtype: Any) -> tuple[Any, int]:
    """The pipeline (random weights) and its full resolution."""
    if tiny:
        import tiny as tiny_models

        pipe = tiny_models.tiny_sdxl_pipeline() if model == "sdxl" else tiny_models.tiny_pipeline()
        return pipe.to(device=device, dtype=dtype), 16
    from full_size_models import config, full_size_pipeline

    return full_size_pipeline(model, dtype, device=device), int(config(model)["resolution"])


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seconds_per_image(pipe: Any, n: int, steps: int, size: int, device: str, batch: int) -> float:
    """Wall seconds per image of ``generate`` over ``n`` prompts (fixed seeds), after one warm-up batch."""
    from conceptedit.generation import generate

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    settings = {"num_inference_steps": steps, "height": size, "width": size, "guidance_scale": 7.5}
    generate(pipe, prompts[:batch], list(range(batch)), batch_size=batch, **settings)  # warm-up: kernels, caches
    _sync(device)
    start = time.perf_counter()
    generate(pipe, prompts, list(range(n)), batch_size=batch, **settings)
    _sync(device)
    return (time.perf_counter() - start) / n


def plugin_config(name: str, budget: str, work: Path, tiny: bool) -> dict[str, Any]:
    if budget == "paper":
        cfg: dict[str, Any] = {}
        if name == "fewshot-unlearning":
            cfg = {"images_from_model": True}
        if name == "geom-erasing":
            cfg = {"detector": MINIMAL[name]["detector"]}
    else:
        cfg = dict(MINIMAL[name])
    if name == "itd":
        cfg["corpus"] = str(write_corpus(work))
        if tiny:
            cfg["sae_width"] = 512
    return cfg


def run_model(model: str, args: argparse.Namespace, emit: Any) -> None:
    import torch

    from conceptedit.errors import ConceptEditError
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    start = time.perf_counter()
    pipe, size = build(model, args.tiny, args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe._conceptedit_model_id = f"random-{model}{'-tiny' if args.tiny else ''}"
    # plugins that sample images inside their fit sample with these (one step at the minimal budget)
    fit_steps = 1 if args.budget == "minimal" else 50
    pipe._conceptedit_defaults = {
        "num_inference_steps": fit_steps,
        "guidance_scale": 7.5,
        "height": size,
        "width": size,
    }
    base = {"model": model, "tiny": args.tiny, "device": args.device, "dtype": str(dtype).removeprefix("torch.")}
    emit({**base, "case": "build", "build_s": round(time.perf_counter() - start, 1), "resolution": size})
    timing = (args.images, args.steps, size, args.device, args.batch)
    bare = seconds_per_image(pipe, *timing)
    emit(
        {**base, "case": "bare", "steps": args.steps, "s_per_image": round(bare, 4), "images_per_s": round(1 / bare, 3)}
    )
    plugins = [p for p in args.plugins.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CONCEPTEDIT_CACHE"] = str(Path(tmp) / "cache")  # ItD's SAE cache: not the user's
        for name in plugins:
            row: dict[str, Any] = {**base, "case": name, "budget": args.budget}
            target = "watermark" if name == "geom-erasing" else "cat"
            prompts = ["a red cat", "a blue dog"] if name == "geom-erasing" else []
            try:
                _sync(args.device)
                start = time.perf_counter()
                edit = get_plugin(name)(plugin_config(name, args.budget, Path(tmp), args.tiny)).fit(
                    pipe, Request(targets=[target], preserve=["dog"], prompts=prompts)
                )
                _sync(args.device)
                row["fit_s"] = round(time.perf_counter() - start, 2)
                start = time.perf_counter()
                handle = edit.apply(pipe)
                _sync(args.device)
                row["apply_s"] = round(time.perf_counter() - start, 3)
                try:
                    edited = seconds_per_image(pipe, *timing)
                finally:
                    handle.remove()
            except ConceptEditError as exc:
                row.update(status="refused", error=str(exc).splitlines()[0][:300])
            except torch.cuda.OutOfMemoryError as exc:  # recorded; the next plugin still runs
                row.update(status="oom", error=str(exc).splitlines()[0][:300])
                torch.cuda.empty_cache()
            else:
                row.update(status="ok", s_per_image=round(edited, 4), overhead_ratio=round(edited / bare, 3))
            emit(row)
    del pipe
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    single = None
    for n in process_counts(args):
        row = {**base, "case": "eval-throughput", **throughput(model, n, args)}
        if n == 1:
            single = row.get("images_per_s")
        elif single and row.get("images_per_s"):
            row["speedup_vs_1_process"] = round(row["images_per_s"] / single, 3)
        emit(row)


def process_counts(args: argparse.Namespace) -> list[int]:
    """1 and, when more than one GPU (or ``--processes`` on CPU) is there, N."""
    import torch

    n = args.processes or (torch.cuda.device_count() if args.device.startswith("cuda") else 1)
    return [1, n] if n > 1 else [1]


def throughput(model: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of ``generate`` split over ``n`` processes by ``accelerate launch`` (each its own model copy)."""
    cmd = ["accelerate", "launch", "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no"]
    if n > 1:
        cmd += ["--multi_gpu"] if args.device.startswith("cuda") else ["--cpu"]
    elif not args.device.startswith("cuda"):
        cmd += ["--cpu"]
    cmd += [__file__, "--throughput-child", model, "--device", args.device, "--steps", str(args.steps)]
    cmd += ["--images", str(args.eval_images), "--batch", str(args.batch)] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"throughput"')]
    if proc.returncode or not rows:
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"processes": n, "status": "error", "error": tail[:300]}
    return {"processes": n, "status": "ok", **rows[-1]["throughput"]}


def throughput_child(model: str, args: argparse.Namespace) -> None:
    """One rank of :func:`throughput`: build, warm up, wait for all, generate this rank's share, wait for all."""
    import torch
    from accelerate import PartialState

    from conceptedit.generation import generate

    state = PartialState()
    device = str(state.device) if args.device.startswith("cuda") else "cpu"
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe, size = build(model, args.tiny, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    settings = {"num_inference_steps": args.steps, "height": size, "width": size, "guidance_scale": 7.5}
    jobs = [(PROMPTS[i % len(PROMPTS)], i) for i in range(args.images)]
    generate(pipe, [PROMPTS[0]], [0], **settings)  # warm-up
    state.wait_for_everyone()
    start = time.perf_counter()
    with state.split_between_processes(jobs) as mine:
        if mine:
            generate(pipe, [p for p, _ in mine], [s for _, s in mine], batch_size=args.batch, **settings)
    _sync(device)
    state.wait_for_everyone()
    wall = time.perf_counter() - start
    if state.is_main_process:
        figures = {"images": args.images, "wall_s": round(wall, 3), "images_per_s": round(args.images / wall, 3)}
        print(json.dumps({"throughput": figures}), flush=True)


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test pipelines (a smoke test)")
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    parser.add_argument("--plugins", default=",".join(PLUGINS), help="comma-separated erase plugins")
    parser.add_argument("--budget", default="minimal", choices=("minimal", "paper"), help="fit budget")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image when timing")
    parser.add_argument("--images", type=int, default=8, help="images per overhead timing")
    parser.add_argument("--eval-images", type=int, default=32, help="images per throughput run")
    parser.add_argument("--batch", type=int, default=4, help="generation batch size")
    parser.add_argument("--processes", type=int, default=0, help="N for the multi-process run (default: #GPUs)")
    parser.add_argument("--throughput-child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return fail("no CUDA device; benchmarks/gpu.py measures GPUs (smoke test: --device cpu --tiny)")
    if not args.device.startswith("cuda") and not args.tiny:
        return fail("--device cpu runs only with --tiny (full-size CPU checks: benchmarks/full_size.py)")
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in ("sd15", "sdxl")] + [
        p for p in args.plugins.split(",") if p and p not in PLUGINS
    ]
    if bad:
        print(f"error: unknown model or plugin {bad[0]!r}", file=sys.stderr)
        return 2
    if args.throughput_child:
        throughput_child(args.throughput_child, args)
        return 0

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)

    for model in models:
        run_model(model, args, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
