"""Concept Lancet (Luo et al., CVPR 2025, arXiv 2504.02828): edit a concept inside an image by sparse
concept transplant of the source prompt's embedding, then DDIM inversion / regeneration.

The representation side (dictionary, elastic-net decomposition, transplant) is in
``plugins/_colan_core.py``. Backbone here: DDIM inversion of the source image under the source prompt's
embedding (no guidance: guidance breaks the inversion's reconstruction), then DDIM sampling from the
inverted latent under the transplanted embedding. The paper's P2P-Zero / InfEdit backbones are not
implemented. The edit is written ``"SRC -> TGT"`` (replace), ``"SRC -> "`` (remove: the target is the
empty-string embedding); add = replace a counterpart concept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conceptedit.errors import ConceptEditError
from conceptedit.families import SD_FAMILIES
from conceptedit.plugin import ImageEditPlugin
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
    def _latents(self, pipe: Any, image: Any) -> torch.Tensor:
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.shape != (size, size, 3):
            raise ConceptEditError(
                f"image must be RGB uint8 of {size}×{size} for this model, got {arr.dtype} {arr.shape}"
            )
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(pipe.device, pipe.vae.dtype)
        with torch.no_grad():
            return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor

    @torch.no_grad()
    def invert_and_regenerate(
        self,
        pipe: Any,
        image: Any,
        source_emb: torch.Tensor,
        edited_emb: torch.Tensor,
        progress: Progress = no_progress,
    ) -> np.ndarray:
        """DDIM inversion under ``source_emb``, DDIM sampling under ``edited_emb`` (no guidance)."""
        sch = pipe.scheduler
        sch.set_timesteps(self.config.steps)
        acp = sch.alphas_cumprod.to(pipe.device)
        ratio = sch.config.num_train_timesteps // self.config.steps
        dt = pipe.unet.dtype
        src = source_emb[None].to(pipe.device, dt)
        edt = edited_emb.reshape(source_emb.shape)[None].to(pipe.device, dt)
        z = self._latents(pipe, image).to(dt)
        ts = list(sch.timesteps)
        for i, t in enumerate(reversed(ts)):  # z_{t−ratio} → z_t with ε predicted at the current latent
            prev = int(t) - ratio
            a_prev = acp[prev] if prev >= 0 else sch.final_alpha_cumprod.to(pipe.device)
            eps = pipe.unet(z, t, encoder_hidden_states=src).sample
            x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            z = acp[int(t)].sqrt() * x0 + (1 - acp[int(t)]).sqrt() * eps
            progress(0.5 * (i + 1) / len(ts), "inversion")
        for i, t in enumerate(ts):
            eps = pipe.unet(z, t, encoder_hidden_states=edt).sample
            z = sch.step(eps, t, z).prev_sample
            progress(0.5 + 0.5 * (i + 1) / len(ts), "regeneration")
        img = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample[0]
        return ((img.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

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
        edited, weights = self.transplant(pipe, source_prompt, source, target)
        src = self.encode(pipe, [source_prompt])[0]
        out = self.invert_and_regenerate(pipe, image, src, edited.float(), progress)
        return {"image": out, "weights": weights}
