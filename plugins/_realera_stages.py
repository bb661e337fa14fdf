"""The stages of RealEra (``plugins/realera.py`` says which paper sections they follow), on plain tensors
and a UNet, so each can be tested alone.

- :func:`mine_neighbours`: random perturbations ``e + η`` of a concept embedding inside the neighbourhood
  ``‖η‖ ≤ D₁‖e‖`` and ``cos(e, e + η) ∈ [S₁, S₂]``.
- :func:`beyond_from_pool` (real embeddings outside the neighbourhood, e.g. vocabulary words) or
  :func:`sample_beyond` (perturbations of ``e`` outside it: ``cos < S₁``, ``‖ξ‖ ≤ D₂‖e‖``) for the
  beyond-concept regulariser.
- :func:`alignment_problem` + :func:`conceptedit.sparsity.ridge.weighted_ridge_edit`: the closed-form
  cross-attention alignment (the concept and its neighbours → the anchor; beyond-concept samples and
  preserved concepts → themselves).
- :func:`lora_student` + :func:`noise_alignment_lora`: the LoRA stage (prediction-noise alignment) on the
  UNet with float32 copies of only its LoRA'd (and closed-form-edited) layers swapped in.

The leading underscore keeps the plugin registry from importing this module as a plugin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from conceptedit.conditioning import Conditioning, predict_noise
from conceptedit.errors import RequestError
from conceptedit.plugins._training import Trainable, activation_checkpointing, swapped_in, trainable_layers


def _unit_directions(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    u = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


def _perturbations(
    e: torch.Tensor,
    n: int,
    max_radius: float,
    accept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    what: str,
    max_tries: int,
) -> torch.Tensor:
    """``n`` rows ``e + r·u`` (``u`` uniform on the sphere, ``r ~ U(0, max_radius)``) that ``accept(radius,
    cos)`` keeps; rejection sampling in batches, a one-line error if too few are found."""
    e = e.double().flatten()
    found: list[torch.Tensor] = []
    count, tried = 0, 0
    while count < n and tried < max_tries:
        batch = max(4 * (n - count), 64)
        tried += batch
        radius = torch.rand(batch, generator=generator, dtype=torch.float64) * max_radius
        cand = e + radius[:, None] * _unit_directions(batch, e.numel(), generator)
        cos = (cand @ e) / (cand.norm(dim=1) * e.norm()).clamp_min(1e-12)
        kept = cand[accept(radius, cos)]
        found.append(kept[: n - count])
        count += len(found[-1])
    if count < n:
        raise RequestError(
            f"only {count} of {n} {what} satisfy the constraints after {tried} random draws; widen them "
            "(max_distance / min_cos / max_cos / beyond_max_distance)"
        )
    return torch.cat(found)


def mine_neighbours(
    e: torch.Tensor,
    n: int,
    max_distance: float,
    min_cos: float,
    max_cos: float,
    generator: torch.Generator,
    max_tries: int = 200_000,
) -> torch.Tensor:
    """Neighbour-concept mining: ``n`` embeddings ``e + η`` with ``‖η‖ ≤ max_distance·‖e‖`` and
    ``cos(e, e + η) ∈ [min_cos, max_cos]`` (float64, ``(n, d)``)."""
    if n == 0:
        return torch.zeros(0, e.numel(), dtype=torch.float64)
    radius = max_distance * float(e.double().norm())
    return _perturbations(
        e,
        n,
        radius,
        lambda r, c: (c >= min_cos) & (c <= max_cos) & (r <= radius),
        generator,
        "mined neighbours",
        max_tries,
    )


def in_neighbourhood(
    e: torch.Tensor, x: torch.Tensor, max_distance: float, min_cos: float, max_cos: float
) -> torch.Tensor:
    """Which rows of ``x`` lie in the neighbourhood of ``e``: ``‖x − e‖ ≤ D₁‖e‖`` and ``cos(e, x) ∈ [S₁, S₂]``."""
    e, x = e.double().flatten(), x.double()
    cos = (x @ e) / (x.norm(dim=1) * e.norm()).clamp_min(1e-12)
    return ((x - e).norm(dim=1) <= max_distance * e.norm()) & (cos >= min_cos) & (cos <= max_cos)


def beyond_from_pool(
    e: torch.Tensor,
    pool: torch.Tensor,
    n: int,
    max_distance: float,
    min_cos: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Beyond-concept samples from real embeddings (``pool``, e.g. the vocabulary's words): up to ``n`` rows,
    drawn at random among those outside the neighbourhood and not closer to ``e`` than it (``cos < S₁`` or
    ``‖x − e‖ > D₁‖e‖``) (float64)."""
    e, pool = e.double().flatten(), pool.double()
    cos = (pool @ e) / (pool.norm(dim=1) * e.norm()).clamp_min(1e-12)
    outside = (cos < min_cos) | ((pool - e).norm(dim=1) > max_distance * e.norm())
    kept = pool[outside]
    order = torch.randperm(len(kept), generator=generator)[:n]
    return kept[order]


