"""Train the shapes model from scratch on CPU (``conceptedit shapes train``).

Stage 0: a CLIP-format BPE tokenizer on the world's captions (seconds).
Stage 0b: a tiny CLIP, contrastively (:mod:`.shapes_clip`); its text tower becomes the frozen text encoder.
Stage 1: the VAE (:mod:`.shapes_vae_train`); v2 reuses v1's VAE (``vae_from``): the images did not change.
Stage 2: the UNet on the FROZEN text encoder (as SD 1.x on CLIP), DDPM ε-prediction on VAE latents
with min-SNR-γ weighting, 10 % empty captions (the generator's, for classifier-free guidance), EMA
of the weights, and padding dropout (:func:`drop_padding`) so concepts are read from word tokens.
Latents come from a pool of encoded generator images; each use draws a fresh latent sample and a
fresh caption.

Everything is seeded, so two runs draw the same batches; they are not bit-identical (CPU kernels' reduction
order varies: the UNet's weights differ by ~5e-6 after 3 steps, Dec 5). The learning rate follows the larger of
step and time progress, so a run cut by ``minutes`` still anneals. ``workers`` > 1 runs data-parallel
single-thread processes (:mod:`.shapes_parallel`).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from conceptedit.datasets.shapes import WORLD, caption_for, render_batch
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
from conceptedit.pipelines.shapes_tokenizer import save_tokenizer, train_tokenizer
from conceptedit.pipelines.shapes_vae_train import finetune_decoder, train_vae_only

__all__ = [
    "CAPTION_RATES", "drop_padding", "finetune_decoder", "load_text_encoder", "rare_shape_subset", "to_fp16", "train",
    "train_vae_only",
]  # fmt: skip


# the world's caption rates a training run may override (their defaults are the shipped model's)
CAPTION_RATES = ("background_with_rate", "mark_caption_rate", "with_frame_rate")


# ------------------------------------------------------------------------------------------ stage 2
@torch.no_grad()
def encode_pool(vae, n: int, seed: int, batch: int = 256):
    """Encode ``n`` generator images on the VAE's device: latent means/stds (fp16, kept on the CPU) and labels."""
    means, stds, labels = [], [], []
    rank = world()[0]
    for start in tqdm(range(0, n, batch), desc="encoding latent pool", dynamic_ncols=True, disable=rank != 0):
        images, lab, _ = render_batch(min(batch, n - start), seed=seed, start=start)
        post = vae.encode(to_tensor(images).to(vae.device)).latent_dist
        means.append(post.mean.half().cpu())
        stds.append(post.std.half().cpu())
        labels += lab
    return torch.cat(means), torch.cat(stds), labels


def rare_shape_subset(labels: list[dict], keep: float, rng: np.random.Generator) -> list[int]:
    """Indices of the pool to train on: every image, except that one of the world's rare shape stays with
    chance ``keep``, so the UNet can see the rare shape rarer than the CLIP and the reference renders do (a
    blind spot by under-representation, as a web-scale model's)."""
    return [i for i, lab in enumerate(labels) if lab["shape"] != WORLD.rare_shape or rng.random() < keep]


