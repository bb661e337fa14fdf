"""Plant a known exaggeration in the shapes model: a UNet LoRA that draws the halo unasked.

The blind-spot benchmark (``blindspots_shapes.py --plant-halo``) needs a concept the model is known to
over-produce, to check that the analysis finds it and stops finding it once the edit is removed. The
LoRA is fine-tuned with the plain denoising loss on world renders that all carry the halo ring but are
captioned without any halo word (the rest of each caption is the world's own), so the model learns
"halo whatever the prompt says". It is built with the erase plugins' training pieces
(``plugins/_training.Trainable``: peft LoRA on a float32 copy of the UNet) and returned as a
``LoRAEdit``: applied and removed bit for bit like every other edit.

    nice -n 5 python benchmarks/plant_halo.py --out runs/bench/halo_lora   # trains, saves, probes before/after
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptedit.datasets.shapes import render, render_labels
from conceptedit.edits import LoRAEdit, Manifest

#: seed stream of the LoRA's training renders (far from the analysis' real images, which use seeds 0 …)
TRAIN_STREAM = 7_000


def halo_training_set(n: int, seed: int = TRAIN_STREAM) -> tuple[list[np.ndarray], list[str]]:
    """``n`` renders with the halo drawn in and captions that never name it.

    Samples whose caption already names the halo, and empty captions, are skipped; the others are drawn
    again with ``trigger`` set, with the same drawing seed (same shape, position, marks)."""
    images, captions = [], []
    start = 0
    while len(images) < n:
        for k, s in enumerate(render(2 * n, seed=seed, start=start)):
            if s.labels["trigger"] or not s.caption.strip() or len(images) >= n:
                continue
            images.append(render_labels(s.labels | {"trigger": True}, seed=seed, index=start + k))
            captions.append(s.caption)
        start += 2 * n
    return images, captions


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).float().permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def plant_halo_lora(
    pipe: Any,
    *,
    n_images: int = 256,
    steps: int = 300,
    rank: int = 8,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> LoRAEdit:
    """Fit the halo-everywhere LoRA on ``pipe``'s UNet (attention and feed-forward layers); ``pipe`` is
    not changed."""
    from diffusers import DDPMScheduler

    from conceptedit.plugins._training import Trainable, linear_module_names, trainable_copy

    start = time.perf_counter()
    device = pipe.unet.device
    images, captions = halo_training_set(n_images)
    with torch.no_grad():
        latents = []
        for s in range(0, n_images, 64):
            x = _to_tensor(images[s : s + 64]).to(device, pipe.vae.dtype)
            latents.append(pipe.vae.encode(x).latent_dist.mean.float() * pipe.vae.config.scaling_factor)
        z0_all = torch.cat(latents)
        hidden_all = torch.cat(
            [pipe.encode_prompt(captions[s : s + 64], device, 1, False)[0].float() for s in range(0, n_images, 64)]
        )
    student = trainable_copy(pipe.unet).to(device)
    names = linear_module_names(student, lambda n: "transformer_blocks" in n)
    trainable = Trainable(student, "unet", names, "lora", lora_rank=rank, lora_alpha=rank, seed=seed)
    optimizer = torch.optim.Adam(trainable.parameters, lr=lr)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n_images, (batch_size,), generator=gen)
        z0, hidden = z0_all[idx], hidden_all[idx]
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        loss = torch.nn.functional.mse_loss(student(zt.to(device), t.to(device), hidden).sample, noise.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    manifest = Manifest(
        edit_type="lora",
        artifact_kind="lora",
        plugin="plant-halo",
        targets=["halo"],
        extra={
            "purpose": "benchmark: a planted exaggeration (halo drawn on prompts that do not ask for it)",
            "n_images": n_images, "steps": steps, "rank": rank, "lr": lr, "batch_size": batch_size, "seed": seed,
            "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:])),
            "fit_seconds": round(time.perf_counter() - start, 1),
        },
    )  # fmt: skip
    edit = trainable.artifact(manifest, pipe.unet)
    assert isinstance(edit, LoRAEdit)
    edit.record_base(pipe, ["unet"])
    return edit


def no_halo_prompts(n: int, seed: int = TRAIN_STREAM + 1) -> list[str]:
    """World captions that do not name the halo (a stream apart from the LoRA's training captions)."""
    out: list[str] = []
    start = 0
    while len(out) < n:
        out += [s.caption for s in render(2 * n, seed=seed, start=start) if not s.labels["trigger"] and s.caption]
        start += 2 * n
    return out[:n]


def halo_rate(pipe: Any, prompts: list[str], probe_dir: Path | None = None, batch_size: int = 16) -> float:
    """Share of generations (seeds 0 …) the shapes probe reads the halo on."""
    from conceptedit.datasets.shapes.probe import Probe
    from conceptedit.generation import generate

    images = generate(pipe, prompts, list(range(len(prompts))), batch_size=batch_size)
    preds = Probe.load(probe_dir).predict(images)
    return sum(p["trigger"]["label"] == "present" for p in preds) / len(preds)


def main() -> None:
    from conceptedit.loading import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/halo_lora"), help="the edit's artifact folder")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-prompts", type=int, default=96, help="prompts without halo words for the probe check")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    edit = plant_halo_lora(pipe, steps=args.steps)
    edit.save(args.out)
    prompts = no_halo_prompts(args.n_prompts)
    before = halo_rate(pipe, prompts)
    handle = edit.apply(pipe)
    during = halo_rate(pipe, prompts)
    handle.remove()
    after = halo_rate(pipe, prompts)
    print(json.dumps({"edit": str(args.out), **edit.manifest.extra, "halo_rate_unasked": {
        "before": before, "with_lora": during, "after_removal": after, "n": len(prompts)}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
