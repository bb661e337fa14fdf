"""Tiny Stable-Diffusion-architecture pipelines built from configs (as diffusers' own tests do),
so the core is tested on the exact code paths of real SD 1.x/2.x without downloading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import CLIPTextConfig


def tiny_vae(**extra: Any) -> Any:
    """A two-block 16-px VAE with 4 latent channels; shared by the SD 1.x and SDXL tiny pipelines."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        **extra,
    )


def tiny_text_config(tokenizer: Any, hidden: int, **extra: Any) -> CLIPTextConfig:
    """A 3-layer CLIP text tower over ``tokenizer`` (16 positions), ``hidden`` wide; shared by the SD 1.x and
    SDXL tiny pipelines."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=len(tokenizer),
        max_position_embeddings=16,
        **extra,
    )


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def write_char_tokenizer(folder: Path, words: tuple[str, ...] = ()) -> Path:
    """A CLIP tokenizer whose vocabulary is single characters plus a few merged words."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for word in words:  # merge each word left to right into one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{current} {piece}")
            current = current + piece
            if current not in vocab_list:
                vocab_list.append(current)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    return folder


def tiny_components(seed: int = 0, sd2: bool = False) -> dict:
    import tempfile

    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tok_dir = write_char_tokenizer(Path(tempfile.mkdtemp()) / "tok", words=("cat", "dog", "red", "blue"))
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    cross = 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=2,
        norm_num_groups=4,
        use_linear_projection=sd2,
    )
    torch.manual_seed(seed)
    vae = tiny_vae()
    torch.manual_seed(seed)
    text_config = tiny_text_config(tokenizer, cross)
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_pipeline(seed: int = 0, sd2: bool = False):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components(seed, sd2), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_components(seed: int = 0) -> dict:
    """SDXL's architecture in miniature: two CLIP text encoders of different widths (24 and 32, so a
    swapped concatenation is caught) whose penultimate states are concatenated into a 56-d context,
    the second with a projection (the pooled ``text_embeds``), and a UNet with ``text_time`` added
    conditioning: ``projection_class_embeddings_input_dim = 6 · addition_time_embed_dim + projection_dim``
    (the six ``add_time_ids``: original size, crop corner, target size). Both tokenizers are the SD
    tiny one (real SDXL's share a vocabulary too)."""
    import tempfile

    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok_dir = write_char_tokenizer(Path(tempfile.mkdtemp()) / "tok", words=("cat", "dog", "red", "blue"))
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    tokenizer_2 = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    widths, projection, time_dim = (24, 32), 16, 4

    def text_config(hidden: int) -> CLIPTextConfig:
        return tiny_text_config(tokenizer, hidden, projection_dim=projection, hidden_act="gelu")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        cross_attention_dim=sum(widths),
        norm_num_groups=4,
    )
    torch.manual_seed(seed)
    vae = tiny_vae(scaling_factor=0.13025)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config(widths[0]))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(widths[1]))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sdxl_pipeline(seed: int = 0):
    """A ``StableDiffusionXLPipeline`` of :func:`tiny_sdxl_components` (16 × 16 images; no watermarker)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sdxl_pipeline(folder: Path, seed: int = 0) -> Path:
    """The tiny SDXL pipeline as a diffusers folder with generation defaults (as :func:`save_tiny_pipeline`)."""
    tiny_sdxl_pipeline(seed).save_pretrained(folder)
    (folder / "conceptedit.json").write_text(
        json.dumps({"generation": {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 16, "width": 16}})
    )
    return folder


def save_tiny_pipeline(folder: Path, seed: int = 0, sd2: bool = False) -> Path:
    pipe = tiny_pipeline(seed, sd2)
    pipe.save_pretrained(folder)
    (folder / "conceptedit.json").write_text(
        json.dumps({"generation": {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 16, "width": 16}})
    )
    return folder


def full_state(pipe) -> dict:
    """A clone of every weight of the pipeline's unet, vae and text encoder(s), keyed ``component.name``."""
    parts = ("unet", "vae", "text_encoder", "text_encoder_2")  # text_encoder_2: SDXL only
    return {
        f"{c}.{k}": v.clone()
        for c in parts
        if getattr(pipe, c, None) is not None
        for k, v in getattr(pipe, c).state_dict().items()
    }


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-for-bit equality of two :func:`full_state` snapshots."""
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