def sample_beyond(
    e: torch.Tensor,
    n: int,
    min_cos: float,
    max_distance: float,
    generator: torch.Generator,
    max_tries: int = 200_000,
) -> torch.Tensor:
    """Beyond-concept samples as perturbations of ``e`` itself: ``n`` embeddings ``e + ξ`` outside the
    neighbourhood, ``cos(e, e + ξ) < min_cos`` (S₁), with ``‖ξ‖ ≤ max_distance·‖e‖`` (float64, ``(n, d)``)."""
    if n == 0:
        return torch.zeros(0, e.numel(), dtype=torch.float64)
    radius = max_distance * float(e.double().norm())
    return _perturbations(e, n, radius, lambda r, c: c < min_cos, generator, "beyond-concept samples", max_tries)


@dataclass
class AlignmentProblem:
    """The weighted least-squares problem of the closed-form stage, for every layer at once:
    ``min_W Σ_i w_i ‖W k_i − v_i‖² + λ‖W − W_old‖²``, with ``v_i = W_old s_i``."""

    keys: torch.Tensor  # (n, in): concept, neighbours, beyond-concept samples, preserved concepts
    sources: torch.Tensor  # (n, in): s_i whose old output is k_i's target (the anchor, or k_i itself)
    weights: torch.Tensor  # (n,)

    def values(self, W_old: torch.Tensor) -> torch.Tensor:
        """Targets ``W_old s_i``: ``(n, out)`` for one layer, ``(L, n, out)`` for a batch."""
        return torch.einsum("...oi,ni->...no", W_old.double(), self.sources.double())


def alignment_problem(
    concepts: list[torch.Tensor],
    neighbours: list[torch.Tensor],
    anchors: list[torch.Tensor],
    beyond: list[torch.Tensor],
    preserve: torch.Tensor | None,
    erase_scale: float,
    neighbour_scale: float,
    regularisation_scale: float,
    preserve_scale: float,
) -> AlignmentProblem:
    """Keys and targets per concept prompt ``p``: ``e_p`` and its neighbours → the anchor's key ``a_p``
    (weights ``erase_scale`` and ``neighbour_scale`` shared over the neighbours); beyond-concept samples →
    themselves (``regularisation_scale`` shared over them); preserved concepts → themselves
    (``preserve_scale`` each)."""
    keys, sources, weights = [], [], []

    def add(k: torch.Tensor, s: torch.Tensor, total: float, each: bool = False) -> None:
        if len(k) and total > 0:
            keys.append(k.double())
            sources.append(s.double())
            weights.append(torch.full((len(k),), total if each else total / len(k), dtype=torch.float64))

    for e, nb, a, bc in zip(concepts, neighbours, anchors, beyond, strict=True):
        add(e[None], a[None], erase_scale)
        add(nb, a[None].expand(len(nb), -1), neighbour_scale)
        add(bc, bc, regularisation_scale)
    if preserve is not None:
        add(preserve, preserve, preserve_scale, each=True)
    return AlignmentProblem(torch.cat(keys), torch.cat(sources), torch.cat(weights))


# -- the LoRA stage --------------------------------------------------------------------------------
@dataclass
class NoiseAlignmentData:
    """What the LoRA stage trains on, per concept prompt ``p``: its conditioning (context ``(1, L, d)``, and on
    SDXL the pooled embedding and time ids), the row of the concept token, the anchor prompt's conditioning,
    its mined neighbours and beyond-concept samples."""

    sequences: list[Conditioning]
    rows: list[int]
    anchor_sequences: list[Conditioning]
    neighbours: list[torch.Tensor]  # (n, d) each (may be empty: then the concept row itself)
    beyond: list[torch.Tensor]  # (m, d) each (may be empty: no regularisation term)
    latents: torch.Tensor  # (k, C, h, w): clean latents of the concept (the base model's own images)


def _with_row(cond: Conditioning, row: int, value: torch.Tensor) -> Conditioning:
    out = cond.embeds.clone()
    out[0, row] = value.to(out.device, out.dtype)
    return cond.with_embeds(out)


