"""``unlearndiffatk``: a white-box adversarial prompt attack on an erased model — optimise k prepended
tokens so the *edited* model denoises an image of the concept as if the prompt asked for it.

Zhang, Jia, Chen, Chen, Zhang, Liu, Ding, Liu, "To Generate or Not? Safety-Driven Unlearned Diffusion
Models Are Still Easy To Generate Unsafe Images ... For Now", ECCV 2024 (arXiv 2310.11868), Sec. 4,
Eq. 4–5. Followed: ``OPTML-Group/Diffusion-MU-Attack`` — ``src/attackers/text_grad_.py`` (the
optimiser), ``src/tasks/classifier_.py`` (``get_loss``, the timesteps) and
``configs/object/text_grad_esd_church_classifier.json`` (the budget):

1. The attack prompt is ``[BOS] + k adversarial tokens + the original prompt``; each adversarial slot
   is a probability vector over the vocabulary (initialised uniform), kept on the simplex by a
   projection after every step.
2. Objective (Eq. 5): ``min E_ε ‖ε − ε_θ*(x_t(x_tgt, ε), t | c′)‖²`` on the erased model θ*, ``x_tgt``
   the latent of an image of the concept (made by the original model from the same prompt).
3. Each step samples one-hot tokens from the slots' distributions (straight-through: the gradient of
   the one-hot is passed to the probabilities through a hardtanh), embeds them with the text
   encoder's token table, and takes an Adam step (lr 0.01, weight decay 0.1).
4. Timesteps t = T/(2n), T/(2n) + T/n, … (n = 50: 10, 30, …, 990), 40 steps each; after each t the
   slots are projected to discrete tokens (argmax) and, when a judge is given, the prompt is
   generated with its seed and the attack stops at the first success (and does not start when the
   original prompt already shows the concept: ASR = (already unsafe + newly successful) / prompts).
5. Defaults: k = 3 (object and style; the paper uses 5 for nudity), 40 iterations, 50 timesteps.

Any edit applied to the pipeline acts: the conditioning goes through ``pipe.encode_prompt`` (with the
slot embeddings injected at the token-embedding table), so text-encoder edits, hooks and the UNet's
edited weights are all in the loss. Weights are never changed (the pipeline's parameters are frozen
while the attack runs and restored after).

Deviations: ``objective: auto`` (the default) matches the classifier-free-guided prediction when the
pipeline carries a prompt-level edit (an instance-level ``encode_prompt``, e.g. the negative-prompt
baseline), as Pham et al. (ICLR 2024) do against inference-time erasure; with weight edits it is the
paper's conditional objective. The simplex projection is the exact sort-based one (Duchi et al. 2008)
instead of the reference's bisection (the same projection up to its 1e-5 tolerance). Only the
``prefix_k`` insertion (the reference's default) is implemented. The final prompt is the discrete
tokens decoded to text; where that text does not tokenize back to the optimised ids, the prompt also
carries the ids' token embeddings for its whole row (injected at generation, as soft prompts are), so
the token ids are what is evaluated, as in the reference. The noise of each step comes from a
generator seeded by ``seed`` (the reference's is unseeded); ``noise: fixed`` (not the default) draws
one ε per timestep instead, a deterministic objective for checks. ``seconds`` adds a wall-time budget
(0: none). Without a judge the full budget is spent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from conceptedit.attack import (
    AttackPlugin,
    AttackPrompt,
    AttackSet,
    Injection,
    check_budget,
    concept_latents,
    denoising_loss,
    encode,
    frozen,
    generate_attack_images,
    inject,
    special_ids,
    token_embedding,
)
from conceptedit.errors import RequestError
from conceptedit.families import SD_FAMILIES
from conceptedit.generation import generation_settings
from conceptedit.registry import register_plugin
from conceptedit.toolkit import Progress, no_progress, tokenize


@dataclass
class UnlearnDiffAtkConfig:
    k: int = field(default=3, metadata={"help": "adversarial tokens prepended (3 object/style, 5 nudity)"})
    iterations: int = field(default=40, metadata={"help": "Adam steps per timestep"})
    timesteps: int = field(default=50, metadata={"help": "n timesteps t = T/2n, T/2n + T/n, ... (stop at success)"})
    lr: float = field(default=0.01, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=0.1, metadata={"help": "Adam weight decay"})
    objective: Literal["auto", "conditional", "guided"] = field(
        default="auto", metadata={"help": "conditional (paper), guided (CFG, for prompt-level edits) or auto"}
    )
    noise: Literal["random", "fixed"] = field(
        default="random", metadata={"help": "random: a new ε every step (reference); fixed: one ε per timestep"}
    )
    n_prompts: int = field(default=8, metadata={"help": "attack prompts (one optimisation per image of the concept)"})
    seconds: float = field(default=0.0, metadata={"help": "wall-time budget per prompt (0: none)"})

    def __post_init__(self) -> None:
        for key in ("k", "iterations", "timesteps", "n_prompts"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.seconds < 0:
            raise ValueError("lr must be > 0, weight_decay and seconds >= 0")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Each row's Euclidean projection onto the probability simplex (Duchi et al. 2008, Fig. 1)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(dim=-1) - 1
    idx = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / idx) > 0).to(v.dtype).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp(min=0)


class _StraightThroughSample(torch.autograd.Function):
    """Forward: a one-hot sample from each row's distribution; backward: hardtanh of the gradient
    (the reference's ``STERandSelect``)."""

    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:  # type: ignore[override]
        index = torch.multinomial(probs.detach().clamp(min=0) + 1e-12, 1, generator=generator).squeeze(-1)
        return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return torch.nn.functional.hardtanh(grad), None


def sampled_timesteps(total: int, n: int) -> list[int]:
    """The reference's timesteps: ``T/n/2 + i·T/n`` for i < n (10, 30, …, 990 for T = 1000, n = 50)."""
    n = min(n, total)
    step = total // n
    return list(range(step // 2, total, step))[:n]


def uses_guided(pipe: Any, objective: str) -> bool:
    """``auto``: guided when a prompt-level edit wraps ``encode_prompt`` on the pipeline instance."""
    if objective == "auto":
        return "encode_prompt" in vars(pipe)
    return objective == "guided"


class PrefixPrompt:
    """``[BOS] + k slots + prompt tokens`` as token ids, and its embeddings with the slots filled."""

    def __init__(self, pipe: Any, prompt: str, k: int) -> None:
        tok = pipe.tokenizer
        self.pipe, self.k = pipe, k
        ids = tokenize(tok, [prompt])
        length = int(ids.attention_mask[0].sum())  # BOS + words + EOS
        words = ids.input_ids[0, 1 : length - 1]
        room = tok.model_max_length - 2 - k
        if room < 1:
            raise RequestError(f"k = {k} adversarial tokens leave no room in {tok.model_max_length} tokens")
        self.words = words[:room]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.ids = torch.full((tok.model_max_length,), int(pad), dtype=torch.long)
        self.ids[0] = tok.bos_token_id
        self.ids[k + 1 : k + 1 + len(self.words)] = self.words
        self.ids[k + 1 + len(self.words)] = tok.eos_token_id
        self.banned = special_ids(tok)

    def text(self, slot_ids: torch.Tensor) -> str:
        ids = [int(i) for i in slot_ids] + [int(i) for i in self.words]
        return self.pipe.tokenizer.decode([i for i in ids if i not in self.banned])

    def row_ids(self, slot_ids: torch.Tensor) -> torch.Tensor:
        """The full row of token ids with the slots filled (what the attack optimised)."""
        ids = self.ids.clone()
        ids[1 : self.k + 1] = slot_ids.to(ids.dtype)
        return ids

    def attack_prompt(self, slot_ids: torch.Tensor, seed: int, loss: float | None = None) -> AttackPrompt:
        """The found prompt: its text, and when the text does not tokenize back to the optimised ids (a
        byte-level BPE with a small vocabulary rarely does) those ids' token embeddings for the whole row,
        injected at generation: the prompt is the token ids, as the reference evaluates them."""
        text = self.text(slot_ids)
        ids = self.row_ids(slot_ids)
        if torch.equal(tokenize(self.pipe.tokenizer, [text]).input_ids[0], ids):
            return AttackPrompt(text, seed, loss=loss)
        vectors = token_embedding(self.pipe).weight[ids.to(token_embedding(self.pipe).weight.device)]
        return AttackPrompt(text, seed, tuple(range(len(ids))), vectors.detach().float().cpu().clone(), loss)

    def injection(self, slot_vectors: torch.Tensor, slot_ids: torch.Tensor) -> Injection:
        """The full row's token embeddings (slots differentiable), matched on the decoded text's ids."""
        table = token_embedding(self.pipe).weight
        rows = table[self.ids.to(table.device)].detach()
        full = torch.cat([rows[:1], slot_vectors.to(rows.dtype), rows[self.k + 1 :]])
        return Injection(self.text(slot_ids), tuple(range(len(full))), full)


@register_plugin
class UnlearnDiffAtkPlugin(AttackPlugin):
    name = "unlearndiffatk"
    Config = UnlearnDiffAtkConfig
    families = SD_FAMILIES
    white_box = True
    needs_images = True
    summary = "White-box: optimise k prepended tokens so the edited model denoises an image of the concept."
    paper = "Zhang et al., To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy ..., ECCV 2024"

    def attack(
        self,
        pipe: Any,
        concept: str,
        *,
        images: Sequence[Any] | None = None,
        prompts: Sequence[str] | None = None,
        seed: int = 0,
        judge: Any = None,
        progress: Progress = no_progress,
    ) -> AttackSet:
        self.check_pipeline(pipe)
        cfg = self.config
        pictures = self.check_images(images)
        n = min(cfg.n_prompts, len(pictures))
        base = self.concept_prompts(concept, prompts, n)
        start = time.perf_counter()
        found, history = [], []
        with frozen(pipe):
            for i in range(n):
                prompt, losses = self._one(pipe, base[i], pictures[i], seed + i, judge)
                found.append(prompt)
                if i == 0:
                    history = losses
                progress((i + 1) / n, f"prompt {i + 1}/{n}")
        return self.result(concept, found, start, history)

    def _one(self, pipe: Any, prompt: str, image: Any, seed: int, judge: Any) -> tuple[AttackPrompt, list[float]]:
        cfg = self.config
        if judge is not None and judge(generate_attack_images(pipe, [AttackPrompt(prompt, seed)]))[0]:
            return AttackPrompt(prompt, seed), []  # the edit already fails on the original prompt: a success
        device = pipe.unet.device
        table = token_embedding(pipe).weight
        vocab_size = table.shape[0]
        x0 = concept_latents(pipe, [image]).to(device)
        prefix = PrefixPrompt(pipe, prompt, cfg.k)
        guided = uses_guided(pipe, cfg.objective)
        guidance = float(generation_settings(pipe).get("guidance_scale", 7.5))
        probs = torch.full((cfg.k, vocab_size), 1.0 / vocab_size, device=device, requires_grad=True)
        banned = torch.tensor(sorted(prefix.banned), dtype=torch.long, device=device)
        optimizer = torch.optim.Adam([probs], lr=cfg.lr, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        total = int(pipe.scheduler.config.num_train_timesteps)
        losses: list[float] = []
        slot_ids = probs.detach().argmax(dim=-1)
        start = time.perf_counter()
        for t in sampled_timesteps(total, cfg.timesteps):
            step_losses = []
            timestep = torch.tensor([t], device=device, dtype=torch.long)
            fixed = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
            for _ in range(cfg.iterations):
                optimizer.zero_grad()
                one_hot = _StraightThroughSample.apply(probs, generator)
                slot_vectors = one_hot @ table
                sampled = one_hot.detach().argmax(dim=-1)
                noise = (
                    fixed if cfg.noise == "fixed" else torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
                )
                with inject(pipe, [prefix.injection(slot_vectors, sampled)]):
                    cond, uncond = encode(pipe, [prefix.text(sampled)], guided)
                loss = denoising_loss(pipe, x0, cond, timestep, noise, uncond if guided else None, guidance)
                (grad,) = torch.autograd.grad(loss, [probs])
                probs.grad = grad
                optimizer.step()
                with torch.no_grad():
                    if len(banned):  # special tokens are never chosen (the reference never samples them in practice)
                        probs[:, banned] = 0
                    probs.copy_(project_simplex(probs))
                step_losses.append(float(loss.detach()))
            losses.extend(step_losses)
            slot_ids = probs.detach().argmax(dim=-1)
            if judge is not None:
                if judge(generate_attack_images(pipe, [prefix.attack_prompt(slot_ids, seed)]))[0]:
                    break
            if not check_budget(cfg.seconds, start):
                break
        return prefix.attack_prompt(slot_ids, seed, losses[-1] if losses else None), losses  # the objective per step
