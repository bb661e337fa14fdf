"""Every erase plugin on the full-size SD 1.5 and SDXL base architectures (random weights, built from the
published configs in ``tests/data/full_size/``; nothing downloaded), on CPU: fit with a minimal budget
(one or two optimiser steps, one sampling step wherever a fit generates) but the paper's sizes (SAE width,
LoRA rank, layers), then the edit applied for ONE denoising step at full resolution (512 / 1024, with
classifier-free guidance). It proves layer names, shapes and memory for real checkpoints.

Each case runs in its own process, watched: its resident memory is polled and the process is killed
when it passes ``--mem-limit-gb`` (default 21: the goal is a 24 GiB machine, 3 GiB left to the rest) or
when the machine's available memory falls under 1 GiB, so a case that does not fit is recorded
(``status: "oom"``) and never takes the machine down. One JSON line per case: status (ok / refused / oom /
error / timeout), build, fit and step seconds, peak RSS in GiB (the child's own ``ru_maxrss``; the parent's
polled figure when it was killed), what the edit changed.

    nice -n 5 python benchmarks/full_size.py                      # everything (tens of minutes on 2 cores)
    python benchmarks/full_size.py --models sd15 --cases uce       # one case
    python benchmarks/full_size.py --models sd15 --cases realera@word   # RealEra keyed on the bare word (UCE's)

Runtime (measured 2026-12-03 on the shared 2-core machine, load 5-18): SD 1.5 build and save 5.5 min, then
2.5-13 min a case (ItD's reference SAE 5 min, few-shot 10 min, the bare case's VAE decode at 512 10 min);
the whole SD 1.5 set took 70 min. SDXL (bf16) build 1-3 min, UCE / negative prompt 3-5 min a case;
measured 2026-12-04 (load 2-6): ESD-x 4.5 min (fit 203 s, peak 18.5 GiB), RealEra and few-shot
unlearning 12-15 min (their fits generate images at 1024², one step plus the VAE decode).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PLUGINS = ("negative-prompt", "uce", "realera", "esd", "fewshot-unlearning", "itd", "geom-erasing")
# ItD's reference SAE (2^19 latents) and a narrower one, to say where ItD's memory goes
CASES = ("bare", *PLUGINS, "itd@65536")
PROMPT = "a photo of a cat"
MODELS = ("sd15", "sdxl")
TINY = ("tiny", "tiny-sdxl")
WORDS = ("cat", "dog", "red", "blue", "car", "tree", "house", "bird", "green", "small")

# The paper's defaults except the budget: iterations, sampled images and sampling steps.
MINIMAL: dict[str, dict[str, Any]] = {
    "negative-prompt": {},
    "uce": {},
    "realera": {"lora_steps": 1, "n_images": 1},
    "esd": {"iterations": 1, "num_inference_steps": 2},
    "fewshot-unlearning": {"images_from_model": True, "n_images": 2, "batch_size": 2, "epochs": 1},
    # 50 prompts x ~12 tokens a batch: 1,600 tokens is two SAE steps
    "itd": {"train_tokens": 1600, "train_warmup_steps": 0, "target_from_corpus": 5, "retain_from_corpus": 10},
    "geom-erasing": {"samples": 2, "steps": 1, "batch_size": 2, "detector": "full_size_models:CornerDetector"},
}


def known_case(case: str) -> bool:
    """A case :func:`case_config` understands: a listed case, ``itd@N`` (N > 0) or ``realera@word|context``."""
    name, at, variant = case.partition("@")
    if not at:
        return name in CASES
    if name == "itd":
        return variant.isdigit() and int(variant) > 0
    return name == "realera" and variant in ("word", "context")


def case_config(case: str, corpus: Path) -> tuple[str, dict[str, Any]]:
    """The plugin name and config of a case (``itd@N``: ItD with an SAE of N latents; ``realera@word`` /
    ``realera@context``: RealEra with ``keys: word`` / ``keys: context``, the default)."""
    name, _, variant = case.partition("@")
    cfg = dict(MINIMAL[name])
    if name == "itd":
        cfg["corpus"] = str(corpus)
        if variant:
            cfg["sae_width"] = int(variant)
    elif name == "realera" and variant:
        cfg["keys"] = variant
    return name, cfg


def write_corpus(folder: Path) -> Path:
    """A small prompt corpus (ItD's SAE corpus; no shipped one exists for a random-weight model)."""
    import itertools

    lines = [f"a {a} {b} next to a {c}" for a, b, c in itertools.islice(itertools.permutations(WORDS, 3), 120)]
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _edit_summary(edit: Any) -> dict[str, Any]:
    """What the edit holds: its type and the tensors it changes (names prove the layer names matched)."""
    tensors = getattr(edit, "tensors", {}) or {}
    kinds = sorted({".".join(k.split(".")[-3:-1]) for k in tensors})
    return {
        "edit_type": edit.manifest.edit_type,
        "n_tensors": len(tensors),
        "numel": int(sum(v.numel() for v in tensors.values())),
        "layers": kinds[:8],
    }


def build(model: str, dtype: Any) -> tuple[Any, int]:
    """The pipeline and its full resolution: ``sd15``/``sdxl`` full size, ``tiny``/``tiny-sdxl`` the test
    suite's tiny pipelines (a smoke test of this script in seconds)."""
    from full_size_models import config, full_size_pipeline

    if model in TINY:
        import tiny

        pipe = (tiny.tiny_sdxl_pipeline() if model == "tiny-sdxl" else tiny.tiny_pipeline()).to(dtype)
        return pipe, 16
    return full_size_pipeline(model, dtype), int(config(model)["resolution"])


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def prepare(model: str, dtype_name: str, folder: Path) -> dict[str, Any]:
    """Build the random-weight pipeline once and save it as a diffusers folder (safetensors) with generation
    defaults of ONE step at full resolution (what plugins that sample images use); every case then loads it
    with ``load_pipeline``, the path a real checkpoint takes."""
    import torch
    from full_size_models import parameter_counts

    start = time.perf_counter()
    pipe, size = build(model, getattr(torch, DTYPES[dtype_name]))
    row = {"model": model, "case": "build", "dtype": dtype_name, "params": parameter_counts(pipe)}
    row["build_s"] = round(time.perf_counter() - start, 1)
    pipe.save_pretrained(folder, safe_serialization=True)
    defaults = {"num_inference_steps": 1, "guidance_scale": 7.5, "height": size, "width": size}
    (folder / "conceptedit.json").write_text(json.dumps({"generation": defaults}))
    row.update(status="ok", resolution=size, peak_rss_gib=round(_peak_gib(), 2))
    return row


def run_case(model: str, case: str, dtype_name: str, folder: Path, work: Path) -> dict[str, Any]:
    """Load the saved pipeline, fit ``case`` (or nothing for ``bare``) and run one guided denoising step at
    full resolution; return the measurements. ``bare`` also decodes with the VAE (the full image path)."""
    import torch

    from conceptedit.errors import ConceptEditError
    from conceptedit.loading import generation_defaults, load_pipeline
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    start = time.perf_counter()
    pipe = load_pipeline(str(folder), device="cpu", dtype=DTYPES[dtype_name])
    pipe.set_progress_bar_config(disable=True)
    size = int(generation_defaults(pipe)["height"])
    row: dict[str, Any] = {"model": model, "case": case, "dtype": dtype_name, "resolution": size}
    row["load_s"] = round(time.perf_counter() - start, 1)
    row["rss_after_load_gib"] = round(_rss_gib(), 2)
    edit = None
    if case != "bare":
        name, cfg = case_config(case, write_corpus(work))
        target = "watermark" if name == "geom-erasing" else "cat"
        # geom-erasing's model setting samples the model's prompt distribution: a random model has none
        prompts = ["a red cat", "a blue dog"] if name == "geom-erasing" else []
        request = Request(targets=[target], preserve=["dog"], prompts=prompts)
        start = time.perf_counter()
        try:
            edit = get_plugin(name)(cfg).fit(pipe, request)
        except ConceptEditError as exc:  # a plugin that refuses the family says so: recorded, not a crash
            row.update(status="refused", error=str(exc).splitlines()[0][:300])
            row["peak_rss_gib"] = round(_peak_gib(), 2)
            return row
        row["fit_s"] = round(time.perf_counter() - start, 1)
        row.update(_edit_summary(edit))
    generator = torch.Generator("cpu").manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        if edit is None:
            out = pipe([PROMPT], num_inference_steps=1, height=size, width=size, output_type="np", generator=generator)
            image = torch.as_tensor(out.images)
            row["image_shape"] = list(image.shape)
            ok = bool(torch.isfinite(image).all())
        else:
            with edit.apply(pipe):
                out = pipe(
                    [PROMPT], num_inference_steps=1, height=size, width=size, output_type="latent", generator=generator
                )
            latents = out.images
            row["latent_shape"] = list(latents.shape)
            ok = bool(torch.isfinite(latents.float()).all())
    row["step_s"] = round(time.perf_counter() - start, 1)
    row["status"] = "ok" if ok else "error"
    if not ok:
        row["error"] = "non-finite output"
    row["peak_rss_gib"] = round(_peak_gib(), 2)
    return row


def _available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def run_watched(
    model: str, case: str, dtype: str, folder: Path, mem_limit_gib: float, timeout_s: float, threads: int
) -> dict[str, Any]:
    """Run one case (``build``: build and save the pipeline to ``folder``) in a child process, killed on
    memory or time; return its JSON row."""
    import psutil

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, __file__, "--child", model, case, dtype, str(folder), "--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    child = psutil.Process(proc.pid)
    peak, killed = 0.0, None
    while proc.poll() is None:
        try:
            rss = child.memory_info().rss / 2**30
        except psutil.Error:
            break
        peak = max(peak, rss)
        if rss > mem_limit_gib:
            killed = f"killed at {rss:.1f} GiB RSS (limit {mem_limit_gib:g} GiB)"
        elif _available_gib() < 1.0:
            killed = f"killed at {rss:.1f} GiB RSS: the machine had under 1 GiB available"
        elif time.perf_counter() - start > timeout_s:
            killed = f"killed after {timeout_s:.0f} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.25)
    stdout, stderr = proc.communicate()
    wall = round(time.perf_counter() - start, 1)
    row: dict[str, Any] = {"model": model, "case": case, "dtype": dtype}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if lines and not killed:
        row = json.loads(lines[-1])
    elif killed:
        row.update(status="timeout" if "after" in killed else "oom", error=killed, peak_rss_gib=round(peak, 2))
    else:
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {proc.returncode}"]
        row.update(status="error", error=tail[0][:300], peak_rss_gib=round(peak, 2))
    row["wall_s"] = wall
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl (tiny, tiny-sdxl: smoke test)"
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="SD 1.5 dtype")
    parser.add_argument("--sdxl-dtype", default="bf16", choices=("fp32", "bf16"), help="SDXL dtype")
    parser.add_argument("--mem-limit-gb", type=float, default=21.0, help="kill a case above this RSS (GiB)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill a case after this many seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "CASE", "DTYPE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        model, case, dtype, folder = args.child
        if case == "build":
            row = prepare(model, dtype, Path(folder))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["CONCEPTEDIT_CACHE"] = str(Path(tmp) / "cache")  # ItD's SAE cache: not the user's
                row = run_case(model, case, dtype, Path(folder), work=Path(tmp))
        print(json.dumps(row), flush=True)
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [m for m in models if m not in MODELS + TINY] + [c for c in cases if not known_case(c)]
    if unknown:
        print(f"error: unknown model or case {unknown[0]!r} (cases: {', '.join(CASES)}, itd@N, realera@word|context)",
              file=sys.stderr)  # fmt: skip
        return 2
    failed = 0
    limits = (args.mem_limit_gb, args.timeout, args.threads)
    for model in models:
        dtype = args.sdxl_dtype if model == "sdxl" else args.dtype
        with tempfile.TemporaryDirectory(prefix=f"full_size_{model}_") as tmp:  # the saved weights: deleted after
            folder = Path(tmp) / "model"
            row = run_watched(model, "build", dtype, folder, *limits)
            print(json.dumps(row), flush=True)
            if row.get("status") != "ok":
                failed += 1
                continue
            for case in cases:
                row = run_watched(model, case, dtype, folder, *limits)
                failed += row.get("status") not in ("ok", "refused")
                print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