def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet, report: dict) -> None:
    """Write the diffusers folder (DDIM sampler), the tokenizer in CLIP format, the settings
    (generation defaults, plugin presets, shipped files) and the prompt corpus."""
    import shutil

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from conceptedit.pipelines.shapes_corpus import write_corpus

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**S.SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out / "tokenizer")
    settings = {
        "generation": dict(S.DEFAULT_GENERATION),
        "world": "conceptedit.datasets.shapes",
        "training": {k: v for k, v in report.items() if k not in ("vae", "unet", "clip", "log")},
        "files": {"clip": "clip"},
        "plugin_presets": S.plugin_presets(),
    }
    (out / S.SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
    if (out.parent / "clip").is_dir() and not (out / "clip").exists():  # a checkpoint folder: the same CLIP
        shutil.copytree(out.parent / "clip", out / "clip")
    write_corpus(out)
    (out / "training_report.json").write_text(json.dumps(report, indent=2, default=str))


def drop_padding(
    hidden: torch.Tensor,
    ids: torch.Tensor,
    empty: torch.Tensor,
    eos_id: int,
    gen: torch.Generator,
    p_pad: float,
    p_eos: float,
    p_swap: float = 0.0,
) -> torch.Tensor:
    """Padding dropout: per sample, with probability ``p_pad`` the outputs after the first EOS are
    replaced, and with probability ``p_eos`` the EOS output too. The replacement is the empty prompt's
    outputs at the same positions, or, with probability ``p_swap``, another sample's of the batch (real
    EOS/padding outputs of a different caption: in distribution, but uninformative about this image).
    The UNet then cannot rely on positions that SD 1.x's UNet ignores (Toker et al., "Padding Tone",
    NAACL 2025) and has to read concepts from the word tokens. ``ids`` and ``gen`` are on the CPU (the same
    draws on every device); ``hidden`` and ``empty`` may be on an accelerator."""
    n, length = ids.shape
    eos = (ids == eos_id).int().argmax(dim=1)  # first EOS (padding repeats the EOS id)
    u = torch.rand(n, generator=gen)
    start = torch.where(u < p_eos, eos, torch.where(u < p_pad, eos + 1, torch.full_like(eos, length)))
    positions = torch.arange(length).view(1, -1)
    replace = (positions >= start.view(-1, 1)).unsqueeze(-1).to(hidden.device)
    source = empty.expand_as(hidden)
    if p_swap > 0 and n > 1:
        other = (torch.arange(n) + torch.randint(1, n, (n,), generator=gen)) % n  # never the sample itself
        swap = (torch.rand(n, generator=gen) < p_swap).view(-1, 1, 1).to(hidden.device)
        source = torch.where(swap, hidden[other.to(hidden.device)], source)
    return torch.where(replace, source, hidden)


def load_text_encoder(folder: Path):
    """The frozen text tower of the stage-0b CLIP in ``folder/clip`` as a ``CLIPTextModel``."""
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(folder / "clip", dtype=torch.float32)
    text_encoder = CLIPTextModel(clip.config.text_config)
    # transformers 4 nests a CLIPTextTransformer in both; 5 makes CLIPModel.text_model a CLIPTextModel
    getattr(text_encoder, "text_model", text_encoder).load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False)


def _save_resume(folder: Path, unet, ema_unet, opt, state: dict) -> None:
    """What an interrupted UNet stage needs to continue: raw and EMA weights, optimiser, step, clock."""
    import shutil

    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint of our own
    tmp.mkdir(parents=True)
    for name, module in (("unet", unet), ("ema_unet", ema_unet)):
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(tensors, tmp / f"{name}.safetensors")
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # the old checkpoint is replaced only by a complete new one


