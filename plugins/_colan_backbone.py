"""The editing backbone of the ``colan`` plugin: DDIM inversion, then guided regeneration under an edited
prompt embedding (Concept Lancet plugs its transplanted embedding into such backbones; paper Sec. 4).

Why guidance: DDIM sampling from the inverted latent under the edited embedding *without* guidance
reproduces the source (the inverted latent already encodes it), so the edit does not land. The
regeneration here is classifier-free guided, ``ε = ε(x, u) + g·(ε(x, c_edit) − ε(x, u))``, with the
unconditional branch ``u`` either

- ``"source"``: the source prompt's embedding (negative-prompt inversion, Miyake et al. 2023): the
  guidance pushes along the edit ``c_edit − c_src`` only, and at zero edit the regeneration is the plain
  inversion's reconstruction whatever ``g``; or
- ``"empty"``: the empty prompt (plain CFG as in P2P-Zero / PnP, g = 7.5 there).

Optional, from P2P-Zero (Parmar et al., SIGGRAPH 2023, Alg. 1): a reference branch regenerates the source
under ``c_src`` and records its cross-attention maps; before each edited step the latent moves down the
gradient of ``‖M_edit − M_ref‖²`` (``cross_attention_guidance``). ``strength`` < 1 inverts only to an
intermediate step (SDEdit-like partial inversion). Both are off by default: on dev edits of the shapes model
(``benchmarks/colan_edits.py --dev``) strength 0.6 landed fewer CoLan edits, and the cross-attention step is
untuned (λ = 20 changed nothing measurable, λ = 2000 destroyed the image). Deviations: plain DDIM inversion
(P2P-Zero regularises its noise maps), no null-text optimisation. Everything is batched: one call edits a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import AttnProcessor

from conceptedit.errors import ConceptEditError

__all__ = ["BackboneSettings", "invert", "regenerate", "timesteps_for"]

UNCOND = ("source", "empty")


@dataclass(frozen=True)
class BackboneSettings:
    steps: int = 20
    guidance: float = 5.0
    uncond: str = "source"
    strength: float = 1.0
    cross_attention_guidance: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConceptEditError(f"steps must be >= 1, got {self.steps}")
        if self.guidance < 0:
            raise ConceptEditError(f"guidance must be >= 0, got {self.guidance}")
        if self.uncond not in UNCOND:
            raise ConceptEditError(f"uncond must be one of {', '.join(UNCOND)}, got {self.uncond!r}")
        if not 0 < self.strength <= 1:
            raise ConceptEditError(f"strength must be in (0, 1], got {self.strength}")
        if self.cross_attention_guidance < 0:
            raise ConceptEditError(f"cross_attention_guidance must be >= 0, got {self.cross_attention_guidance}")


def timesteps_for(scheduler: Any, settings: BackboneSettings) -> list[int]:
    """The DDIM timesteps (high → low) the edit runs through: the last ``strength`` share of the schedule."""
    scheduler.set_timesteps(settings.steps)
    ts = [int(t) for t in scheduler.timesteps]
    keep = max(1, round(settings.strength * len(ts)))
    return ts[len(ts) - keep :]


def _alpha(scheduler: Any, t: int, device: torch.device) -> torch.Tensor:
    acp = scheduler.alphas_cumprod.to(device)
    return acp[t] if t >= 0 else scheduler.final_alpha_cumprod.to(device)


def _ddim_step(scheduler: Any, z: torch.Tensor, eps: torch.Tensor, t: int, t_next: int) -> torch.Tensor:
    """Deterministic DDIM move of ``z`` from ``t`` to ``t_next`` (either direction) with noise ``eps``."""
    a, a_next = _alpha(scheduler, t, z.device), _alpha(scheduler, t_next, z.device)
    x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


@torch.no_grad()
def invert(unet: Any, scheduler: Any, z0: torch.Tensor, cond: torch.Tensor, ts: list[int]) -> torch.Tensor:
    """DDIM inversion of clean latents ``z0`` under ``cond`` (no guidance) up to ``ts[0]``."""
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    z = z0
    for t in reversed(ts):  # z_{t−ratio} → z_t with ε predicted at the current latent
        eps = unet(z, t, encoder_hidden_states=cond).sample
        z = _ddim_step(scheduler, z, eps, t - ratio, t)
    return z


class _MapRecorder(AttnProcessor):
    """The default attention, plus the cross-attention probabilities kept (differentiably) when on."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None, *a, **kw):
        if self.on and encoder_hidden_states is not None:
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
            self.maps.append(attn.get_attention_scores(q, k, None))
        return super().__call__(attn, hidden_states, encoder_hidden_states, *a, **kw)


def _eps(unet: Any, z: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor, g: float) -> torch.Tensor:
    if g == 1.0:
        return unet(z, t, encoder_hidden_states=cond).sample
    e = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = e.chunk(2)
    return e_u + g * (e_c - e_u)


def regenerate(
    unet: Any,
    scheduler: Any,
    zt: torch.Tensor,
    source: torch.Tensor,
    edited: torch.Tensor,
    empty: torch.Tensor,
    ts: list[int],
    settings: BackboneSettings,
    progress: Callable[[float], None] = lambda f: None,
) -> torch.Tensor:
    """DDIM sampling from the inverted ``zt`` under ``edited`` with the backbone's guidance; clean latents out."""
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    uncond = source if settings.uncond == "source" else empty.expand_as(source)
    lam = settings.cross_attention_guidance
    recorder: _MapRecorder | None = None
    saved = None
    if lam > 0:
        saved = unet.attn_processors
        recorder = _MapRecorder()
        unet.set_attn_processor({k: recorder if k.endswith("attn2.processor") else v for k, v in saved.items()})
    z, z_ref = zt, zt
    try:
        for i, t in enumerate(ts):
            if recorder is not None:
                with torch.no_grad():  # reference branch: the source regenerated, its maps recorded
                    recorder.on, recorder.maps = True, []
                    eps_ref = unet(z_ref, t, encoder_hidden_states=source).sample
                    ref_maps = recorder.maps
                    z_ref = _ddim_step(scheduler, z_ref, eps_ref, t, t - ratio)
                with torch.enable_grad():
                    x = z.detach().requires_grad_(True)
                    recorder.maps = []
                    unet(x, t, encoder_hidden_states=edited)
                    loss = sum(((m - r) ** 2).sum() for m, r in zip(recorder.maps, ref_maps, strict=True))
                    (grad,) = torch.autograd.grad(loss, x)
                recorder.on = False
                z = z - lam * grad
            with torch.no_grad():
                eps = _eps(unet, z, t, edited, uncond, settings.guidance)
                z = _ddim_step(scheduler, z, eps, t, t - ratio)
            progress((i + 1) / len(ts))
    finally:
        if saved is not None:
            unet.set_attn_processor(saved)
    return z.detach()
