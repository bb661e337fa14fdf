"""Concept Lancet (Luo et al., CVPR 2025, arXiv 2504.02828): edit a concept inside an image by sparse concept transplant
of the source prompt's embedding, then an inversion-based editing backbone that takes the edited embedding.

The representation side (dictionary, elastic-net decomposition, transplant) is in ``plugins/_colan_core.py``; the
backbone in ``plugins/_colan_backbone.py``: DDIM inversion of the source image under the source prompt's embedding,
then classifier-free-guided DDIM regeneration under the transplanted embedding (the unconditional branch is the
source embedding by default — negative-prompt inversion — or the empty prompt), optionally with P2P-Zero's
cross-attention guidance towards the source's maps and a partial inversion ``strength``. The defaults were chosen
by measurement on development edits of the shapes world (``benchmarks/colan_edits.py --dev``). InfEdit is not
implemented. The edit is written ``"SRC -> TGT"`` (replace), ``"SRC -> "`` (remove: the target is the
empty-string embedding); add = replace a counterpart concept.

Measured (``benchmarks/colan_edits.py``, the shipped v2.1, n = 120; v2's figures in brackets): the
decomposition gives the reference code's weights (3e-6), yet the edit lands less often than a prompt swap
(success 0.35 vs 0.76 [0.36 vs 0.76]) and keeps the rest more often (consistency 0.71 vs 0.47 [0.63 vs
0.38]): the transplant's step along ``d_tgt − d_src`` is ``w_src`` (median 0.42, the swap's 0.82), and on
v2 a fixed direction at that strength scored the same as CoLan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conceptedit.errors import ConceptEditError
from conceptedit.families import SD_FAMILIES
from conceptedit.plugin import ImageEditPlugin
from conceptedit.plugins._colan_backbone import BackboneSettings, invert, regenerate, timesteps_for
from conceptedit.plugins._colan_core import ALPHA, TAU, ConceptDictionary, build_dictionary, decompose, load_stimuli
from conceptedit.plugins._colan_core import transplant as _transplant
from conceptedit.registry import Registry, register_plugin
from conceptedit.toolkit import Progress, no_progress


def _stimuli_from_entry_point(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"entry point {name!r} must point at a function () -> {{concept: [sentences]}}")
    STIMULI.register(name, obj)


#: registered stimulus sets: name -> function() -> {concept: [sentences]} (entry-point group conceptedit.stimuli)
STIMULI: Registry[Callable[[], dict[str, list[str]]]] = Registry(
    "stimulus set", group="conceptedit.stimuli", load=_stimuli_from_entry_point
)


def stimuli_for(value: str) -> dict[str, list[str]]:
    """A registered stimulus set by name, else a JSON/CSV file."""
    return STIMULI[value]() if value in STIMULI else load_stimuli(value)


@dataclass
class ColanConfig:
    tau: float = field(default=TAU, metadata={"help": "share of the l1 term in the elastic net (paper 0.95)"})
    alpha: float = field(default=ALPHA, metadata={"help": "elastic-net strength (paper 0.05, SPAMS scale)"})
    steps: int = field(default=20, metadata={"help": "DDIM steps of inversion and of regeneration"})
    guidance: float = field(
        default=5.0,
        metadata={"help": "classifier-free guidance scale of the regeneration (1 = none; chosen on dev edits)"},
    )
    uncond: str = field(
        default="source",
        metadata={"help": "unconditional branch: source (negative-prompt inversion) or empty (plain CFG)"},
    )
    strength: float = field(default=1.0, metadata={"help": "share of the DDIM schedule inverted (1 = all)"})
    cross_attention_guidance: float = field(
        default=0.0, metadata={"help": "P2P-Zero cross-attention guidance step towards the source maps (0 = off)"}
    )
    stimuli: str = field(
        default="shapes",
        metadata={"help": "registered stimulus set (built in: shapes) or JSON/CSV {concept: [sentences]}"},
    )


@register_plugin
class ColanPlugin(ImageEditPlugin):
    name = "colan"
    Config = ColanConfig
    families = SD_FAMILIES
    summary = "Edit a concept in an image by sparse concept transplant of the prompt embedding (Concept Lancet)."
    paper = "Luo et al., Concept Lancet, CVPR 2025"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dicts: dict[int, ConceptDictionary] = {}
        self.backbone = self.settings()  # bad settings fail here, before any model runs

    def settings(self) -> BackboneSettings:
        c = self.config
        return BackboneSettings(c.steps, c.guidance, c.uncond, c.strength, c.cross_attention_guidance)

    # -- text side -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pipe: Any, sentences: list[str]) -> torch.Tensor:
        tok = pipe.tokenizer(
            sentences, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        return pipe.text_encoder(tok.input_ids.to(pipe.device))[0].float().cpu()

    def dictionary(self, pipe: Any) -> ConceptDictionary:
        if id(pipe) not in self._dicts:
            stim = stimuli_for(self.config.stimuli)
            self._dicts[id(pipe)] = build_dictionary(lambda s: self.encode(pipe, s), stim)
        return self._dicts[id(pipe)]

    def transplant(self, pipe: Any, source_prompt: str, source: str, target: str) -> tuple[torch.Tensor, dict]:
        """(edited embedding, concept weights of the source prompt) for the edit source → target."""
        full = self.dictionary(pipe)
        full.index(source)
        if target:
            tgt_atom = full.atoms[full.index(target)]
            keep = [i for i, n in enumerate(full.names) if n != target]  # paper: target excluded
            dic = ConceptDictionary([full.names[i] for i in keep], full.atoms[keep])
        else:
            tgt_atom = self.encode(pipe, [""])[0].double().flatten()
            dic = full
        v = self.encode(pipe, [source_prompt])[0]
        w, _ = decompose(v, dic, tau=self.config.tau, alpha=self.config.alpha)
        edited = _transplant(v, dic, w, source, tgt_atom)
        return edited, {n: float(x) for n, x in zip(dic.names, w, strict=True) if x != 0}

    # -- image side ------------------------------------------------------------------------------
    def _latents(self, pipe: Any, images: Any) -> torch.Tensor:
        """Clean VAE latents of one image (H, W, 3) or a batch (B, H, W, 3), RGB uint8 at the model's size."""
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        arr = np.asarray(images)
        batch = arr if arr.ndim == 4 else arr[None]
        if arr.dtype != np.uint8 or batch.shape[1:] != (size, size, 3):
            raise ConceptEditError(
                f"image must be RGB uint8 of {size}×{size} for this model, got {arr.dtype} {arr.shape}"
            )
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(pipe.device, pipe.vae.dtype)
        with torch.no_grad():
            return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor

    def _embs(self, pipe: Any, emb: torch.Tensor, n: int) -> torch.Tensor:
        shape = pipe.text_encoder.config.max_position_embeddings, pipe.text_encoder.config.hidden_size
        e = emb.reshape(-1, *shape)
        if len(e) not in (1, n):
            raise ConceptEditError(f"{len(e)} embeddings for {n} images")
        return e.expand(n, *shape).to(pipe.device, pipe.unet.dtype)

    @torch.no_grad()
    def invert(self, pipe: Any, images: Any, source_embs: torch.Tensor) -> torch.Tensor:
        """DDIM inversion of a batch of images under their source embeddings, to the backbone's start step."""
        z0 = self._latents(pipe, images).to(pipe.unet.dtype)
        ts = timesteps_for(pipe.scheduler, self.backbone)
        return invert(pipe.unet, pipe.scheduler, z0, self._embs(pipe, source_embs, len(z0)), ts)

    def regenerate(
        self,
        pipe: Any,
        zt: torch.Tensor,
        source_embs: torch.Tensor,
        edited_embs: torch.Tensor,
        progress: Callable[[float], None] = lambda f: None,
    ) -> np.ndarray:
        """Guided regeneration of inverted latents under the edited embeddings → uint8 images (B, H, W, 3)."""
        n = len(zt)
        ts = timesteps_for(pipe.scheduler, self.backbone)
        empty = self.encode(pipe, [""]).to(pipe.device, pipe.unet.dtype)
        src, edt = self._embs(pipe, source_embs, n), self._embs(pipe, edited_embs, n)
        z = regenerate(pipe.unet, pipe.scheduler, zt, src, edt, empty, ts, self.backbone, progress)
        with torch.no_grad():
            img = pipe.vae.decode(z.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
        return ((img.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def invert_and_regenerate(
        self,
        pipe: Any,
        image: Any,
        source_emb: torch.Tensor,
        edited_emb: torch.Tensor,
        progress: Progress = no_progress,
    ) -> np.ndarray:
        """One image: DDIM inversion under ``source_emb``, guided regeneration under ``edited_emb``."""
        zt = self.invert(pipe, image, source_emb)
        progress(0.5, "inversion")
        out = self.regenerate(pipe, zt, source_emb, edited_emb, lambda f: progress(0.5 + 0.5 * f, "regeneration"))
        return out[0]

    def edit_image(
        self,
        pipe: Any,
        image: Any,
        source_prompt: str,
        target_prompt: str,
        *,
        seed: int = 0,
        progress: Progress = no_progress,
    ) -> dict:
        """``target_prompt`` is the edit ``"SRC -> TGT"`` (``"SRC -> "`` removes SRC)."""
        if "->" not in target_prompt:
            raise ConceptEditError(
                f"colan edits are written 'SRC -> TGT' (or 'SRC -> ' to remove), got {target_prompt!r}"
            )
        source, target = (s.strip() for s in target_prompt.split("->", 1))
        self._latents(pipe, image)  # a wrong image fails before the dictionary is built
        self.dictionary(pipe)  # built once per pipeline, not part of an edit's time
        start = time.perf_counter()
        edited, weights = self.transplant(pipe, source_prompt, source, target)
        mid = time.perf_counter()
        src = self.encode(pipe, [source_prompt])[0]
        out = self.invert_and_regenerate(pipe, image, src, edited.float(), progress)
        seconds = {"decomposition": mid - start, "edit": time.perf_counter() - start}
        return {"image": out, "weights": weights, "seconds": seconds}