@dataclass
class LoRAStudent:
    """The LoRA stage's student: the pipeline's UNet (frozen, never written to) with ``layers`` swapped in
    for the duration of a with-block (``with student():``; :func:`conceptedit.plugins._training.swapped_in`),
    its activations recomputed in the backward (``activation_checkpointing``: same gradients)."""

    unet: torch.nn.Module
    layers: torch.nn.Module  # float32 copies of the LoRA'd layers and the closed-form-edited ones
    names: list[str]

    def __call__(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(swapped_in(self.unet, self.layers, self.names))
        stack.enter_context(activation_checkpointing(self.unet))  # memory, not results (plugins/_training.py)
        return stack


def lora_student(
    unet: torch.nn.Module,
    deltas: dict[str, torch.Tensor],
    lora_names: list[str],
    rank: int,
    alpha: float | None,
    seed: int,
) -> tuple[LoRAStudent, Trainable]:
    """The student ``W + Δ + BA``: float32 copies of only the layers the LoRA or the closed-form delta (keys
    ``unet.<layer>.weight``) touch, with Δ added and rank-``rank`` LoRA factors on ``lora_names``, and the
    :class:`Trainable` holding those factors. Why not a whole copy: a float32 copy of SDXL's UNet is 9.6 GiB
    (it took full-size SDXL past 18 GiB); on a float32 UNet this student computes exactly what a whole
    copy did (same seeded LoRA init, same forward; tests/test_training.py)."""
    wanted = set(lora_names) | {k.removeprefix("unet.").removesuffix(".weight") for k in deltas}
    names = [n for n, _ in unet.named_modules() if n in wanted]
    layers = trainable_layers(unet, names).to(next(unet.parameters()).device)
    with torch.no_grad():
        for key, delta in deltas.items():
            param = layers.get_parameter(key.removeprefix("unet."))
            param.add_(delta.to(param.device, param.dtype))
    trainable = Trainable(layers, "unet", lora_names, "lora", rank, alpha, seed)
    return LoRAStudent(unet, layers, names), trainable


def noise_alignment_lora(
    student: torch.nn.Module,
    frozen: torch.nn.Module,
    scheduler: object,
    data: NoiseAlignmentData,
    parameters: list[torch.nn.Parameter],
    steps: int,
    lr: float,
    regularisation_weight: float,
    generator: torch.Generator,
    progress: Callable[[int, float], None],
    student_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> list[float]:
    """Prediction-noise alignment: ``ε_student(x_t, c[e_p → e_p + η], t) ≈ ε_frozen(x_t, anchor_p, t)`` and,
    with weight ``regularisation_weight``, ``ε_student(x_t, a[e_p → e_p + ξ], t) ≈ ε_frozen(x_t, a[e_p → e_p + ξ],
    t)`` for beyond-concept ``ξ``, where ``a`` is the anchor prompt's sequence: the beyond-concept sample goes
    into a context that does not carry the concept. (Put into the concept's own sequence, as first written,
    the term taught the student to draw the concept from the other rows — the EOS and padding outputs of a
    CLIP text encoder repeat the last word — and undid the erasure: zorblax on shapes v2, n = 10, erased
    0.5 / residue 0.6 with it, 0.1 / 0.3 with the anchor context, 0.0 / 0.0 with no LoRA stage.)
    ``x_t`` is a concept latent noised to a uniform random ``t``. Adam over
    ``parameters`` (the LoRA factors). ``student_context`` (e.g. a :class:`LoRAStudent`): the student's
    forward and backward run inside it (the trained layers swapped into ``student``). Returns the per-step
    losses."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    device = next(student.parameters()).device
    n_train = int(scheduler.config.num_train_timesteps)
    losses = []
    for step in range(steps):
        p = step % len(data.sequences)
        seq, row = data.sequences[p], data.rows[p]
        nb = data.neighbours[p]
        choice = int(torch.randint(0, len(nb) + 1, (1,), generator=generator))
        erased_row = seq.embeds[0, row] if choice == len(nb) else nb[choice]  # the concept itself, or a neighbour
        z0 = data.latents[int(torch.randint(0, len(data.latents), (1,), generator=generator))][None]
        noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype)
        t = torch.randint(0, n_train, (1,), generator=generator)
        x_t = scheduler.add_noise(z0, noise, t).to(device)  # type: ignore[attr-defined]
        t = t.to(device)
        conds = [_with_row(seq, row, erased_row)]
        bc = data.beyond[p]
        use_reg = len(bc) > 0 and regularisation_weight > 0
        if use_reg:
            xi = bc[int(torch.randint(0, len(bc), (1,), generator=generator))]
            conds.append(_with_row(data.anchor_sequences[p], row, xi))
        x_in = torch.cat([x_t] * len(conds))
        with torch.no_grad():
            targets = predict_noise(frozen, x_in, t, Conditioning.cat([data.anchor_sequences[p]] + conds[1:]))
        with student_context() if student_context is not None else contextlib.nullcontext():
            preds = predict_noise(student, x_in, t, Conditioning.cat(conds))
            loss = torch.nn.functional.mse_loss(preds[:1], targets[:1])
            if use_reg:
                loss = loss + regularisation_weight * torch.nn.functional.mse_loss(preds[1:], targets[1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress(step, losses[-1])
    return losses
