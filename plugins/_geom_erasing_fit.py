"""Geom-Erasing's pieces, testable alone: location tokens, captions with geometry, the re-weighted
loss and the fine-tuning loop (``plugins/geom_erasing.py`` is the plugin and its artifact).

The leading underscore keeps the registry from importing this as a plugin.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conceptedit.attack import frozen
from conceptedit.detectors import Box
from conceptedit.edits.tokens import extended_tokenizer, token_table, token_vectors
from conceptedit.toolkit import Progress, encode_prompts, no_progress


# ------------------------------------------------------------------------------------------ geometry
def location_tokens(tag: str, grid: int) -> list[str]:
    """The ``grid × grid`` new words ⟨l{m,n}⟩ (row m, column n), tagged so two edits never share a word."""
    return [f"<geom-{tag}-{m}-{n}>" for m in range(grid) for n in range(grid)]


def covered_cells(box: Box, grid: int, min_cover: float = 0.05) -> list[int]:
    """Indices ``m·grid + n`` of the grid cells the box covers (at least ``min_cover`` of a cell's area,
    so a box grazing a neighbour by a pixel does not claim it); the cell of the box's centre always counts."""
    x0, y0, x1, y1 = box
    cells = []
    for m in range(grid):
        for n in range(grid):
            w = max(0.0, min(x1, (n + 1) / grid) - max(x0, n / grid))
            h = max(0.0, min(y1, (m + 1) / grid) - max(y0, m / grid))
            if w * h * grid * grid >= min_cover:
                cells.append(m * grid + n)
    centre = min(int((y0 + y1) / 2 * grid), grid - 1) * grid + min(int((x0 + x1) / 2 * grid), grid - 1)
    return sorted(set(cells) | {centre})


def region_mask(boxes: Sequence[Box], height: int, width: int) -> torch.Tensor:
    """Latent positions (``height × width``) touched by any of the boxes (the loss's region, K of T)."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        c0, c1 = int(math.floor(x0 * width)), max(int(math.ceil(x1 * width)), int(math.floor(x0 * width)) + 1)
        r0, r1 = int(math.floor(y0 * height)), max(int(math.ceil(y1 * height)), int(math.floor(y0 * height)) + 1)
        mask[r0:r1, c0:c1] = True
    return mask


def region_weights(mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Geom-Erasing's loss weights: ``T/(K + α(T−K))`` inside the region, ``αT/(K + α(T−K))`` outside,
    with T positions per image and K of them inside (so the weights of an image sum to T)."""
    flat = mask.reshape(mask.shape[0], -1).float()
    total = flat.shape[1]
    k = flat.sum(dim=1, keepdim=True)
    denom = k + alpha * (total - k)
    weights = torch.where(flat.bool(), total / denom, alpha * total / denom)
    return weights.reshape(mask.shape)


def clause(concept: str, cells: Sequence[int], tokens: Sequence[str]) -> str:
    """``concept ⟨l..⟩ ⟨l..⟩``: the concept name and the location tokens of the cells it covers."""
    return " ".join([concept, *(tokens[c] for c in cells)])


# ------------------------------------------------------------------------------------------ training data
@dataclass
class TrainingData:
    """What the loop trains on: VAE latents, base captions, the geometry clause of each image ('' when no
    target was detected) and the region mask at latent resolution."""

    latents: torch.Tensor
    captions: list[str]
    clauses: list[str]
    masks: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


def latents_of(pipe: Any, images: Sequence[Any], side: int, batch: int = 64) -> torch.Tensor:
    """Scaled VAE latents (the posterior mean) of PIL images resized to ``side``."""
    out = []
    for start in range(0, len(images), batch):
        arrays = [
            np.asarray(im.convert("RGB").resize((side, side), resample=4), dtype=np.float32) / 127.5 - 1.0
            for im in images[start : start + batch]
        ]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(pipe.vae.device, pipe.vae.dtype)
        with torch.no_grad():
            out.append(pipe.vae.encode(pixels).latent_dist.mean.float().cpu())
    return torch.cat(out) * pipe.vae.config.scaling_factor


def build_data(
    pipe: Any,
    images: Sequence[Any],
    captions: Sequence[str],
    detections: Sequence[dict[str, Any]],
    targets: Sequence[str],
    tokens: Sequence[str],
    grid: int,
    side: int,
    keep_unmarked: bool,
    names: dict[str, str] | None = None,
) -> TrainingData:
    """Captions ``y ⊕ concept ⊕ ⟨l⟩…`` for the detected targets; images with none are kept only if asked
    (they teach the location tokens nothing, but a fine-tuned UNet everything else). ``names`` maps a
    target to the words its clause uses (default: the target itself)."""
    names = names or {}
    chosen, clauses, boxes = [], [], []
    counts = dict.fromkeys(targets, 0)
    for i, row in enumerate(detections):
        found = [(t, row[t].box) for t in targets if row[t].present]
        for t, _ in found:
            counts[t] += 1
        if not found and not keep_unmarked:
            continue
        chosen.append(i)
        clauses.append(", ".join(clause(names.get(t, t), covered_cells(b, grid), tokens) for t, b in found))
        boxes.append([b for _, b in found])
    latents = latents_of(pipe, [images[i] for i in chosen], side) if chosen else torch.zeros(0)
    h, w = (latents.shape[-2], latents.shape[-1]) if chosen else (1, 1)
    masks = torch.stack([region_mask(b, h, w) for b in boxes]) if chosen else torch.zeros(0, 1, 1, dtype=torch.bool)
    stats = {"images": len(images), "trained_on": len(chosen), "detected": counts}
    return TrainingData(latents, [captions[i] for i in chosen], clauses, masks, stats)


