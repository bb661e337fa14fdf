"""ItD's view of the text encoder: which block the SAE reads, that block's output for prompts
tokenised as the pipeline does, and which SAE latents a prompt activates (max over tokens after BOS).
Used by the plugin to interpret and by the edit to classify and explain (``plugins/itd.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from conceptedit.errors import RequestError
from conceptedit.hooks import run_until
from conceptedit.toolkit import tokenize


def layer_index(text_encoder: torch.nn.Module, layer: int | None) -> int:
    n = int(text_encoder.config.num_hidden_layers)
    if layer is None:
        return 8 if n == 12 else max(0, round(0.75 * n) - 1)
    if not 0 <= layer < n:
        raise RequestError(f"layer {layer} out of range: the text encoder has {n} blocks")
    return layer


def layer_name(index: int) -> str:
    return f"text_model.encoder.layers.{index}"


def cache_root() -> Path:
    base = os.environ.get("CONCEPTEDIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "conceptedit")
    return Path(base)


TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


def encoder_parts(pipe: Any, component: str = "text_encoder") -> tuple[torch.nn.Module, Any]:
    """The text encoder ``component`` of the pipeline and its own tokenizer (SDXL's second encoder has its own)."""
    encoder, tokenizer = getattr(pipe, component, None), getattr(pipe, TOKENIZER_OF.get(component, ""), None)
    if encoder is None or tokenizer is None:
        raise RequestError(f"the pipeline has no {component} with a tokenizer; choose one of {list(TOKENIZER_OF)}")
    return encoder, tokenizer


def _tokenize(pipe: Any, prompts: list[str], component: str = "text_encoder") -> torch.Tensor:
    encoder, tokenizer = encoder_parts(pipe, component)
    return tokenize(tokenizer, prompts, encoder.device).input_ids


def _layer_output(encoder: torch.nn.Module, name: str, ids: torch.Tensor) -> torch.Tensor:
    """The block's output without running the rest of the encoder (ItD hooks removed meanwhile
    are not an issue: run_until stops at the block, before our own output hook would matter)."""
    return run_until(encoder, name, lambda: encoder(ids))


def max_activations(sae: Any, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, width]``: each latent's max activation over tokens t ≥ 1 of each prompt."""
    b, t, d = hidden.shape
    codes = sae.encode(hidden[:, 1:].float().reshape(b * (t - 1), d))
    dense = torch.zeros(b * (t - 1), sae.width, device=hidden.device)
    dense.scatter_reduce_(1, codes.indices, codes.values.float(), reduce="amax")
    return dense.reshape(b, t - 1, sae.width).amax(dim=1)


def top_latents(sae: Any, hidden: torch.Tensor, top_n: int) -> list[set[int]]:
    acts = max_activations(sae, hidden)
    out = []
    for row in acts:
        values, index = row.topk(min(top_n, row.numel()))
        out.append({int(i) for v, i in zip(values.tolist(), index.tolist(), strict=True) if v > 0})
    return out
