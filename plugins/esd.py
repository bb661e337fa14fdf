"""``esd``: Erased Stable Diffusion — fine-tune the UNet to follow negatively guided scores of itself.

Gandikota, Materzyńska, Fiotto-Kaufman, Bau, "Erasing Concepts from Diffusion Models", ICCV 2023
(arXiv 2303.07345), Sec. 3, Eq. 2. Followed: the diffusers version of the reference,
``rohitgandikota/erasing`` at ``esd_sd.py`` + ``utils/sd_utils.py`` (commit 25613d2):

1. θ* is the frozen model, θ a trainable copy. Per iteration a random stop index ``k ∈ [0, 50)`` and
   a random seed are drawn; ``x_t`` is produced by running the *frozen* pipeline on the concept prompt
   (DDIM-style sampling with the pipeline's scheduler, 50 steps, guidance 3) for the first ``k``
   steps; ``t`` is the ``k``-th scheduler timestep.
2. Target ``ε*(x_t, c_from, t) − η [ε*(x_t, c, t) − ε*(x_t, ∅, t)]`` (``c_from = c`` unless
   ``erase_from`` is set); loss ``MSE(ε_θ(x_t, c_from, t), target)``; Adam, one image per iteration.
3. Parameter presets (``train_method``) over the UNet's Linear/Conv2d layers: ``esd-x`` every layer whose
   name contains ``attn2`` (cross-attention), ``esd-x-strict`` only ``attn2.to_k``/``attn2.to_v``,
   ``esd-u`` every layer *not* in ``attn2``, ``esd-all`` every layer.
4. Defaults are the diffusers reference's: 200 iterations, lr 5e-5, η (``negative_guidance``) 2,
   sampling guidance 3, 50 sampling steps, ``esd-x`` (the README calls ``esd-u`` experimental).

Note on η: the paper writes the target as ``ε*(x_t, t) − η[ε*(x_t, c, t) − ε*(x_t, t)]`` and its
CompVis code uses η = 1; the diffusers reference starts from ``ε*(x_t, c, t)`` instead, so its η = 2 is
the same target as the paper's η = 1. We implement the reference's form with its default.

Deviations, and why:

- ``sampler: trained`` samples ``x_t`` with the model being trained, as the original CompVis script
  (``quick_sample_till_t``) and the paper's text ("partial denoising with the model itself") do; the
  default ``frozen`` follows the diffusers reference, which samples with θ*.
- Sampling resolution is the model's default generation size; the SD-1.4 diffusers reference hard-codes
  1024 × 1024 (carried over from its SDXL script), the CompVis one 512.
- Random draws come from one seeded ``torch.Generator`` (config ``seed``) instead of Python's
  ``random``, so fits are reproducible. Several targets are erased in turn (iteration ``i`` uses target
  ``i mod n``); the reference takes one concept.
- Only the trained layers are copied, in float32 whatever the pipeline's dtype (the reference trains a
  whole bf16 copy); θ is the pipeline's UNet with those copies swapped in for each forward
  (``plugins/_training.py``, ``swapped_in``). Precision of θ's forward: the frozen layers compute in the
  pipeline's dtype (bf16 on SDXL), the trained ones in float32 on inputs rounded to it; on a float32
  pipeline this is exactly the forward of a whole float32 copy (the delta is unchanged, checked by
  ``tests/test_esd.py``). The student's backward recomputes the UNet's activations block by block
  (gradient checkpointing, switched back off after each step): same gradients, one more forward.
  Measured on full-size SDXL (bf16, 1024², ``benchmarks/full_size.py``): ``esd-x`` peaks at 18.5 GiB
  (8.1 GiB of it the float32 copy, gradients and Adam state of its 546 M weights); ``esd-u`` / ``esd-all``
  train 2.0 / 2.6 B weights, 30 / 38 GiB of such state, and do not fit a 24 GiB machine on SDXL.
- The model input is passed through ``scheduler.scale_model_input`` (identity for DDIM/PNDM, needed by
  Euler-type schedulers).
- The artifact is a weight delta of the trained parameters (the reference saves their new values), or,
  with ``artifact: lora``, rank-``lora_rank`` LoRA factors trained on the same layers instead of the
  full weights (not in the reference). Rank 4, alpha = rank; the LoRA trains at ``lora_lr``, by default
  10 × ``lr`` (5e-4): LoRA factors move the weights an order of magnitude less than full fine-tuning at
  the same lr (``plugins/_training.py``; measured with ``benchmarks/lora_vs_full.py``).

SDXL (the reference has an SDXL script, ``esd_sdxl.py``): every noise prediction also gets the prompt's
pooled text embedding and the ``add_time_ids`` of the sampling size (``added_cond_kwargs``, via
:func:`conceptedit.conditioning.predict_noise`); the unconditional branch is the encoded ``""`` as in the
SD reference (``negative_prompt=""``), not SDXL's zeroed empty prompt. The presets select the same layer
names (``attn2`` exists in every SDXL transformer block); the SDXL script's ``esd-u``/``esd-all`` also
leave out every layer named ``emb`` (time and added-condition embeddings) and outside the blocks, ours keep
the SD presets. Its defaults differ too (lr 2e-4, η 1, sampling guidance 2, 1024²); ours stay the SD
reference's, so pass those for SDXL. The sampler is the pipeline's own scheduler (Euler on SDXL), through
``scale_model_input``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from conceptedit.conditioning import Conditioning, conditioning, predict_noise
from conceptedit.edits import WeightDeltaEdit
from conceptedit.families import SD_FAMILIES, SDXL
from conceptedit.plugin import Plugin, Request
from conceptedit.plugins._training import (
    Trainable,
    activation_checkpointing,
    learning_rate,
    linear_module_names,
    swapped_in,
    trainable_layers,
)
from conceptedit.registry import register_plugin
from conceptedit.toolkit import Progress, default_resolution, no_progress

TrainMethod = Literal["esd-x", "esd-x-strict", "esd-u", "esd-all"]


@dataclass
class ESDConfig:
    train_method: TrainMethod = field(default="esd-x", metadata={"help": "which UNet layers train"})
    iterations: int = field(default=200, metadata={"min": 1, "help": "optimiser steps (one image each)"})
    lr: float = field(default=5e-5, metadata={"help": "Adam learning rate"})
    negative_guidance: float = field(default=2.0, metadata={"help": "η of the negatively guided target"})
    guidance_scale: float = field(default=3.0, metadata={"help": "CFG scale when sampling x_t"})
    num_inference_steps: int = field(default=50, metadata={"min": 1, "help": "sampling schedule length for x_t"})
    erase_from: str | None = field(default=None, metadata={"help": "prompt whose prediction is edited"})
    sampler: Literal["frozen", "trained"] = field(default="frozen", metadata={"help": "model that samples x_t"})
    resolution: int | None = field(default=None, metadata={"min": 1, "help": "sampling size (default: the model's)"})
    seed: int = field(default=0, metadata={"help": "seeds timesteps, noise and LoRA init"})
    artifact: Literal["weight_delta", "lora"] = field(default="weight_delta", metadata={"help": "artifact kind"})
    lora_rank: int = field(default=4, metadata={"min": 1, "help": "rank when artifact=lora"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_lr: float | None = field(default=None, metadata={"help": "lr when artifact=lora (default: 10 x lr)"})

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.num_inference_steps < 1 or self.lora_rank < 1:
            raise ValueError("iterations, num_inference_steps and lora_rank must be >= 1")
        if self.lr <= 0 or (self.lora_lr is not None and self.lora_lr <= 0):
            raise ValueError("lr and lora_lr must be > 0")


def esd_module_names(unet: torch.nn.Module, train_method: str) -> list[str]:
    """The reference's parameter presets over the UNet's Linear / Conv2d layers."""
    keep = {
        "esd-x": lambda n: "attn2" in n,
        "esd-x-strict": lambda n: "attn2.to_k" in n or "attn2.to_v" in n,
        "esd-u": lambda n: "attn2" not in n,
        "esd-all": lambda n: True,
    }[train_method]
    return linear_module_names(unet, keep)


@torch.no_grad()
def sample_until(
    unet: torch.nn.Module,
    scheduler: Any,
    cond: Conditioning,
    uncond: Conditioning,
    latents: torch.Tensor,
    stop: int,
    guidance_scale: float,
) -> torch.Tensor:
    """Run the first ``stop`` steps of classifier-free-guided sampling (the reference's ``run_till_timestep``)."""
    both = Conditioning.cat([uncond, cond])
    for t in scheduler.timesteps[:stop]:
        x_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        eps_u, eps_c = predict_noise(unet, x_in, t, both).chunk(2)
        latents = scheduler.step(eps_u + guidance_scale * (eps_c - eps_u), t, latents).prev_sample
    return latents


@register_plugin
class ESDPlugin(Plugin):
    name = "esd"
    kind = "erase"
    Config = ESDConfig
    families = (*SD_FAMILIES, SDXL)
    artifact_kind = "weight_delta"
    summary = "Fine-tune the UNet so the concept's score follows the model's own negatively guided score."
    paper = "Gandikota et al., Erasing Concepts from Diffusion Models, ICCV 2023"

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> WeightDeltaEdit:
        self.check_pipeline(pipe)
        cfg = self.config
        start = time.perf_counter()
        device = pipe.unet.device
        frozen = pipe.unet  # θ*: never written to
        names = esd_module_names(frozen, cfg.train_method)
        # θ is θ* with only the trained layers replaced by float32 copies (plugins/_training.py: a whole
        # float32 copy of the UNet does not fit beside full-size SDXL)
        layers = trainable_layers(frozen, names).to(device)
        trainable = Trainable(layers, "unet", names, cfg.artifact, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
        lr = learning_rate(cfg.lr, cfg.artifact, cfg.lora_lr)
        optimizer = torch.optim.Adam(trainable.parameters, lr=lr)

        size = cfg.resolution or default_resolution(pipe)
        with torch.no_grad():  # SDXL: + pooled embeddings and the time ids of the sampling size
            uncond = conditioning(pipe, [""], size=size).float()  # the reference's negative_prompt=""
            encoded = []
            for target in request.targets:
                cond = conditioning(pipe, [target], size=size).float()
                source = conditioning(pipe, [cfg.erase_from], size=size).float() if cfg.erase_from else cond
                encoded.append((cond, uncond, source))
        scheduler = copy.deepcopy(pipe.scheduler)  # the pipeline's own scheduler stays untouched
        latent_shape = (1, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
        gen = torch.Generator("cpu").manual_seed(cfg.seed)

        def student() -> Any:  # θ for the duration of a with-block; the pipeline's UNet again afterwards
            stack = contextlib.ExitStack()
            stack.enter_context(swapped_in(frozen, layers, names))
            stack.enter_context(activation_checkpointing(frozen))  # memory, not results (plugins/_training.py)
            return stack

        losses = []
        bar = tqdm(range(cfg.iterations), desc="esd", disable=None, leave=False)
        for it in bar:
            cond, uncond, source = encoded[it % len(encoded)]
            scheduler.set_timesteps(cfg.num_inference_steps, device=device)  # resets multistep state (PNDM ...)
            stop = int(torch.randint(0, cfg.num_inference_steps, (1,), generator=gen))
            noise = torch.randn(latent_shape, generator=gen).to(device) * scheduler.init_noise_sigma
            # sampling the erase_from prompt when given, as the reference does
            with student() if cfg.sampler == "trained" else contextlib.nullcontext():
                x_t = sample_until(frozen, scheduler, source, uncond, noise, stop, cfg.guidance_scale)
            t = scheduler.timesteps[stop]
            x_in = scheduler.scale_model_input(x_t, t)
            with torch.no_grad():
                eps_u, eps_c, eps_from = predict_noise(
                    frozen, torch.cat([x_in] * 3), t, Conditioning.cat([uncond, cond, source])
                ).chunk(3)
                target = eps_from - cfg.negative_guidance * (eps_c - eps_u)
            with student():
                loss = torch.nn.functional.mse_loss(predict_noise(frozen, x_in, t, source), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", stop=stop)
            progress((it + 1) / cfg.iterations, f"iteration {it + 1}/{cfg.iterations}, loss {losses[-1]:.4f}")

        manifest = self.manifest(
            cfg.artifact,
            cfg.artifact,
            request,
            trained_layers=len(names),
            lr=lr,
            loss_first=losses[0],
            loss_last=losses[-1],
            fit_seconds=round(time.perf_counter() - start, 3),
        )
        edit = trainable.artifact(manifest, frozen)
        return self.finish(edit, pipe, ["unet"])
