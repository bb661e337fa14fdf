"""``uce``: Unified Concept Editing — a closed-form edit of every cross-attention key/value projection.

Gandikota, Orgad, Belinkov, Materzyńska, Bau, "Unified Concept Editing in Diffusion Models",
WACV 2024 (arXiv 2308.14761), Sec. 3 and Eq. 7. Followed: the reference implementation
``rohitgandikota/unified-concept-editing`` at ``trainscripts/uce_sd_erase.py`` (the diffusers
rewrite, commit 28c81ed):

1. Every ``attn2.to_k`` and ``attn2.to_v`` of the UNet is edited (``with_to_k=False`` edits only
   ``to_v``, as the first release allowed).
2. A concept's key ``c`` is the text encoder's output at the concept prompt's *last word token*
   (index ``attention_mask.sum() − 2``: the token before EOS). The guide's key is taken the same way;
   for the default guide ``""`` that index is the BOS token.
3. ``W = (e Σ v*cᵀ + p Σ W_old c_p c_pᵀ + λ W_old)(e Σ c cᵀ + p Σ c_p c_pᵀ + λ I)⁻¹``, with
   ``v* = W_old c_guide``, solved for all layers by :func:`conceptedit.sparsity.ridge.uce_closed_form`.
4. Defaults are the reference's: ``erase_scale = 1``, ``preserve_scale = 1``, ``lamb = 0.5``, guide
   ``""`` (object erasure; the reference uses ``"art"`` for art styles), no prompt expansion; preserve
   concepts are the request's ``preserve`` list (none by default, as in the reference).

Deviations: ``expand_prompts`` adds the reference's five templates per concept ("image of {}", ... for
objects, "painting by {}", ... for art) exactly as ``--expand_prompts true`` does, but it is off by
default as in the reference. ``token: all`` (every token from the last word through the padding, as
the paper-time script ``train-scripts/train_erase.py`` did) is offered as an option; the default is the
current reference's single last-word token. The solve is in float64 with ``torch.linalg.solve``
instead of an explicit inverse (same result, better conditioned). The artifact is a weight delta
``W_new − W_old`` (the reference saves the new weights), so it stacks with other edits.

SDXL: the reference's ``pipe.encode_prompt(prompt=…)`` call (keywords, ``DiffusionPipeline``) runs unchanged on
SDXL, where ``[0]`` is the 2048-d concatenation of both text encoders' penultimate states that every
``attn2`` reads; we take the same rows (:func:`conceptedit.conditioning.encode_text`, checked equal to
``encode_prompt``). The pooled text embedding (it enters the time embedding, not cross-attention) is not
edited: a K/V edit cannot reach it, so some of the concept may remain through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from conceptedit.conditioning import encode_text, text_encoders
from conceptedit.edits import WeightDeltaEdit
from conceptedit.errors import RequestError
from conceptedit.families import SD_FAMILIES, SDXL
from conceptedit.plugin import Plugin, Request
from conceptedit.registry import register_plugin
from conceptedit.sparsity.ridge import uce_closed_form
from conceptedit.toolkit import Progress, no_progress, tokenize

OBJECT_TEMPLATES = ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}")
ART_TEMPLATES = ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}")


LAYERS_PER_SOLVE = 16  # same-shape layers solved as one float64 batch (memory: 16 x 3 copies)


@dataclass
class UCEConfig:
    guide: str = field(default="", metadata={"help": "concept the erased ones are mapped to ('' = unconditional)"})
    erase_scale: float = field(default=1.0, metadata={"help": "weight e of the erase terms"})
    preserve_scale: float = field(default=1.0, metadata={"help": "weight p of the preserve terms"})
    lamb: float = field(default=0.5, metadata={"help": "λ: pull towards the original weights"})
    with_to_k: bool = field(default=True, metadata={"help": "edit to_k as well as to_v"})
    expand_prompts: bool = field(default=False, metadata={"help": "add the reference's 5 templates per concept"})
    concept_type: Literal["object", "art"] = field(default="object", metadata={"help": "template set to expand"})
    token: Literal["last", "all"] = field(
        default="last", metadata={"help": "last word token (reference) or last word through padding (paper-time)"}
    )

    def __post_init__(self) -> None:
        if self.lamb < 0 or self.erase_scale < 0 or self.preserve_scale < 0:
            raise ValueError("lamb, erase_scale and preserve_scale must be >= 0")


def same_shape_chunks(modules: list[torch.nn.Module]) -> list[list[int]]:
    """Indices of ``modules`` grouped by weight shape (one batched solve each: the keys are shared), in chunks
    of at most ``LAYERS_PER_SOLVE``: the float64 solve holds several copies of its batch, and SDXL's 120
    layers of 1280 x 2048 at once went past 12 GiB on top of the bf16 pipeline (benchmarks/full_size.py).
    Each layer's solution does not depend on the chunking."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(modules):
        by_shape.setdefault(tuple(m.weight.shape), []).append(i)
    return [idx[c : c + LAYERS_PER_SOLVE] for idx in by_shape.values() for c in range(0, len(idx), LAYERS_PER_SOLVE)]


