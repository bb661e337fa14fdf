"""Diffusers SD 1.x weights -> the original single-file (LDM / CompVis) layout, the inverse of what
diffusers' ``from_single_file`` converts, so the loader's single-file path is tested on a checkpoint
built here (no download). Handles any UNet/VAE depth (``layers_per_block`` from the config), which
the fixed-depth script in diffusers' repository does not."""

from __future__ import annotations

from typing import Any

import torch

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(name: str, table: dict[str, str]) -> str:
    head, _, tail = name.rpartition(".")  # tail = weight / bias
    return f"{table.get(head, head)}.{tail}"


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` keys of an SD 1.x ``UNet2DConditionModel``."""
    per_block = unet.config.layers_per_block
    up_has_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in unet.state_dict().items():
        parts = name.split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if parts[0] == "down_blocks":
                row = 1 + block * (per_block + 1) + index
                if kind == "resnets":
                    new = f"input_blocks.{row}.0.{_rename(rest, _RESNET)}"
                elif kind == "attentions":
                    new = f"input_blocks.{row}.1.{rest}"
                else:  # downsamplers.0.conv.* -> the row after the block's layers
                    new = f"input_blocks.{(block + 1) * (per_block + 1)}.0.op.{rest.removeprefix('conv.')}"
            else:
                row = block * (per_block + 1) + index
                if kind == "resnets":
                    new = f"output_blocks.{row}.0.{_rename(rest, _RESNET)}"
                elif kind == "attentions":
                    new = f"output_blocks.{row}.1.{rest}"
                else:  # upsamplers.0.conv.* -> after the last layer's resnet (and attention, if any)
                    last = block * (per_block + 1) + per_block
                    new = f"output_blocks.{last}.{2 if up_has_attention[block] else 1}.{rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * index}.{_rename(rest, _RESNET)}"
            else:
                new = f"middle_block.1.{rest}"
        else:
            new = _rename(name, _UNET_TOP)
        out[f"model.diffusion_model.{new}"] = tensor
    return out


def vae_to_ldm(vae: Any) -> dict[str, torch.Tensor]:
    """``first_stage_model.*`` keys of an ``AutoencoderKL`` (attention weights back to 1x1 convs)."""
    n_up = len(vae.config.up_block_types)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in vae.state_dict().items():
        parts = name.split(".")
        coder = parts[0]
        if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
            block, kind, rest = int(parts[2]), parts[3], ".".join(parts[5:])
            index = parts[4]
            if parts[1] == "down_blocks":
                if kind == "resnets":
                    new = f"{coder}.down.{block}.block.{index}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
                else:
                    new = f"{coder}.down.{block}.downsample.{rest}"
            else:
                ldm_block = n_up - 1 - block
                if kind == "resnets":
                    new = f"{coder}.up.{ldm_block}.block.{index}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"
                else:
                    new = f"{coder}.up.{ldm_block}.upsample.{rest}"
        elif len(parts) > 2 and parts[1] == "mid_block":
            kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{coder}.mid.block_{index + 1}.{rest}"
            else:
                new = f"{coder}.mid.attn_1.{_rename(rest, _VAE_ATTENTION)}"
                if tensor.ndim == 2:  # LDM stores the attention projections as 1x1 convolutions
                    tensor = tensor[:, :, None, None]
        elif len(parts) > 2:
            new = f"{coder}.{_rename('.'.join(parts[1:]), _VAE_TOP)}"
        else:
            new = name  # quant_conv, post_quant_conv
        out[f"first_stage_model.{new}"] = tensor
    return out


def text_encoder_to_ldm(text_encoder: Any) -> dict[str, torch.Tensor]:
    """``cond_stage_model.transformer.text_model.*`` keys of a ``CLIPTextModel`` (either transformers layout)."""
    out = {}
    for name, tensor in text_encoder.state_dict().items():
        name = name.removeprefix("text_model.")
        out[f"cond_stage_model.transformer.text_model.{name}"] = tensor
    return out


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """The whole SD 1.x checkpoint as one original-layout state dict (contiguous clones, safetensors-ready)."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **text_encoder_to_ldm(pipe.text_encoder)}
    return {key: value.detach().clone().contiguous() for key, value in state.items()}
