"""Measure the fingerprint distance between the same weights in another dtype and other weights.

Why: ``conceptedit.fingerprint`` must accept an fp16/bf16 load of the checkpoint an edit was made
for and refuse a different checkpoint of the same architecture; its tolerances (``RMS_TOL``,
``TENSOR_TOL``) are set between the two distributions printed here, on the tiny test pipelines and
the built-in shapes model. Run: ``python benchmarks/fingerprint_tolerance.py`` (under a minute on CPU).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conceptedit.fingerprint import RMS_TOL, TENSOR_TOL, distance, fingerprint  # noqa: E402


def perturbed(module: torch.nn.Module, rel: float, seed: int, additive: bool = False) -> torch.nn.Module:
    """Every parameter times (1 + rel·N(0,1)), or plus rel·rms·N(0,1)."""
    module = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.add_(rel * p.pow(2).mean().sqrt() * noise) if additive else p.mul_(1 + rel * noise)
    return module


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return copy.deepcopy(module).to(dtype)


VARIANTS: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "same, bf16": lambda m: cast(m, torch.bfloat16),
    "same, fp16": lambda m: cast(m, torch.float16),
    "same, fp16->bf16": lambda m: cast(cast(m, torch.float16), torch.bfloat16),
    "0.5% noise": lambda m: perturbed(m, 0.005, 4),
    "1% noise (seed 1)": lambda m: perturbed(m, 0.01, 1),
    "1% noise (seed 2)": lambda m: perturbed(m, 0.01, 2),
    "1% additive noise": lambda m: perturbed(m, 0.01, 3, additive=True),
    "1% noise, bf16": lambda m: cast(perturbed(m, 0.01, 5), torch.bfloat16),
}


def report(label: str, modules: dict[str, torch.nn.Module], others: dict[str, torch.nn.Module]) -> None:
    for name, module in modules.items():
        ref = fingerprint(module)
        print(f"{label} {name} ({len(ref['scale'])} float tensors)")
        rows = [(what, make(module)) for what, make in VARIANTS.items()]
        rows += [("another seed", others[name])] if name in others else []
        for what, other in rows:
            d = distance(ref, fingerprint(other))
            print(
                f"  {what:18s} projection rms {d['projection_rms']:.5f}  scale rms {d['scale_rms']:.5f}  "
                f"worst tensor {d['tensor_max']:.5f}"
            )


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; --help prints usage
    from diffusers import StableDiffusionPipeline
    from tiny import tiny_components

    torch.set_num_threads(1)
    print(f"tolerances: RMS_TOL={RMS_TOL}  TENSOR_TOL={TENSOR_TOL}")
    a, b = tiny_components(0), tiny_components(1)
    parts = ("unet", "text_encoder", "vae")
    report("tiny", {k: a[k] for k in parts}, {k: b[k] for k in parts})
    pipe = StableDiffusionPipeline.from_pretrained(str(ROOT / "pipelines" / "shapes_model"), torch_dtype=torch.float32)
    report("shapes", {k: getattr(pipe, k) for k in parts}, {})


if __name__ == "__main__":
    main()
