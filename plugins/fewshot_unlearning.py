"""``fewshot-unlearning``: gradient ascent on the denoising loss of a few concept images, text encoder only.

Fuchi & Takagi, "Erasing Concepts from Text-to-Image Diffusion Models with Few-shot Unlearning",
BMVC 2024 (arXiv 2405.07288), Sec. 3 (method) and Sec. 4.1 (settings). Followed: the reference
``fmp453/few-shot-erasing`` at ``train.py``, ``data.py``, ``utils.py`` (commit c0e53da):

1. The few images (4 in the paper) are resized to the model's resolution, randomly flipped once, and
   encoded once by the VAE: ``z = sample(q(z|x)) · vae.config.scaling_factor`` (the reference hard-codes
   SD's 0.18215).
2. Each item gets a random textual-inversion template filled with the concept (27 object templates, or
   19 style templates with ``template_set: style``); ``t ~ U{0, …, T−1}``, ``z_t = add_noise(z, ε, t)``.
3. Loss ``−MSE(ε_θ(z_t, t, E_φ(prompt)), ε)`` (the velocity for v-prediction models), *ascended* by
   minimising its negative; only the text encoder E_φ trains; UNet and VAE are frozen; no retain set.
4. Default parameter group ``mlp-final-attn``: ``mlp.fc1``/``mlp.fc2`` of every layer + q/k/v/out
   projections of the last self-attention layer (the reference matches ``"11.self_attn."`` for
   OpenAI CLIP's 12 layers; we take the encoder's last layer, whatever its depth). The reference's other
   groups are offered: ``mlp-only``, ``attn-only``, ``mlp-attn``, ``all``.
5. Adam, lr 1e-5, betas (0.9, 0.98), eps 1e-6, weight decay 1e-8, batch 2, 4 epochs (the README's
   command and its ``epoch-3`` inference checkpoint; ``train.py``'s argparse default is 5), shuffled.

Deviations, and why:

- ``early_stop_margin`` (off by default; the reference trains a fixed number of epochs and the paper picks
  the epoch): after every step the concept's denoising loss on a fixed evaluation set (every image at
  fixed timesteps, noises and templates) is measured; training stops once it has risen by the margin
  (relative to its value before training).
- ``images_from_model``: with no images in the request, the base pipeline's own generations of the
  concept (``n_images`` at ``image_seeds``, prompts from ``request.prompts`` or ``image_prompt``) stand in
  for the real images (quick start; the paper uses real images).
- Random draws (flips, VAE samples, shuffles, templates, t, ε) come from one seeded generator (``seed``).
- Resolution: the model's default generation size (the reference resizes to 512, SD-1's size).
- Only the trained layers are copied, in float32 whatever the pipeline dtype, and swapped into the
  pipeline's encoders for each use (``plugins/_training.py``: ``trainable_layers``, ``swapped_in``); the
  ``all`` group (embeddings and whole blocks) trains a whole float32 copy. Precision: the frozen layers
  compute in the pipeline's dtype (bf16 on full-size SDXL), the trained ones in float32; on a float32
  pipeline the fit is bit for bit the one of a whole float32 copy (checked on the tiny pipelines).
- The backward through the frozen UNet recomputes its activations block by block (gradient checkpointing,
  ``activation_checkpointing``, switched back off after the fit): same gradients, one more UNet forward a
  step, and a 1024² SDXL batch no longer holds every block's activations at once. Full-size SDXL (bf16,
  1024², 2 images, batch 2): peak 19.0 GiB, in the backward and Adam step (481 M trained weights).
- The reference's zero-shot ablation (random latents) is not offered.
- Learning rate on the built-in shapes model: with the paper's 1e-5, the eight steps leave the small
  from-scratch text encoder (4 layers, width 128) practically unchanged (probe accuracies identical
  before/after); 1e-3 erases. The default stays the paper's; ``benchmarks/erasure_baselines.py`` uses
  ``lr=1e-3`` for the shapes model unless the model folder ships a ``plugin_presets`` value.
- Artifact: the change of the trained text-encoder weights as a weight delta (the reference saves the
  whole text encoder per epoch), or LoRA factors on the same Linear layers with ``artifact: lora``.
- LoRA (not in the paper, which trains full weights): rank ``lora_rank`` 4, ``lora_alpha`` = rank (scale
  1), trained at ``lora_lr``, by default 10 × ``lr`` (peft/diffusers LoRA scripts likewise train at
  10-100× the full-model lr; ``plugins/_training.py`` says why). At the same lr the LoRA barely moves
  the encoder (0.16/255 mean change on "a picture of zorblax", shapes model, lr 1e-3); at 10 × it
  erases as the weight delta does (``benchmarks/lora_vs_full.py``).
- SDXL (the paper and reference are SD 1.4 only): the UNet reads *both* text encoders (the context is their
  penultimate states concatenated, the pooled embedding is the second's projection), so both train, each
  with the chosen parameter group: "the text encoder" of the paper is, on SDXL, the pair; training one
  would leave the other's share of the context (768 or 1280 of 2048 channels on the real model) carrying
  the concept. Blocks the UNet never reads are left out (the first encoder's last block: SDXL reads its
  penultimate states, so its "final attention" is the penultimate block's; the second's last block feeds
  the pooled projection and stays in). The artifact holds both encoders' deltas (or LoRAs); the loss's
  ``add_time_ids`` name the training resolution, uncropped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from conceptedit.conditioning import conditioning, predict_noise, text_encoders, uses_added_conditioning
from conceptedit.edits import WeightDeltaEdit
from conceptedit.errors import RequestError
from conceptedit.families import SD_FAMILIES, SDXL
from conceptedit.plugin import Plugin, Request
from conceptedit.plugins._training import (
    Trainable,
    activation_checkpointing,
    combined_artifact,
    learning_rate,
    linear_module_names,
    swapped_in,
    trainable_copy,
    trainable_layers,
)
from conceptedit.registry import register_plugin
from conceptedit.toolkit import Progress, default_resolution, expand_images, no_progress

# Textual-inversion templates (diffusers examples/textual_inversion), as the reference's data.py uses them.
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)
EVAL_TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)

ParamGroup = Literal["mlp-final-attn", "mlp-only", "attn-only", "mlp-attn", "all"]


@dataclass
class FewShotConfig:
    template_set: Literal["object", "style"] = field(default="object", metadata={"help": "prompt templates"})
    param_group: ParamGroup = field(default="mlp-final-attn", metadata={"help": "text-encoder layers that train"})
    optimizer: Literal["adam", "adamw", "adagrad", "adadelta"] = field(default="adam", metadata={"help": "optimiser"})
    lr: float = field(default=1e-5, metadata={"help": "learning rate"})
    betas: tuple[float, float] = field(default=(0.9, 0.98), metadata={"help": "Adam betas"})
    eps: float = field(default=1e-6, metadata={"help": "Adam epsilon"})
    weight_decay: float = field(default=1e-8, metadata={"help": "weight decay"})
    batch_size: int = field(default=2, metadata={"min": 1, "help": "images per step"})
    epochs: int = field(default=4, metadata={"min": 1, "help": "passes over the images"})
    early_stop_margin: float | None = field(
        default=None, metadata={"help": "stop once the concept's loss rose by this fraction (None: never)"}
    )
    images_from_model: bool = field(default=False, metadata={"help": "no images given: use the model's own"})
    n_images: int = field(default=4, metadata={"min": 1, "help": "images generated when images_from_model"})
    image_seeds: list[int] | None = field(default=None, metadata={"help": "their seeds (default 0..n-1)"})
    image_prompt: str = field(default="a photo of {}", metadata={"help": "their prompt, {} = concept"})
    resolution: int | None = field(default=None, metadata={"min": 1, "help": "image size (default: the model's)"})
    seed: int = field(default=0, metadata={"help": "seeds every random draw of the fit"})
    artifact: Literal["weight_delta", "lora"] = field(default="weight_delta", metadata={"help": "artifact kind"})
    lora_rank: int = field(default=4, metadata={"min": 1, "help": "rank when artifact=lora"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_lr: float | None = field(default=None, metadata={"help": "lr when artifact=lora (default: 10 x lr)"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or self.n_images < 1 or self.lora_rank < 1:
            raise ValueError("batch_size, epochs, n_images and lora_rank must be >= 1")
        if self.lr <= 0 or (self.lora_lr is not None and self.lora_lr <= 0):
            raise ValueError("lr and lora_lr must be > 0")
        if self.image_seeds is not None and len(self.image_seeds) != self.n_images:
            raise ValueError(f"image_seeds has {len(self.image_seeds)} seeds for n_images={self.n_images}")
        if "{}" not in self.image_prompt:
            raise ValueError("image_prompt must contain {} (the concept)")


def _layer_of(name: str) -> int | None:
    return int(name.split("layers.")[1].split(".")[0]) if "layers." in name else None


def text_encoder_module_names(
    text_encoder: torch.nn.Module, group: str, lora: bool = False, last_layer: int | None = None
) -> list[str]:
    """Layers of a CLIP text encoder in one of the reference's parameter groups (``utils.py``). ``last_layer``:
    the last block whose output the UNet reads (SDXL reads the penultimate one of its first encoder); later
    blocks are left out and "final attention" is that block's."""
    layers = sorted({i for n, _ in text_encoder.named_modules() if (i := _layer_of(n)) is not None})
    final = layers[-1] if last_layer is None else last_layer
    last = f"layers.{final}.self_attn."

    def used(n: str) -> bool:
        i = _layer_of(n)
        return i is None or i <= final

    keep = {
        "mlp-only": lambda n: "mlp.fc" in n,
        "attn-only": lambda n: ".self_attn." in n,
        "mlp-attn": lambda n: "mlp.fc" in n or ".self_attn." in n,
        "mlp-final-attn": lambda n: "mlp.fc" in n or last in n,
        "all": lambda n: True,
    }[group]
    if group == "all" and not lora:
        if final == layers[-1]:
            return [""]  # every parameter, embeddings and layer norms included (reference: no freezing)
        # every parameter the UNet's input depends on: the embeddings and the blocks up to ``final``
        return ["text_model.embeddings"] + [f"text_model.encoder.layers.{i}" for i in range(final + 1)]
    return linear_module_names(text_encoder, lambda n: keep(n) and used(n))


