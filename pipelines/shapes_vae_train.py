"""Stage 1 of the shapes model: the VAE (``AutoencoderKL``, 32×32×3 → 8×8×8), MSE + L1 + a tiny KL
term (SD's habit); stage 1b fine-tunes its decoder on slightly noised latents (as SD's ft-MSE decoder)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from conceptedit.datasets.shapes import render_batch
from conceptedit.pipelines import shapes as S
from conceptedit.pipelines.shapes_parallel import (
    average_grads,
    cosine_lr,
    run_stage,
    synced_progress,
    to_tensor,
    training_device,
    world,
)


def train_vae(
    vae, steps: int, minutes: float, seed: int, batch: int = 16, lr: float = 1e-3, kl: float = 1e-6,
    device: str | torch.device = "cpu",
):  # fmt: skip
    """Train ``vae`` (already on ``device``); images are rendered on the CPU and noise drawn from a CPU
    generator, so a seed gives the same batches on every device."""
    rank, size = world()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    params = list(vae.parameters())
    gen = torch.Generator().manual_seed(seed + 17 * rank)
    t0 = time.time()
    bar = tqdm(range(steps), desc="stage 1: vae", dynamic_ncols=True, disable=rank != 0, mininterval=5)
    log = []
    step = 0
    progress = 0.0
    for step in bar:
        progress = synced_progress(max(step / steps, (time.time() - t0) / (60 * minutes)))
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, progress)
        images, _, _ = render_batch(batch, seed=seed + 1, start=(step * size + rank) * batch)
        x = to_tensor(images).to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
        rec = vae.decode(z).sample
        loss_rec = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        loss_kl = post.kl().mean() / x[0].numel()
        loss = loss_rec + kl * loss_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_grads(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{loss_rec.item():.4f}", kl=f"{loss_kl.item():.2f}")
            log.append({"step": step, "rec": round(loss_rec.item(), 5), "kl": round(loss_kl.item(), 4)})
    done = step + 1 if progress < 1 else step
    return {"steps": done, "images": done * batch * size, "seconds": round(time.time() - t0, 1), "log": log[-5:]}


def _vae_stage(out: str, minutes: float, seed: int, steps: int, batch: int, device: str = "cpu") -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**S.VAE_CONFIG).to(device)  # same init on every rank
    report = train_vae(vae, steps, minutes, seed, batch=batch, device=device)
    if world()[0] == 0:
        vae.eval().save_pretrained(Path(out) / "vae")
        (Path(out) / "vae_report.json").write_text(json.dumps(report, indent=2))


def train_vae_only(
    out: str | Path,
    minutes: float = 10.0,
    seed: int = 0,
    steps: int = 100_000,
    batch: int = 32,
    threads: int | None = None,
    workers: int = 1,
    device: str = "cpu",
) -> dict:
    """Stage 1 alone: save ``out/vae`` (reuse with ``train(..., vae_from=out)``)."""
    device = str(training_device(device, workers))
    Path(out).mkdir(parents=True, exist_ok=True)
    run_stage(
        f"{__name__}:_vae_stage",
        workers,
        out=str(out),
        minutes=minutes,
        seed=seed,
        steps=steps,
        batch=batch,
        threads=threads,
        device=device,
    )
    return json.loads((Path(out) / "vae_report.json").read_text())


def _decoder_stage(
    out: str,
    vae_from: str,
    minutes: float,
    seed: int,
    steps: int,
    batch: int,
    lr: float = 5e-4,
    latent_noise: float = 0.1,
    device: str = "cpu",
) -> None:
    from diffusers import AutoencoderKL

    rank, size = world()
    vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae").to(device)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 31 * rank)
    t0 = time.time()
    bar = tqdm(range(steps), desc="stage 1b: decoder", dynamic_ncols=True, disable=rank != 0, mininterval=5)
    log = []
    step, progress = 0, 0.0
    for step in bar:
        progress = synced_progress(max(step / steps, (time.time() - t0) / (60 * minutes)))
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, progress, warmup=0.01)
        images, _, _ = render_batch(batch, seed=seed + 5, start=(step * size + rank) * batch)
        x = to_tensor(images).to(device)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)
            noise = torch.randn(z.shape, generator=gen).to(device)
            z = z + latent_noise * z.std() * noise  # generated latents are imperfect
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_grads(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(rec=f"{loss.item():.4f}")
            log.append({"step": step, "rec": round(loss.item(), 5)})
        if rank == 0 and step % 200 == 0:
            vae.eval().save_pretrained(Path(out) / "vae")  # the latest decoder, usable any time
            vae.train()
    done = step + 1 if progress < 1 else step
    if rank == 0:
        vae.eval().save_pretrained(Path(out) / "vae")
        seconds = round(time.time() - t0, 1)
        stage = {"steps": done, "images": done * batch * size, "seconds": seconds, "latent_noise": latent_noise}
        report = {"decoder_finetune": stage | {"log": log[-5:]}, "from": str(vae_from)}
        (Path(out) / "vae_report.json").write_text(json.dumps(report, indent=2))


def finetune_decoder(
    out: str | Path,
    vae_from: str | Path,
    minutes: float = 30.0,
    seed: int = 0,
    steps: int = 100_000,
    batch: int = 32,
    threads: int | None = None,
    workers: int = 1,
    device: str = "cpu",
) -> dict:
    """Stage 1b: fine-tune only the VAE decoder (encoder frozen, so latents and a UNet trained on
    them stay valid), on slightly noised latents; save ``out/vae``. SD's ft-MSE decoder did the same."""
    device = str(training_device(device, workers))
    Path(out).mkdir(parents=True, exist_ok=True)
    run_stage(
        f"{__name__}:_decoder_stage",
        workers,
        out=str(out),
        vae_from=str(vae_from),
        minutes=minutes,
        seed=seed,
        steps=steps,
        batch=batch,
        threads=threads,
        device=device,
    )
    return json.loads((Path(out) / "vae_report.json").read_text())
