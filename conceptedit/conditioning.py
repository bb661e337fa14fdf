"""What the UNet is conditioned on for a prompt, and its noise prediction, for every supported family.

SD 1.x/2.x: the text encoder's last hidden states (after its final layer norm; with the attention mask
when the encoder's config asks for one). SDXL: both encoders' *penultimate* hidden states concatenated
(768 + 1280 = 2048 channels on the real model), the second encoder's projected pooled output
(``text_embeds``) and the six ``add_time_ids`` (original size, crop corner, target size). This is
exactly what ``pipe.encode_prompt`` and ``pipe.__call__`` compute (``tests/test_sdxl.py`` checks both
families), written once so the plugins can encode with *trained copies* of the encoders (with
gradients), encode raw token ids, and call the UNet with the added conditioning, without a twin per
plugin and family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from conceptedit.errors import UnsupportedModelError
from conceptedit.toolkit import tokenize

ENCODER_NAMES = ("text_encoder", "text_encoder_2")
_TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}


def uses_added_conditioning(pipe_or_unet: Any) -> bool:
    """True for SDXL-style UNets (``addition_embed_type="text_time"``: pooled text + time ids)."""
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def text_encoders(pipe: Any) -> list[tuple[str, Any, Any]]:
    """``(component, encoder, tokenizer)`` of every text encoder the UNet reads, in the order their states
    are concatenated (SDXL: ``text_encoder`` then ``text_encoder_2``; the refiner has only the second)."""
    out = []
    names = ENCODER_NAMES if uses_added_conditioning(pipe) else ENCODER_NAMES[:1]
    for name in names:
        encoder, tokenizer = getattr(pipe, name, None), getattr(pipe, _TOKENIZER_OF[name], None)
        if encoder is not None and tokenizer is not None:
            out.append((name, encoder, tokenizer))
    if not out:
        raise UnsupportedModelError(f"{type(pipe).__name__} has no text encoder with a tokenizer")
    return out


def encode_ids(
    pipe: Any, ids: Mapping[str, torch.Tensor], encoders: Mapping[str, Any] | None = None, mask: Any = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The context ``(B, L, D)`` and pooled ``(B, P)`` (None outside SDXL) for token ``ids`` per encoder
    component. ``encoders`` replaces the pipeline's (e.g. trained copies; gradients flow)."""
    sdxl = uses_added_conditioning(pipe)
    states, pooled = [], None
    for name, encoder, _ in text_encoders(pipe):
        encoder = (encoders or {}).get(name, encoder)
        device = next(encoder.parameters()).device
        x = ids[name].to(device)
        if not sdxl:
            m = mask.to(device) if mask is not None and getattr(encoder.config, "use_attention_mask", False) else None
            return encoder(x, attention_mask=m)[0], None
        out = encoder(x, output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds (the last such encoder's is kept)
            pooled = out[0]
        states.append(out.hidden_states[-2])
    if pooled is None:
        raise UnsupportedModelError("this SDXL pipeline has no text encoder with a projection (pooled output)")
    return torch.cat([s.to(states[-1].device) for s in states], dim=-1), pooled


def encode_text(
    pipe: Any, prompts: Sequence[str], encoders: Mapping[str, Any] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts tokenised by each encoder's own tokenizer (padded to ``model_max_length``, as the
    pipelines do), then :func:`encode_ids`."""
    prompts = list(prompts)
    ids, mask = {}, None
    for name, _, tokenizer in text_encoders(pipe):
        batch = tokenize(tokenizer, prompts)
        ids[name] = batch.input_ids
        mask = batch.attention_mask if mask is None else mask
    return encode_ids(pipe, ids, encoders, mask)


def time_ids(pipe: Any, height: int, width: int | None = None) -> torch.Tensor | None:
    """SDXL's ``add_time_ids`` ``(1, 6)`` for an uncropped ``height × width`` image; None for other families.
    Checked against the UNet's added-embedding width, as the pipeline does."""
    if not uses_added_conditioning(pipe):
        return None
    width = width or height
    values = [height, width, 0, 0, height, width]
    unet = pipe.unet
    projection = int(text_encoders(pipe)[-1][1].config.projection_dim)
    expected = unet.add_embedding.linear_1.in_features
    if unet.config.addition_time_embed_dim * len(values) + projection != expected:
        raise UnsupportedModelError(
            f"the UNet expects an added embedding of {expected} values, but 6 time ids and a "
            f"{projection}-d pooled text embedding give another size; the model's configs do not match"
        )
    return torch.tensor([values], dtype=torch.float32)


@dataclass
class Conditioning:
    """The UNet's conditioning for a batch: the cross-attention context and, on SDXL, the pooled text
    embedding and time ids (``added_cond_kwargs``)."""

    embeds: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # (B, P), SDXL
    time_ids: torch.Tensor | None = None  # (B, 6), SDXL

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def _map(self, f: Any) -> Conditioning:
        return Conditioning(
            f(self.embeds),
            None if self.pooled is None else f(self.pooled),
            None if self.time_ids is None else f(self.time_ids),
        )

    def to(self, *args: Any, **kwargs: Any) -> Conditioning:
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Conditioning:
        return self._map(lambda t: t.detach())

    def float(self) -> Conditioning:
        return self._map(lambda t: t.float())

    def with_embeds(self, embeds: torch.Tensor) -> Conditioning:
        """The same added conditioning with another context (e.g. one token's row replaced)."""
        return replace(self, embeds=embeds)

    def repeat(self, n: int) -> Conditioning:
        return Conditioning.cat([self] * n)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Batch concatenation (every item of the same family)."""
        first = items[0]

        def join(get: Any) -> torch.Tensor | None:
            return None if get(first) is None else torch.cat([get(c).to(get(first).device) for c in items])

        return Conditioning(
            join(lambda c: c.embeds),
            join(lambda c: c.pooled),
            join(lambda c: c.time_ids),  # type: ignore[arg-type]
        )


def conditioning(
    pipe: Any,
    prompts: Sequence[str],
    *,
    encoders: Mapping[str, Any] | None = None,
    size: int | tuple[int, int] | None = None,
) -> Conditioning:
    """The UNet's conditioning for ``prompts`` (gradients flow into ``encoders`` when given). ``size`` is
    the image size the SDXL time ids name (default: the model's generation size)."""
    embeds, pooled = encode_text(pipe, prompts, encoders)
    return with_added(pipe, embeds, pooled, size)


def with_added(
    pipe: Any, embeds: torch.Tensor, pooled: torch.Tensor | None = None, size: int | tuple[int, int] | None = None
) -> Conditioning:
    """A :class:`Conditioning` from a context (and pooled embedding) as ``encode_prompt`` returns them,
    with the SDXL time ids for ``size`` added."""
    if not uses_added_conditioning(pipe):
        return Conditioning(embeds)
    if pooled is None:
        raise UnsupportedModelError("an SDXL UNet needs the pooled text embedding as well as the context")
    if size is None:
        from conceptedit.toolkit import default_resolution

        size = default_resolution(pipe)
    h, w = (size, size) if isinstance(size, int) else size
    ids = time_ids(pipe, h, w)
    assert ids is not None
    return Conditioning(embeds, pooled, ids.to(embeds.device).expand(len(embeds), -1))


def unconditional(pipe: Any, n: int = 1, size: int | tuple[int, int] | None = None) -> Conditioning:
    """The unconditional branch the pipeline uses when no negative prompt is given: SD encodes ``""``;
    SDXL (``force_zeros_for_empty_prompt``, the default) uses zeros for the context and pooled embedding."""
    cond = conditioning(pipe, [""], size=size)
    if uses_added_conditioning(pipe) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        cond = Conditioning(torch.zeros_like(cond.embeds), torch.zeros_like(cond.pooled), cond.time_ids)
    return cond.repeat(n)


def predict_noise(unet: Any, x: torch.Tensor, t: Any, cond: Conditioning) -> torch.Tensor:
    """``ε_θ(x, t, cond)`` in float32, in the UNet's dtype inside; ``added_cond_kwargs`` on SDXL."""
    dtype = next(unet.parameters()).dtype
    added = None
    if cond.pooled is not None:
        device = cond.embeds.device
        added = {"text_embeds": cond.pooled.to(device, dtype), "time_ids": cond.time_ids.to(device, dtype)}
    elif uses_added_conditioning(unet):
        raise UnsupportedModelError("an SDXL UNet needs pooled text embeddings and time ids (Conditioning.pooled)")
    return unet(x.to(dtype), t, encoder_hidden_states=cond.embeds.to(dtype), added_cond_kwargs=added).sample.float()


__all__ = [
    "Conditioning",
    "conditioning",
    "encode_ids",
    "encode_text",
    "predict_noise",
    "text_encoders",
    "time_ids",
    "unconditional",
    "uses_added_conditioning",
    "with_added",
]