def full_caption(caption: str, geometry: str, tokenizer: Any = None) -> str:
    """``caption ⊕ geometry``. With a ``tokenizer``, words are dropped from the end of ``caption`` until the
    whole fits its ``model_max_length``: the clause comes last, so plain truncation would cut the location
    tokens first (on the shapes model, 12 % of marked render captions ran past its 32 tokens)."""
    if not geometry:
        return caption
    words = caption.split()
    while True:
        text = f"{' '.join(words)}, {geometry}" if words else geometry
        if (
            tokenizer is None
            or not words
            or len(tokenizer(text, verbose=False).input_ids) <= tokenizer.model_max_length
        ):
            return text
        words.pop()


# ------------------------------------------------------------------------------------------ the loop
@dataclass
class LoopSettings:
    steps: int
    batch_size: int
    token_lr: float
    alpha: float
    caption_dropout: float
    seed: int
    lora: bool = False
    lora_rank: int = 4
    lora_lr: float = 1e-3
    lora_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    full_unet: bool = False  # with ``lora``: train every UNet weight (the paper's data setting) at ``unet_lr``
    unet_lr: float = 1e-4


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean(w ⊙ ‖ε − ε_θ‖²)``: the squared error summed over channels is weighted per latent position."""
    return (weights * (pred.float() - target.float()).pow(2).mean(dim=1)).mean()


def train(
    pipe: Any,
    data: TrainingData,
    tokens: Sequence[str],
    init: torch.Tensor | None,
    settings: LoopSettings,
    progress: Progress = no_progress,
) -> tuple[torch.Tensor | None, torch.nn.Module | None, dict[str, Any]]:
    """Fine-tune the location-token embeddings (if ``init`` is given) and, with ``settings.lora``, a LoRA on
    a copy of the UNet (or, with ``settings.full_unet``, all of the copy's weights), with the re-weighted loss.
    Returns (token vectors, the trained UNet copy, stats).
    The pipeline's own weights are never changed."""
    from conceptedit.plugins._training import Trainable, linear_module_names, trainable_copy

    start = time.perf_counter()
    device = pipe.unet.device
    gen = torch.Generator("cpu").manual_seed(settings.seed)
    scheduler = copy.deepcopy(pipe.scheduler)
    n_train = int(scheduler.config.num_train_timesteps)
    table_rows = token_table(pipe.text_encoder).num_embeddings
    tokenizer = extended_tokenizer(pipe.tokenizer, tokens, table_rows) if init is not None else pipe.tokenizer
    vectors = torch.nn.Parameter(init.detach().float().clone().to(device)) if init is not None else None
    params: list[dict[str, Any]] = []
    if vectors is not None:
        params.append({"params": [vectors], "lr": settings.token_lr})
    unet, student = pipe.unet, None
    if settings.lora:
        student = trainable_copy(pipe.unet).to(device)
        if settings.full_unet:
            names = [n for n, m in student.named_modules() if n and next(m.parameters(recurse=False), None) is not None]
            trainable = Trainable(student, "unet", names, "weight_delta")
            params.append({"params": trainable.parameters, "lr": settings.unet_lr})
        else:
            names = linear_module_names(student, lambda n: "attn" in n and n.endswith(settings.lora_modules))
            trainable = Trainable(student, "unet", names, "lora", settings.lora_rank, None, settings.seed)
            params.append({"params": trainable.parameters, "lr": settings.lora_lr})
        unet = student
    if not params:
        raise ValueError("nothing to train")
    optimizer = torch.optim.AdamW(params, weight_decay=0.0)
    weights_all = region_weights(data.masks, settings.alpha)
    v_pred = getattr(scheduler.config, "prediction_type", "epsilon") == "v_prediction"
    losses: list[float] = []
    n = data.latents.shape[0]
    with frozen(pipe):
        for step in range(settings.steps):
            idx = torch.randint(0, n, (min(settings.batch_size, n),), generator=gen)
            drop = torch.rand(len(idx), generator=gen) < settings.caption_dropout
            prompts = [
                full_caption("" if d else data.captions[i], data.clauses[i], tokenizer)
                for i, d in zip(idx.tolist(), drop.tolist(), strict=True)
            ]
            x0 = data.latents[idx].to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.randint(0, n_train, (len(idx),), generator=gen).to(device)
            x_t = scheduler.add_noise(x0, noise, t)
            if vectors is not None:
                with token_vectors(pipe.text_encoder, table_rows, vectors):
                    cond = encode_prompts(pipe.text_encoder, tokenizer, prompts)
            else:
                with torch.no_grad():
                    cond = encode_prompts(pipe.text_encoder, tokenizer, prompts)
            dtype = unet.dtype
            pred = unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
            target = scheduler.get_velocity(x0, noise, t) if v_pred else noise
            loss = weighted_loss(pred, target, weights_all[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            progress((step + 1) / settings.steps, f"step {step + 1}/{settings.steps}, loss {losses[-1]:.4f}")
    stats = {
        "steps": settings.steps,
        "loss_first": float(np.mean(losses[: max(1, len(losses) // 10)])),
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "train_seconds": round(time.perf_counter() - start, 2),
    }
    return (vectors.detach().cpu() if vectors is not None else None), student, stats


def initial_vectors(pipe: Any, count: int, seed: int, noise: float = 0.1) -> torch.Tensor:
    """Location tokens start at the mean embedding row plus ``noise`` × the rows' std of seeded noise:
    neutral words, distinguishable from each other from the first step."""
    weight = token_table(pipe.text_encoder).weight.detach().float().cpu()
    gen = torch.Generator("cpu").manual_seed(seed)
    mean, std = weight.mean(dim=0), weight.std(dim=0)
    return mean + noise * std * torch.randn(count, weight.shape[1], generator=gen)