def cross_attention_projections(unet: torch.nn.Module, with_to_k: bool = True) -> list[str]:
    """Names of the UNet's cross-attention key/value projections (``…attn2.to_k`` / ``…attn2.to_v``)."""
    ends = ("attn2.to_k", "attn2.to_v") if with_to_k else ("attn2.to_v",)
    return [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(ends)]


@torch.no_grad()
def concept_keys(pipe: Any, prompts: list[str], token: str = "last") -> list[torch.Tensor]:
    """Per prompt, the rows of the UNet's cross-attention context UCE uses as keys: ``(1, d)`` (last word)
    or ``(k, d)``. On SDXL a row is both encoders' states concatenated (2048-d), as every attn2 reads it."""
    out = []
    for prompt in prompts:
        embeds = encode_text(pipe, [prompt])[0][0].float().cpu()  # SDXL: both encoders, concatenated
        ids = tokenize(text_encoders(pipe)[0][2], [prompt])
        last = int(ids.attention_mask[0].sum()) - 2
        out.append(embeds[last : last + 1] if token == "last" else embeds[last:])
    return out


def _pairs(keys: list[torch.Tensor], guides: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack erase/guide rows; with ``token='all'`` both spans start at the last word, cut to the shorter."""
    erase_rows, guide_rows = [], []
    for k, g in zip(keys, guides, strict=True):
        n = min(len(k), len(g))
        erase_rows.append(k[:n])
        guide_rows.append(g[:n])
    return torch.cat(erase_rows), torch.cat(guide_rows)


@register_plugin
class UCEPlugin(Plugin):
    name = "uce"
    kind = "erase"
    Config = UCEConfig
    families = (*SD_FAMILIES, SDXL)
    artifact_kind = "weight_delta"
    summary = "Closed-form edit of cross-attention K/V so the concept's tokens map to a guide's (seconds)."
    paper = "Gandikota et al., Unified Concept Editing in Diffusion Models, WACV 2024"

    def prompts(self, concepts: list[str]) -> list[str]:
        templates = OBJECT_TEMPLATES if self.config.concept_type == "object" else ART_TEMPLATES
        out = list(concepts)
        if self.config.expand_prompts:
            out += [t.format(c) for c in concepts for t in templates]
        return out

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> WeightDeltaEdit:
        self.check_pipeline(pipe)
        cfg = self.config
        if cfg.guide in request.targets:
            raise RequestError(f"the guide concept {cfg.guide!r} is also a target")
        start = time.perf_counter()
        progress(0.0, "encoding concepts")
        erase_prompts = self.prompts(request.targets)
        templates = OBJECT_TEMPLATES if cfg.concept_type == "object" else ART_TEMPLATES
        guide_prompts = [cfg.guide] * len(request.targets)
        if cfg.expand_prompts:
            guide_prompts += [t.format(cfg.guide).strip() for _ in request.targets for t in templates]
        erase_keys = concept_keys(pipe, erase_prompts, cfg.token)
        guide_keys = concept_keys(pipe, guide_prompts, cfg.token)
        erase, guide = _pairs(erase_keys, guide_keys)
        preserve = torch.cat(concept_keys(pipe, request.preserve, cfg.token)) if request.preserve else None

        progress(0.5, "solving")
        names = cross_attention_projections(pipe.unet, cfg.with_to_k)
        modules = [pipe.unet.get_submodule(n) for n in names]
        deltas: dict[str, torch.Tensor] = {}
        for idx in same_shape_chunks(modules):
            W_old = torch.stack([modules[i].weight.detach().float().cpu() for i in idx])
            W_new = uce_closed_form(W_old, erase, guide, preserve, cfg.lamb, cfg.preserve_scale, cfg.erase_scale)
            for j, i in enumerate(idx):
                deltas[f"unet.{names[i]}.weight"] = W_new[j] - W_old[j]
        manifest = self.manifest(
            "weight_delta",
            "weight_delta",
            request,
            erase_prompts=erase_prompts,
            guide_prompts=guide_prompts,
            fit_seconds=round(time.perf_counter() - start, 3),
        )
        progress(1.0, "done")
        return self.finish(WeightDeltaEdit(manifest, deltas), pipe, ["unet"])
