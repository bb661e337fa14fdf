"""SAE quality: FVU / explained variance, L0, dead latents, and the downstream effect of splicing.

Why downstream: a low FVU can still hide errors in the directions the model cares about; splicing
the reconstruction back into the model (through ``hooks.add_output_transform``) and comparing the
model's output with and without the splice measures what a plugin that edits codes will see.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from conceptedit.hooks import add_output_transform
from conceptedit.sae.base import SAE
from conceptedit.sae.store import InMemoryStore, _BaseStore


@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    data: _BaseStore | torch.Tensor,
    *,
    batch_size: int = 4096,
    max_rows: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Reconstruction metrics over (up to ``max_rows``) stored rows, using the inference encoder.

    FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² (x̄ the mean over the evaluated rows, accumulated in float64),
    explained variance = 1 − FVU, L0 = mean active latents per row, dead fraction = latents that
    never fired on these rows.
    """
    store = InMemoryStore(data) if isinstance(data, torch.Tensor) else data
    was_training = sae.training
    sae.eval()
    device = sae.b_pre.device
    n, err, sq, l0 = 0, 0.0, 0.0, 0.0
    total = torch.zeros(sae.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.width, dtype=torch.bool, device=device)
    total_rows = store.n_rows if max_rows is None else min(max_rows, store.n_rows)
    bar = tqdm(total=total_rows, desc="eval", unit="row", disable=not progress)
    for x in store.iter_rows(batch_size, max_rows):
        bar.update(x.shape[0])
        x = x.to(device)
        codes = sae.encode(x)
        recon = sae.decode(codes)
        err += float((x - recon).double().pow(2).sum())
        sq += float(x.double().pow(2).sum())
        total += x.double().sum(0).cpu()
        l0 += float(codes.l0().double().sum())
        fired |= codes.fired()
        n += x.shape[0]
    bar.close()
    sae.train(was_training)
    var = sq - float(total.pow(2).sum()) / max(1, n)
    fvu = err / var if var > 0 else float("nan")
    return {
        "rows": float(n),
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "mse": err / max(1, n * sae.d_in),
        "l0": l0 / max(1, n),
        "dead_fraction": float((~fired).float().mean()),
    }


def splice(sae: SAE, keep_positions: int = 1):
    """A transform for ``add_output_transform``: replace ``[B, T, d]`` hidden states by the SAE's
    reconstruction, leaving the first ``keep_positions`` tokens (BOS, usually not in the training
    data) untouched."""

    def transform(h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(-1, h.shape[-1])
        recon = sae.decode(sae.encode(flat)).to(h.dtype).reshape(h.shape)
        if h.ndim == 3 and keep_positions:
            recon[:, :keep_positions] = h[:, :keep_positions]
        return recon

    return transform


@torch.no_grad()
def downstream_effect(
    sae: SAE,
    source: Any,
    module: str,
    prompts: Iterable[str],
    *,
    batch_size: int = 16,
    padding: str = "max_length",
    keep_bos: bool = True,
) -> dict[str, float]:
    """Splice the SAE into a text encoder at ``module`` and compare the final prompt embeddings.

    ``source`` is a pipeline (``text_encoder``/``tokenizer``) or a pair. Reports the mean and
    minimum over prompts of the cosine between the flattened ``[T, d]`` output embeddings with and
    without the splice (what the UNet's cross-attention sees), and the mean per-token cosine.
    """
    from conceptedit.sae.collect import _text_parts

    encoder, tokenizer, name = _text_parts(source, module)
    prompts = list(prompts)
    device = next(encoder.parameters()).device
    limit = getattr(tokenizer, "model_max_length", 77)
    seq_cos: list[torch.Tensor] = []
    tok_cos: list[torch.Tensor] = []
    for s in range(0, len(prompts), batch_size):
        tok = tokenizer(
            prompts[s : s + batch_size],
            padding=padding,
            max_length=limit,
            truncation=True,
            return_tensors="pt",
        )
        ids = tok["input_ids"].to(device)
        base = encoder(ids)[0]
        with add_output_transform(encoder, name, splice(sae, 1 if keep_bos else 0)):
            edited = encoder(ids)[0]
        seq_cos.append(F.cosine_similarity(base.flatten(1).float(), edited.flatten(1).float(), dim=-1))
        tok_cos.append(F.cosine_similarity(base.float(), edited.float(), dim=-1).flatten())
    seq, tok_c = torch.cat(seq_cos), torch.cat(tok_cos)
    return {
        "prompts": float(len(prompts)),
        "embedding_cosine_mean": float(seq.mean()),
        "embedding_cosine_min": float(seq.min()),
        "token_cosine_mean": float(tok_c.mean()),
    }
