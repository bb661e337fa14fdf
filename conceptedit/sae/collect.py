"""Capture a named module's activations into a store: text prompts through a text encoder, or
batches of latents/images through any component (UNet, VAE, …).

The forward pass stops at the module (``hooks.run_until``), so nothing after it is computed. Every
row keeps where it came from (prompt/sample index, token or spatial position, token id) so plugins
can map SAE codes back to prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from conceptedit.errors import ConfigError, RequestError
from conceptedit.hooks import run_until
from conceptedit.sae.store import ActivationStore, InMemoryStore, ShardWriter, _MemoryWriter
from conceptedit.toolkit import read_prompts  # noqa: F401  (re-exported by conceptedit.sae)
from conceptedit.validate import check_int


def _text_parts(source: Any, module: str) -> tuple[torch.nn.Module, Any, str]:
    """(text encoder, tokenizer, module name inside the encoder) from a pipeline or a pair."""
    if isinstance(source, tuple) and len(source) == 2:
        encoder, tokenizer = source
    elif hasattr(source, "text_encoder") and hasattr(source, "tokenizer"):
        encoder, tokenizer = source.text_encoder, source.tokenizer
    else:
        raise RequestError("source must be a pipeline with text_encoder/tokenizer or a (text_encoder, tokenizer)")
    return encoder, tokenizer, module.removeprefix("text_encoder.")


def _writer(out: str | Path | None, d: int, shard_rows: int, meta: dict[str, Any]) -> ShardWriter | _MemoryWriter:
    return _MemoryWriter(meta) if out is None else ShardWriter(out, d, shard_rows=shard_rows, meta=meta)


@torch.no_grad()
def collect_activations(
    source: Any,
    module: str,
    prompts: Iterable[str],
    out: str | Path | None = None,
    *,
    batch_size: int = 32,
    padding: str = "longest",
    max_length: int | None = None,
    skip_bos: bool = True,
    skip_padding: bool = True,
    shard_rows: int = 65536,
    model_id: str | None = None,
    progress: bool = True,
) -> ActivationStore | InMemoryStore:
    """Run prompts through a text encoder and store the named module's token activations.

    ``source`` is a diffusers pipeline (its ``text_encoder``/``tokenizer``) or a pair; ``module``
    is a name inside the text encoder (a ``text_encoder.`` prefix is accepted). ``padding`` is
    ``"longest"`` (pad to the batch's longest prompt) or ``"max_length"`` (the tokenizer's
    ``model_max_length`` or ``max_length``). The forward pass stops at the module. Filtering:
    ``skip_bos`` drops position 0, ``skip_padding`` drops positions whose attention mask is 0.
    Each row keeps its prompt index, token position and token id. ``out=None`` keeps it in memory.
    """
    if padding not in ("longest", "max_length"):
        raise ConfigError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    batch_size, shard_rows = check_int("batch_size", batch_size, 1), check_int("shard_rows", shard_rows, 1)
    encoder, tokenizer, name = _text_parts(source, module)
    prompts = list(prompts)
    if not prompts:
        raise RequestError("no prompts given")
    device = next(encoder.parameters()).device
    limit = max_length or getattr(tokenizer, "model_max_length", 77)
    meta = {
        "kind": "text",
        "model": model_id,
        "module": name,
        "padding": padding,
        "skip_bos": skip_bos,
        "skip_padding": skip_padding,
        "n_prompts": len(prompts),
    }
    writer = None
    bar = tqdm(total=len(prompts), desc="collect", unit="prompt", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        tok = tokenizer(batch, padding=padding, max_length=limit, truncation=True, return_tensors="pt")
        ids = tok["input_ids"].to(device)
        acts = run_until(encoder, name, lambda ids=ids: encoder(ids))
        if acts.ndim != 3:
            raise RequestError(f"module {name!r} gave shape {tuple(acts.shape)}; expected [batch, tokens, d]")
        b, t, d = acts.shape
        keep = torch.ones(b, t, dtype=torch.bool)
        if skip_padding and "attention_mask" in tok:
            keep &= tok["attention_mask"][:, :t].bool()
        if skip_bos:
            keep[:, 0] = False
        pid = torch.arange(start, start + b)[:, None].expand(b, t)
        pos = torch.arange(t)[None, :].expand(b, t)
        if writer is None:
            writer = _writer(out, d, shard_rows, meta)
        writer.add(acts.float().cpu()[keep], prompt_id=pid[keep], position=pos[keep], token_id=ids.cpu()[keep])
        bar.update(len(batch))
    bar.close()
    return writer.close()


def _rows_of(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows ``[n, C]``, position within sample): per spatial position, per token, or per sample."""
    if acts.ndim == 4:  # [B, C, H, W] -> one row per spatial position
        b, c, h, w = acts.shape
        return acts.permute(0, 2, 3, 1).reshape(b * h * w, c), torch.arange(h * w).repeat(b)
    if acts.ndim == 3:  # [B, T, C] -> one row per token
        b, t, c = acts.shape
        return acts.reshape(b * t, c), torch.arange(t).repeat(b)
    if acts.ndim == 2:
        return acts, torch.zeros(acts.shape[0], dtype=torch.long)
    raise RequestError(f"cannot turn module output of shape {tuple(acts.shape)} into rows")


@torch.no_grad()
def collect_component_activations(
    component: torch.nn.Module,
    module: str,
    inputs: Iterable[Any],
    out: str | Path | None = None,
    *,
    call: Callable[[torch.nn.Module, Any], object] | None = None,
    shard_rows: int = 65536,
    model_id: str | None = None,
    progress: bool = True,
) -> ActivationStore | InMemoryStore:
    """Store a module's activations while running batches of latents/images through a component.

    ``inputs`` yields batches: a tensor (``component(x)``), a dict (``component(**d)``), or anything
    ``call(component, batch)`` understands (a UNet needs timesteps and text embeddings). Conv
    outputs give one row per spatial position, sequence outputs one row per token; ``prompt_id`` is
    the sample index and ``position`` the flattened spatial/token index.
    """
    writer = None
    seen = 0
    meta = {"kind": "component", "model": model_id, "module": module, "component": type(component).__name__}
    for batch in tqdm(inputs, desc="collect", unit="batch", disable=not progress):
        if call is not None:
            run = lambda b=batch: call(component, b)  # noqa: E731
        elif isinstance(batch, dict):
            run = lambda b=batch: component(**b)  # noqa: E731
        else:
            run = lambda b=batch: component(b)  # noqa: E731
        acts = run_until(component, module, run)
        rows, pos = _rows_of(acts.float().cpu())
        per = rows.shape[0] // acts.shape[0]
        pid = torch.arange(seen, seen + acts.shape[0]).repeat_interleave(per)
        seen += acts.shape[0]
        if writer is None:
            writer = _writer(out, rows.shape[1], shard_rows, meta)
        writer.add(rows, prompt_id=pid, position=pos)
    if writer is None:
        raise RequestError("inputs yielded no batches")
    return writer.close()