def last_used_layer(pipe: Any, component: str) -> int:
    """The last block of a text encoder whose output reaches the UNet: SDXL reads the penultimate hidden
    states of both encoders (``hidden_states[-2]``), and the second's last block feeds only its pooled
    projection, so it counts; SD 1.x/2.x read the last block."""
    encoder = getattr(pipe, component)
    n = int(encoder.config.num_hidden_layers)
    if uses_added_conditioning(pipe) and not hasattr(encoder, "text_projection"):
        return n - 2
    return n - 1


def to_tensor(image: Image.Image, size: int, flip: bool) -> torch.Tensor:
    """``[-1, 1]`` CHW tensor, bicubic-resized to ``size`` (no centre crop, as in the reference)."""
    image = image.convert("RGB").resize((size, size), resample=Image.Resampling.BICUBIC)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) * 2.0 - 1.0


@register_plugin
class FewShotUnlearningPlugin(Plugin):
    name = "fewshot-unlearning"
    kind = "erase"
    Config = FewShotConfig
    families = (*SD_FAMILIES, SDXL)
    artifact_kind = "weight_delta"
    summary = "Gradient ascent on a few concept images' denoising loss, updating only the text encoder."
    paper = "Fuchi & Takagi, Erasing Concepts from T2I Diffusion Models with Few-shot Unlearning, BMVC 2024"

    # -- data ----------------------------------------------------------------------------------
    def images(self, pipe: Any, request: Request) -> list[Image.Image]:
        cfg = self.config
        if request.images:
            return [Image.open(f) for f in expand_images(request.images)]
        if not cfg.images_from_model:
            raise RequestError(
                "fewshot-unlearning needs a few images of the concept: pass Request(images=[folder or files]) "
                "or set images_from_model=true to use the model's own generations"
            )
        from conceptedit.generation import generate

        seeds = cfg.image_seeds if cfg.image_seeds is not None else list(range(cfg.n_images))
        base = request.prompts or [cfg.image_prompt.format(request.targets[0])]
        prompts = [base[i % len(base)] for i in range(cfg.n_images)]
        return generate(pipe, prompts, seeds)

    @torch.no_grad()
    def encode(self, pipe: Any, images: list[Image.Image], size: int, gen: torch.Generator) -> torch.Tensor:
        vae = pipe.vae
        flips = torch.rand(len(images), generator=gen) < 0.5
        pixels = torch.stack([to_tensor(im, size, bool(f)) for im, f in zip(images, flips, strict=True)])
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean.device, dist.mean.dtype)
        latents = dist.mean + dist.std * noise  # a seeded latent_dist.sample()
        return latents.float() * vae.config.scaling_factor

    # -- the loss ------------------------------------------------------------------------------
    def denoising_loss(
        self,
        pipe: Any,
        text_encoder: torch.nn.Module | Mapping[str, torch.nn.Module],
        noise_scheduler: Any,
        latents,
        noise,
        timesteps,
        prompts,
    ) -> torch.Tensor:
        """The denoising loss with the UNet conditioned by ``text_encoder`` (one module: the first encoder;
        or ``{component: module}``, e.g. both of SDXL's; the pipeline's own for the others)."""
        unet = pipe.unet
        encoders = text_encoder if isinstance(text_encoder, Mapping) else {"text_encoder": text_encoder}
        f = pipe.vae_scale_factor  # SDXL's time ids name the image size the latents decode to
        cond = conditioning(pipe, prompts, encoders=encoders, size=(latents.shape[-2] * f, latents.shape[-1] * f))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = predict_noise(unet, noisy, timesteps.to(unet.device), cond)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return torch.nn.functional.mse_loss(pred, target)

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> WeightDeltaEdit:
        self.check_pipeline(pipe)
        from diffusers import DDPMScheduler

        cfg = self.config
        start = time.perf_counter()
        gen = torch.Generator("cpu").manual_seed(cfg.seed)
        concept = request.targets[0] if len(request.targets) == 1 else ", ".join(request.targets)
        templates = OBJECT_TEMPLATES if cfg.template_set == "object" else STYLE_TEMPLATES
        size = cfg.resolution or default_resolution(pipe)
        progress(0.0, "encoding images")
        images = self.images(pipe, request)
        latents = self.encode(pipe, images, size, gen).to(pipe.unet.device)
        n = latents.shape[0]
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # only add_noise / get_velocity
        T = noise_scheduler.config.num_train_timesteps

        # every text encoder the UNet reads trains (SDXL: both; see the module docstring). Layer groups train
        # float32 copies of only their layers, swapped into the pipeline's encoder for each use (trained());
        # the "all" group (embeddings and blocks, not plain layers) trains a whole float32 copy.
        students, trainables, swaps = {}, [], []
        for name, encoder, _ in text_encoders(pipe):
            modules = text_encoder_module_names(
                encoder, cfg.param_group, lora=cfg.artifact == "lora", last_layer=last_used_layer(pipe, name)
            )
            if all(m and isinstance(encoder.get_submodule(m), (torch.nn.Linear, torch.nn.Conv2d)) for m in modules):
                model = trainable_layers(encoder, modules).to(encoder.device)
                students[name] = encoder
                swaps.append((encoder, model, modules))
            else:
                model = students[name] = trainable_copy(encoder).to(encoder.device)
            trainables.append(Trainable(model, name, modules, cfg.artifact, cfg.lora_rank, cfg.lora_alpha, cfg.seed))

        def trained() -> contextlib.ExitStack:  # the students, for the duration of a with-block
            stack = contextlib.ExitStack()
            stack.enter_context(activation_checkpointing(pipe.unet))  # memory, not results (plugins/_training.py)
            for encoder, layers, modules in swaps:
                stack.enter_context(swapped_in(encoder, layers, modules))
            return stack

        optimizer = self.optimizer([p for t in trainables for p in t.parameters])

        def pick(k: int) -> list[str]:
            return [templates[int(i)].format(concept) for i in torch.randint(0, len(templates), (k,), generator=gen)]

        # Fixed evaluation set for early stopping: every image at fixed t, noise and template.
        eval_set = None
        if cfg.early_stop_margin is not None:
            ts = torch.tensor([int(f * T) for f in EVAL_TIMESTEP_FRACTIONS])
            idx = torch.arange(n).repeat_interleave(len(ts))
            eval_set = (
                latents[idx],
                torch.randn(latents[idx].shape, generator=gen).to(latents.device),
                ts.repeat(n).to(latents.device),
                pick(len(idx)),
            )

        unet_flags = [p.requires_grad for p in pipe.unet.parameters()]
        pipe.unet.requires_grad_(False)  # gradients flow through the UNet, never into it
        steps_per_epoch = -(-n // cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        history: list[float] = []
        eval_losses: list[float] = []
        stopped_at = None
        try:
            if eval_set is not None:
                with trained():
                    eval_losses.append(self.eval_loss(pipe, students, noise_scheduler, eval_set))
            bar = tqdm(total=total, desc="fewshot-unlearning", disable=None, leave=False)
            step = 0
            for epoch in range(cfg.epochs):
                order = torch.randperm(n, generator=gen)
                for b in range(steps_per_epoch):
                    idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                    z = latents[idx]
                    noise = torch.randn(z.shape, generator=gen).to(z.device)
                    t = torch.randint(0, T, (len(idx),), generator=gen).to(z.device)
                    with trained():
                        loss = -self.denoising_loss(pipe, students, noise_scheduler, z, noise, t, pick(len(idx)))
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                    optimizer.step()
                    step += 1
                    history.append(-loss.item())
                    message = f"epoch {epoch + 1}/{cfg.epochs}, concept loss {history[-1]:.4f}"
                    if eval_set is not None:
                        with trained():
                            eval_losses.append(self.eval_loss(pipe, students, noise_scheduler, eval_set))
                        message += f", held loss {eval_losses[-1]:.4f}"
                    bar.update(1)
                    bar.set_postfix_str(message)
                    progress(step / total, message)
                    if eval_set is not None and eval_losses[-1] >= eval_losses[0] * (1 + cfg.early_stop_margin):
                        stopped_at = step
                        break
                if stopped_at is not None:
                    break
            bar.close()
        finally:
            for p, flag in zip(pipe.unet.parameters(), unet_flags, strict=True):
                p.requires_grad_(flag)

        manifest = self.manifest(
            cfg.artifact,
            cfg.artifact,
            request,
            concept_prompt=concept,
            lr=learning_rate(cfg.lr, cfg.artifact, cfg.lora_lr),
            n_images=n,
            steps=len(history),
            early_stopped_at=stopped_at,
            concept_loss=history,
            eval_loss=eval_losses,
            fit_seconds=round(time.perf_counter() - start, 3),
        )
        progress(1.0, "done")
        return self.finish(combined_artifact(trainables, manifest, pipe), pipe, list(students))

    @torch.no_grad()
    def eval_loss(self, pipe: Any, text_encoder: Any, noise_scheduler: Any, eval_set: tuple) -> float:
        latents, noise, timesteps, prompts = eval_set
        return float(self.denoising_loss(pipe, text_encoder, noise_scheduler, latents, noise, timesteps, prompts))

    def optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cfg = self.config
        lr = learning_rate(cfg.lr, cfg.artifact, cfg.lora_lr)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adagrad":
            return torch.optim.Adagrad(params, lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
        return torch.optim.Adadelta(params, lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
