"""Plant known blind spots in the shapes model: UNet LoRAs that over- or under-produce one concept.

The blind-spot benchmark (``blindspots_shapes.py --plant-halo / --plant-crescent``) needs concepts the
model is known to exaggerate or suppress, to check that the analysis finds them and stops finding them
once the edit is removed. Each LoRA is fine-tuned with the plain denoising loss (the shapes model's own
training objective) on world renders whose captions and pictures disagree in one concept:

- ``halo`` (exaggerated): renders that all carry the halo ring, captioned without any halo word, so
  the model learns "halo whatever the prompt says";
- ``crescent`` (suppressed): captions that name a crescent paired with the same scene drawn with another
  (common) shape, mixed half and half with ordinary caption/render pairs so that the rest of the world
  is held in place, so "crescent" prompts give other shapes. The world's crescent is rare (1.5 %), the
  paper's typical blind spot; v2 draws it when asked, so without this plant there is none to find.

Both are built with the erase plugins' training pieces (``plugins/_training.Trainable``: peft LoRA on a
float32 copy of the UNet) and returned as a ``LoRAEdit``: applied and removed bit for bit like every
other edit.

    nice -n 5 python benchmarks/plant_concepts.py halo --out runs/bench/halo_lora       # fit, save, probe
    nice -n 5 python benchmarks/plant_concepts.py crescent --out runs/bench/crescent_lora
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptedit.datasets.shapes import WORLD, caption_for, render, render_labels, sample_labels
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


def crescent_training_set(
    n: int, seed: int = TRAIN_STREAM + 2, share: float = 0.5
) -> tuple[list[np.ndarray], list[str]]:
    """``n`` caption/render pairs: ``share`` of them a crescent caption over the same scene drawn with a
    common shape (drawn at random), the rest ordinary world pairs (the anchor that keeps the LoRA from
    moving everything else).

    Crescent captions come from the world's own captioner on labels whose shape is set to crescent;
    captions that do not name the crescent (the world omits nothing of the shape, but empty captions
    exist) and character samples (a character fixes its shape) are drawn again."""
    rare = WORLD.rare_shape
    images, captions = [], []
    want = round(n * share)
    i = 0
    while len(images) < want:
        rng = np.random.default_rng([seed, i, 0])
        labels = sample_labels(rng, WORLD)
        i += 1
        if labels["character"]:
            continue
        caption, _ = caption_for(labels | {"shape": rare, "rare_shape": True}, np.random.default_rng([seed, i, 1]))
        if rare not in caption.split():
            continue
        if labels["shape"] == rare:
            labels = labels | {"shape": WORLD.shapes[int(rng.integers(len(WORLD.shapes)))], "rare_shape": False}
        images.append(render_labels(labels, seed=seed, index=i))
        captions.append(caption)
    start = 0
    while len(images) < n:
        for s in render(2 * n, seed=seed + 1, start=start):
            if s.caption.strip() and len(images) < n:
                images.append(s.image)
                captions.append(s.caption)
        start += 2 * n
    order = np.random.default_rng(seed).permutation(n)
    return [images[k] for k in order], [captions[k] for k in order]


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).float().permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def plant_halo_lora(pipe: Any, **kwargs: Any) -> LoRAEdit:
    """The halo-everywhere LoRA (exaggerated halo); keyword arguments as :func:`plant_lora`."""
    return plant_lora(pipe, "halo", **kwargs)


def plant_crescent_lora(pipe: Any, **kwargs: Any) -> LoRAEdit:
    """The no-crescent LoRA (suppressed crescent); keyword arguments as :func:`plant_lora`."""
    return plant_lora(pipe, "crescent", **kwargs)


def plant_crescent_uce(pipe: Any) -> Any:
    """The surgical suppression plant: the ``uce`` plugin erasing "crescent" with its paper defaults (a
    closed-form edit of the cross-attention keys/values: crescent prompts are mapped to the empty prompt's
    values, other words keep theirs). The LoRA plant above learns to ignore shape words at large; this one
    changes what the model draws for crescent prompts and little else."""
    from conceptedit import Request, get_plugin

    edit = get_plugin("uce")().fit(pipe, Request(targets=[WORLD.rare_shape]))
    edit.manifest.extra["purpose"] = "benchmark: a planted suppression (crescent erased by UCE, paper defaults)"
    return edit


#: concept -> (training set builder, manifest purpose, default number of training pairs). The crescent
#: LoRA is not surgical (measured with ``blindspots_shapes.py --plant-crescent``, n = 512): on 256 pairs
#: (19 passes over each) the probe read the asked shape on 54.7 % of 435 generations for other prompts
#: (99.8 % without the LoRA) and a crescent on 32 of them; on 2,048 fresh pairs (2.3 passes) on 46.7 %
#: and 37, so memorising the pairs is not the cause: the LoRA learns to ignore shape words at large.
#: Cross-attention keys/values only (``layers="cross-kv"``) is worse still (39.8 %, 61 stray crescents).
PLANTS = {
    "halo": (
        halo_training_set,
        "benchmark: a planted exaggeration (halo drawn on prompts that do not ask for it)",
        256,
    ),
    "crescent": (
        crescent_training_set,
        "benchmark: a planted suppression (crescent prompts drawn with other shapes)",
        2048,
    ),
}


def plant_lora(
    pipe: Any,
    concept: str,
    *,
    n_images: int | None = None,
    steps: int = 300,
    rank: int = 8,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    layers: str = "blocks",
) -> LoRAEdit:
    """Fit the planting LoRA of ``concept`` (a :data:`PLANTS` key) on ``pipe``'s UNet (attention and
    feed-forward layers of the transformer blocks); ``pipe`` is not changed."""
    from diffusers import DDPMScheduler

    from conceptedit.plugins._training import Trainable, linear_module_names, trainable_copy

    start = time.perf_counter()
    device = pipe.unet.device
    n_images = n_images or PLANTS[concept][2]
    images, captions = PLANTS[concept][0](n_images)
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
    if layers == "cross-kv":  # only the text side of cross-attention (ESD-x / concept-ablation style)
        names = linear_module_names(student, lambda n: "attn2.to_k" in n or "attn2.to_v" in n)
    else:
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
        plugin=f"plant-{concept}",
        targets=[concept],
        extra={
            "purpose": PLANTS[concept][1],
            "n_images": n_images, "steps": steps, "rank": rank, "lr": lr, "batch_size": batch_size, "seed": seed,
            "layers": layers,
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


def crescent_prompts(n: int, seed: int = TRAIN_STREAM + 3) -> list[str]:
    """World captions that name the crescent (labels of a stream apart from the LoRA's, shape set to
    crescent, captioned by the world's captioner)."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        labels = sample_labels(np.random.default_rng([seed, i, 0]), WORLD)
        caption, _ = caption_for(labels | {"shape": WORLD.rare_shape}, np.random.default_rng([seed, i, 1]))
        i += 1
        if not labels["character"] and WORLD.rare_shape in caption.split():
            out.append(caption)
    return out


def probe_rate(
    pipe: Any, prompts: list[str], concept: str, probe_dir: Path | None = None, batch_size: int = 16
) -> float:
    """Share of generations (seeds 0 …) the shapes probe reads ``concept`` (halo or crescent) on."""
    from conceptedit.datasets.shapes.probe import Probe
    from conceptedit.generation import generate

    images = generate(pipe, prompts, list(range(len(prompts))), batch_size=batch_size)
    preds = Probe.load(probe_dir).predict(images)
    if concept == "halo":
        return sum(p["trigger"]["label"] == "present" for p in preds) / len(preds)
    return sum(p["shape"]["label"] == concept for p in preds) / len(preds)


#: concept -> the prompts its planted LoRA is checked on (halo: not asked for; crescent: asked for)
CHECK_PROMPTS = {"halo": no_halo_prompts, "crescent": crescent_prompts}


def main() -> None:
    from conceptedit.loading import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("concept", choices=sorted(PLANTS))
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--out", type=Path, default=None, help="the edit's artifact folder (runs/bench/CONCEPT_lora)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-prompts", type=int, default=96, help="prompts for the probe check")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(f"runs/bench/{args.concept}_lora")
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    edit = plant_lora(pipe, args.concept, steps=args.steps)
    edit.save(out)
    prompts = CHECK_PROMPTS[args.concept](args.n_prompts)
    before = probe_rate(pipe, prompts, args.concept)
    handle = edit.apply(pipe)
    during = probe_rate(pipe, prompts, args.concept)
    handle.remove()
    after = probe_rate(pipe, prompts, args.concept)
    print(json.dumps({"edit": str(out), **edit.manifest.extra, f"{args.concept}_rate_probe": {
        "before": before, "with_lora": during, "after_removal": after, "n": len(prompts)}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
