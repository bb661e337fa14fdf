"""``benchmarks/gpu.py`` (GPU figures of the erase plugins): a one-line refusal without CUDA, and the same
code in its CPU smoke mode on the tiny pipelines (fit, overhead ratio, 1- and 2-process throughput)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # no GPU, even on a GPU machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)


def test_without_cuda_it_stops_with_one_line():
    proc = run()
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: no CUDA device; benchmarks/gpu.py measures GPUs (smoke test: --device cpu --tiny)"
    ]
    proc = run("--device", "cpu")
    assert proc.returncode == 2 and "only with --tiny" in proc.stderr


def test_cpu_tiny_smoke_run_prints_every_figure():
    proc = run(
        *("--device", "cpu", "--tiny", "--models", "sd15", "--plugins", "uce,negative-prompt"),
        *("--processes", "2", "--steps", "2", "--images", "2", "--eval-images", "4", "--batch", "2"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    cases = [row["case"] for row in rows]
    assert cases == ["build", "bare", "uce", "negative-prompt", "eval-throughput", "eval-throughput"]
    bare = rows[1]
    assert bare["images_per_s"] > 0 and bare["steps"] == 2
    for row in rows[2:4]:
        assert row["status"] == "ok" and row["fit_s"] >= 0 and row["overhead_ratio"] > 0, row
    one, two = rows[4], rows[5]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["status"] == two["status"] == "ok" and one["images"] == two["images"] == 4
    assert two["speedup_vs_1_process"] == round(two["images_per_s"] / one["images_per_s"], 3)