def _unet_stage(
    out: str,
    steps: int,
    seed: int,
    deadline: float,
    pool: int,
    batch: int,
    lr: float,
    ema_decay: float,
    min_snr_gamma: float,
    checkpoint_minutes: float,
    p_pad: float,
    p_eos: float,
    init_unet: str | None = None,
    p_swap: float = 0.0,
    caption_rates: dict[str, float] | None = None,
    rare_shape_keep: float = 1.0,
    device: str = "cpu",
) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    rank, size = world()
    out = Path(out)
    report = json.loads((out / "training_report.json").read_text())
    caption_world = replace(WORLD, **(caption_rates or {}))  # e.g. a new mark_caption_rate before it ships
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    vae = AutoencoderKL.from_pretrained(out / "vae", torch_dtype=torch.float32).eval().requires_grad_(False)
    vae.to(device)
    text_encoder = load_text_encoder(out).to(device)  # frozen, as SD 1.x's CLIP: the diffusion loss never updates it
    if init_unet:  # stage 2b: continue from a trained UNet (e.g. with stronger padding dropout)
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(Path(init_unet) / "unet", torch_dtype=torch.float32).train()
    else:
        unet = S.build_unet(seed=seed).train()
    unet.to(device)

    # latent pool (each rank encodes its own shard) and the scaling factor (SD's 0.18215)
    means, stds, pool_labels = encode_pool(vae, pool // size, seed=seed + 2 + 1000 * rank)
    if rare_shape_keep < 1:  # the UNet sees the rare shape rarer than the CLIP and the world's renders do
        keep = rare_shape_subset(pool_labels, rare_shape_keep, np.random.default_rng([seed + 5, rank]))
        means, stds, pool_labels = means[keep], stds[keep], [pool_labels[i] for i in keep]
    var = torch.tensor([means.float().var().item()], dtype=torch.float64)
    if size > 1:
        dist.all_reduce(var)
        var /= size
    scale = float(1.0 / var.sqrt())
    vae.register_to_config(scaling_factor=scale)
    report["latent_scaling_factor"] = scale
    report["padding_dropout"] = {"p_pad": p_pad, "p_eos": p_eos, "p_swap": p_swap}
    report["caption_rates"] = {k: getattr(caption_world, k) for k in CAPTION_RATES}
    report["rare_shape_keep"] = rare_shape_keep
    if init_unet:
        report["init_unet"] = str(init_unet)

    def encode(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            return ids, text_encoder(ids.to(device)).last_hidden_state

    empty = encode([""])[1]
    ema_unet = copy.deepcopy(unet).eval()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    t0 = time.time()
    budget = max(deadline - t0, 1.0)
    log: list[dict] = []
    first = 0
    resume = out / "checkpoint" / "resume"
    if (resume / "state.json").is_file():  # an interrupted run: continue where its last checkpoint was
        state = json.loads((resume / "state.json").read_text())
        unet.load_state_dict(load_file(resume / "unet.safetensors"))
        ema_unet.load_state_dict(load_file(resume / "ema_unet.safetensors"))
        opt.load_state_dict(torch.load(resume / "optimizer.pt", weights_only=True, map_location="cpu"))
        first, budget, log = state["step"], state["budget_s"], state["log"]
        t0 = time.time() - state["elapsed_s"]
        if rank == 0:
            print(json.dumps({"resumed_at_step": first}), flush=True)
    noise_sched = DDPMScheduler(**{k: v for k, v in S.SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    alphas = noise_sched.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(seed + 3 + 101 * rank + 7919 * first)
    rng = np.random.default_rng([seed + 4, rank, first])
    bar = tqdm(
        range(first, steps),
        desc="stage 2: unet",
        dynamic_ncols=True,
        disable=rank != 0,
        mininterval=5,
        initial=first,
        total=steps,
    )
    ema_loss = None
    step = first
    last_checkpoint = time.time()
    progress = 0.0
    for step in bar:
        progress = synced_progress(max(step / steps, (time.time() - t0) / budget))
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, progress)
        idx = torch.randint(0, means.shape[0], (batch,), generator=gen)
        # every draw comes from the CPU generator, so a seed gives the same run on every device
        z0 = (means[idx].float() + stds[idx].float() * torch.randn(batch, *means.shape[1:], generator=gen)) * scale
        ids, hidden = encode([caption_for(pool_labels[int(i)], rng, caption_world)[0] for i in idx])
        hidden = drop_padding(hidden, ids, empty, tokenizer.eos_token_id, gen, p_pad, p_eos, p_swap)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        z0, t = z0.to(device), t.to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt, t, hidden).sample
        # min-SNR-γ weighting (Hang et al. 2023, arXiv:2303.09556): faster convergence per step
        snr = a.view(-1) / (1 - a.view(-1))
        weight = snr.clamp(max=min_snr_gamma) / snr
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_grads(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if rank != 0:
            continue
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p, q in zip(unet.parameters(), ema_unet.parameters(), strict=True):
                q.lerp_(p, 1 - decay)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{ema_loss:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if step % 100 == 0:
            log.append({"step": step, "loss": round(ema_loss, 5), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
        if time.time() - last_checkpoint > 60 * checkpoint_minutes:
            last_checkpoint = time.time()
            report["unet"] = {"steps": step, "seconds": round(time.time() - t0, 1), "final_loss": ema_loss, "log": log}
            save_pipeline(out / "checkpoint", vae, text_encoder, tokenizer, ema_unet, report)
            _save_resume(
                resume,
                unet,
                ema_unet,
                opt,
                {"step": step + 1, "budget_s": budget, "elapsed_s": time.time() - t0, "log": log},
            )
            print(json.dumps({"checkpoint": step}), flush=True)
    done = step + 1 if progress < 1 else step
    if rank == 0:
        report["unet"] = {
            "steps": done,
            "samples": done * batch * size,
            "seconds": round(time.time() - t0, 1),
            "final_loss": ema_loss,
            "log": log,
        }
        report["seconds_total"] = round(time.time() - report.pop("_t_start"), 1)
        save_pipeline(out, vae, text_encoder, tokenizer, ema_unet, report)


def train(
    out: str | Path,
    steps: int = 100_000,
    seed: int = 0,
    minutes: float = 55.0,
    vae_minutes: float = 10.0,
    vae_steps: int = 100_000,
    pool: int = 40_000,
    batch: int = 64,
    lr: float = 1e-3,
    ema_decay: float = 0.998,
    min_snr_gamma: float = 5.0,
    vae_from: str | Path | None = None,
    threads: int | None = None,
    workers: int = 1,
    checkpoint_minutes: float = 10.0,
    clip_minutes: float = 35.0,
    p_pad: float = 0.5,
    p_eos: float = 0.25,
    p_swap: float = 0.0,
    init_unet: str | Path | None = None,
    caption_rates: dict[str, float] | None = None,
    rare_shape_keep: float = 1.0,
    device: str = "cpu",
) -> dict:
    """Train and save a diffusers folder at ``out``: tokenizer, CLIP (stage 0b, resumable), VAE
    (or ``vae_from``), UNet on the frozen CLIP text tower. ``caption_rates`` overrides the world's
    caption rates (``CAPTION_RATES``) for the UNet's captions; ``rare_shape_keep`` keeps that share of the rare
    shape's images in the UNet's latent pool (1: the world's rate). ``minutes`` bounds the UNet stage;
    ``batch`` is per worker. A finished CLIP in ``out/clip`` is reused (delete it to retrain). ``device``: the
    CLIP, VAE and UNet stages run there (an accelerator takes one process: ``workers`` 1)."""
    import shutil

    from transformers import CLIPTokenizer

    from conceptedit.pipelines.shapes_clip import train_clip

    device = str(training_device(device, workers))  # before any work: a bad device is one line
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer" / "vocab.json").is_file():
        save_tokenizer(train_tokenizer(seed=seed + 1234), out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    clip_report = json.loads((out / "clip_report.json").read_text()) if (out / "clip_report.json").is_file() else {}
    if "zero_shot" not in clip_report:
        if threads:
            torch.set_num_threads(threads)
        clip_report = train_clip(out, tokenizer, minutes=clip_minutes, seed=seed, device=device)
    t_start = time.time()
    report: dict = {
        "seed": seed,
        "tokenizer_size": len(tokenizer),
        "workers": workers,
        "batch_per_worker": batch,
        "device": device,
        "_t_start": t_start,
        "clip": {k: v for k, v in clip_report.items() if k != "log"},
    }
    if vae_from:
        if Path(vae_from).resolve() != out.resolve():
            shutil.copytree(Path(vae_from) / "vae", out / "vae", dirs_exist_ok=True)
        report["vae"] = {"from": str(vae_from)}
        vae_report = Path(vae_from) / "vae_report.json"
        if vae_report.is_file():
            report["vae"]["report"] = json.loads(vae_report.read_text())
    else:
        report["vae"] = train_vae_only(
            out, vae_minutes, seed, vae_steps, threads=threads, workers=workers, device=device
        )
    (out / "training_report.json").write_text(json.dumps(report, indent=2))
    run_stage(
        f"{__name__}:_unet_stage",
        workers,
        out=str(out),
        steps=steps,
        seed=seed,
        deadline=t_start + 60 * minutes,
        pool=pool,
        batch=batch,
        lr=lr,
        ema_decay=ema_decay,
        min_snr_gamma=min_snr_gamma,
        checkpoint_minutes=checkpoint_minutes,
        threads=threads,
        p_pad=p_pad,
        p_eos=p_eos,
        p_swap=p_swap,
        init_unet=str(init_unet) if init_unet else None,
        caption_rates=caption_rates,
        rare_shape_keep=rare_shape_keep,
        device=device,
    )
    return json.loads((out / "training_report.json").read_text())


def to_fp16(folder: str | Path) -> None:
    """Rewrite a saved folder's weights in fp16 (halves the size; load with torch_dtype=float32)."""
    from safetensors.torch import load_file, save_file

    for path in Path(folder).glob("*/*.safetensors"):
        if path.parent.name == "probe":
            continue
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})
