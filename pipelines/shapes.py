"""The built-in shapes model: a tiny text-to-image model with the exact Stable Diffusion 1.x layout.

Components are the stock diffusers / transformers classes (``CLIPTokenizer``, ``CLIPTextModel``,
``UNet2DConditionModel`` with cross-attention, ``AutoencoderKL``, ``DDIMScheduler``), only smaller,
and, as in SD 1.x, the text encoder is the text tower of a CLIP trained contrastively beforehand and
frozen while the UNet trained (v2; the whole CLIP ships in ``clip/``, ``CLIPModel.from_pretrained``),
so everything that works on SD 1.x module names (``text_model.encoder.layers.N``,
``…attn2.to_k``/``to_v``) works here. The shipped folder loads with plain diffusers::

    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(model_dir())
    image = pipe("a red striped circle on a black background", **default_generation_kwargs()).images[0]

Training lives in :mod:`conceptedit.pipelines.shapes_train` (``conceptedit shapes train``).
"""

from __future__ import annotations

import json
from pathlib import Path

SETTINGS_FILE = "conceptedit.json"

# Architecture of the shipped model (see ``conceptedit.json`` in the model folder for what was trained).
# The model works at 32×32: the world is drawn at 64×64 and area-downsampled 2× (see ``model_images``).
# A 64×64 VAE with 8× downsampling did not learn in the CPU time available (colours and shapes were
# still wrong after 1,000 steps); 32×32 with 4× downsampling to 8×8×8 latents is the proven recipe.
RESOLUTION = 32
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=8,
    # ≥ 4 channels per GroupNorm group: with one channel per group, a flat image's colour is normalised away
    norm_num_groups=4,
    sample_size=RESOLUTION,
)
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=8,
    out_channels=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    cross_attention_dim=128,
    attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
    norm_num_groups=16,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)
DEFAULT_GENERATION = {"num_inference_steps": 25, "guidance_scale": 5.0, "height": RESOLUTION, "width": RESOLUTION}


def plugin_presets() -> dict:
    """Plugin settings the model folder ships (``conceptedit.json`` → ``plugin_presets``; explicit values win).

    Only what a 128-wide, 6-block text encoder needs that SD 1.x's does not: ItD's SAE sized for it,
    and the world's word groups (nickname, synonym, trigger words) kept out of ItD's retain set. UCE,
    ESD and few-shot unlearning run with their paper defaults on v2 (no presets)."""
    from conceptedit.datasets.shapes import WORLD

    groups = ["|".join((c.name, c.nickname)) for c in WORLD.characters]
    groups += ["|".join(pair) for pair in WORLD.shape_synonyms] + ["|".join(WORLD.trigger.words)]
    itd = {"sae_width": 4096, "sae_k": 16, "train_tokens": 300_000, "train_warmup_steps": 50, "top_n": 32,
           "retain_from_corpus": 50, "retain_exclude": groups}  # fmt: skip
    return {"itd": itd}


def model_images(images):
    """World images (N, 64, 64, 3) uint8 → the model's resolution by 2×2 area averaging (uint8)."""
    import numpy as np

    images = np.asarray(images)
    f = images.shape[1] // RESOLUTION
    if f == 1:
        return images
    n, h, w, c = images.shape
    small = images.reshape(n, h // f, f, w // f, f, c).astype(np.float32).mean(axis=(2, 4))
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def model_dir() -> Path:
    """The shipped model folder (diffusers layout plus ``probe/`` and ``conceptedit.json``)."""
    return Path(__file__).resolve().parent / "shapes_model"


def settings(folder: str | Path | None = None) -> dict:
    path = Path(folder or model_dir()) / SETTINGS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {"generation": dict(DEFAULT_GENERATION)}


def default_generation_kwargs(folder: str | Path | None = None) -> dict:
    """Default ``num_inference_steps``, ``guidance_scale``, ``height``, ``width`` of the model."""
    return dict(settings(folder).get("generation", DEFAULT_GENERATION))


def build_unet(seed: int = 0):
    """A fresh, seeded UNet with the shapes architecture (the text encoder is the stage-0b CLIP's
    text tower, :data:`conceptedit.pipelines.shapes_clip.CLIP_TEXT_CONFIG`)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)
