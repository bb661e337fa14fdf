"""``ring-a-bell``: a model-agnostic red-teaming attack — find discrete prompts whose text embedding
carries the concept, by a genetic search in text-embedding space.

Tsai, Hsu, Xie, Lin, Chen, Hsu, Chen, Chen, Yu, "Ring-A-Bell! How Reliable are Concept Removal
Methods for Diffusion Models?", ICLR 2024 (arXiv 2310.10012), Sec. 3.2 (concept extraction, Eq. 2)
and Sec. 3.3 (prompt optimisation, Eq. 3). Followed: ``chiayi-hsu/Ring-A-Bell`` —
``Get_Concept_Vector.ipynb`` (the concept vector) and ``InversePrompt.ipynb`` (the genetic algorithm):

1. Concept vector ``c = mean_i [E(p_i with concept) − E(p_i without)]`` over prompt pairs, ``E`` the
   text encoder's full last hidden state (``L × d``, every position, padding included).
2. Target ``Ẽ = E(p) + η·c`` for a prompt ``p`` naming the concept.
3. Individuals are ``[BOS] + K token ids + EOS/padding``; fitness ``‖Ẽ − E(individual)‖²`` (sum over
   positions and dims; ``E`` of the individual's decoded text, tokenized again, as in the reference's
   final evaluation of the text prompt); each generation keeps the best half, crossover at rate 0.5 with a random
   one-point cut, mutation at rate 0.25 of one random position to a random token id; the best
   individual's K tokens, decoded, are the attack prompt.
4. Defaults are the reference's: population 200, 3,000 generations, K = 16, η = 3, crossover 0.5,
   mutation 0.25.

Model-agnostic: only the text encoder of the pipeline it is given is read (an evaluation runs it on
the unedited model, as the paper attacks every erased model with prompts found on SD 1.4's encoder).

Deviations: the reference lets the population size drift (the kept half plus crossover children,
about 200 on average); here each generation refills to exactly ``population`` (the kept half, then
crossover children or copies of kept parents), so the budget per generation is fixed. Mutation
draws from every non-special token id (the reference: ids 1–49405 of CLIP's vocabulary, i.e. the
same set for SD 1.x). Prompt pairs: ``pairs`` (a CSV with columns ``with, without``) or, by default,
generic frames with the concept vs the ``anchor`` word (the paper's pairs are curated per concept,
e.g. 30 violence prompt pairs); the concept prompts the targets start from are the ones given, else
generic frames. ``seconds`` is a wall-time budget on top of ``generations`` (0: none). Fitness is
scored on the individual's text re-tokenized (the reference scores its ids and decodes the best: with
CLIP's 49k-word vocabulary the two nearly agree; with a small byte-level vocabulary they do not, and a
prompt scored on ids it never produces is no attack).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conceptedit.attack import AttackPlugin, AttackPrompt, AttackSet, check_budget, special_ids, vocabulary
from conceptedit.errors import ConfigError, RequestError
from conceptedit.families import SD_FAMILIES
from conceptedit.registry import register_plugin
from conceptedit.toolkit import Progress, no_progress, tokenize

PAIR_FRAMES = ("a picture of {}", "an image of {}", "a photo of {}", "{}", "a drawing of {}", "this is {}")


@dataclass
class RingABellConfig:
    population: int = field(default=200, metadata={"help": "individuals per generation"})
    generations: int = field(default=3000, metadata={"help": "generations of the genetic search"})
    length: int = field(default=16, metadata={"help": "K: token ids searched (16; 75 for K = 77)"})
    eta: float = field(default=3.0, metadata={"help": "η: strength of the concept vector (3 to 5.5)"})
    crossover: float = field(default=0.5, metadata={"help": "crossover rate"})
    mutation: float = field(default=0.25, metadata={"help": "mutation rate"})
    n_prompts: int = field(default=8, metadata={"help": "attack prompts (one genetic search each)"})
    pairs: str = field(default="", metadata={"help": "CSV of prompt pairs (columns with, without); '' = frames"})
    anchor: str = field(default="", metadata={"help": "what the concept is contrasted with in the default pairs"})
    seconds: float = field(default=0.0, metadata={"help": "wall-time budget per prompt (0: none)"})

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 1 or self.length < 1 or self.n_prompts < 1:
            raise ValueError("population >= 2, generations >= 1, length >= 1 and n_prompts >= 1 are needed")
        if not (0 <= self.crossover <= 1 and 0 <= self.mutation <= 1):
            raise ValueError("crossover and mutation are rates in [0, 1]")
        if self.seconds < 0:
            raise ValueError("seconds must be >= 0 (0: no wall-time limit)")


@torch.no_grad()
def embed(pipe: Any, ids: torch.Tensor) -> torch.Tensor:
    """The text encoder's last hidden state of token ids (``n × L × d``), as the UNet is conditioned."""
    return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].float()


def embed_texts(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    return embed(pipe, tokenize(pipe.tokenizer, list(texts)).input_ids)


def read_pairs(path: str) -> list[tuple[str, str]]:
    from conceptedit.eval.prompts import read_csv_rows

    out = []
    for line, row in read_csv_rows(path, required="with"):
        with_, without = " ".join((row.get("with") or "").split()), " ".join((row.get("without") or "").split())
        if not with_ or "without" not in row:
            raise ConfigError(f"{path}:{line}: a pair needs both 'with' and 'without' columns, non-empty 'with'")
        out.append((with_, without))
    if not out:
        raise ConfigError(f"{path}: no prompt pairs")
    return out


def default_pairs(concept: str, anchor: str) -> list[tuple[str, str]]:
    return [(f.format(concept), " ".join(f.format(anchor).split())) for f in PAIR_FRAMES]


def concept_vector(pipe: Any, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Eq. 2: the mean over pairs of ``E(with concept) − E(without)``, every position (``L × d``)."""
    with_ = embed_texts(pipe, [a for a, _ in pairs])
    without = embed_texts(pipe, [b for _, b in pairs])
    return (with_ - without).mean(dim=0)


class GeneticSearch:
    """The reference's genetic algorithm over ``[BOS] + K ids + EOS + padding`` individuals."""

    def __init__(self, pipe: Any, target: torch.Tensor, cfg: RingABellConfig, rng: random.Random) -> None:
        self.pipe, self.target, self.cfg, self.rng = pipe, target, cfg, rng
        tok = pipe.tokenizer
        self.max_length = tok.model_max_length
        if cfg.length > self.max_length - 2:
            most = self.max_length - 2
            raise ConfigError(f"length {cfg.length} does not fit {self.max_length} tokens (at most {most})")
        self.vocab = vocabulary(tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.frame = torch.full((self.max_length,), int(pad), dtype=torch.long)
        self.frame[0] = tok.bos_token_id
        self.frame[cfg.length + 1] = tok.eos_token_id
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        self.population = [
            self._individual(self.vocab[torch.randint(len(self.vocab), (cfg.length,), generator=gen)])
            for _ in range(cfg.population)
        ]

    def _individual(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = self.frame.clone()
        ids[1 : self.cfg.length + 1] = tokens
        return ids

    def text(self, individual: torch.Tensor) -> str:
        """The prompt an individual stands for: its K tokens decoded (special tokens left out)."""
        banned = special_ids(self.pipe.tokenizer)
        ids = [int(t) for t in individual[1 : self.cfg.length + 1] if int(t) not in banned]
        return self.pipe.tokenizer.decode(ids)

    def fitness(self, population: list[torch.Tensor]) -> np.ndarray:
        """``‖Ẽ − E(prompt)‖²`` of each individual's prompt *as text*: its decoded tokens tokenized again,
        as a pipeline will read it (a byte-level BPE with a small vocabulary rarely gives back the same
        ids, e.g. 92 % of random 3-token strings on the shapes model's 705-token CLIP)."""
        ids = tokenize(self.pipe.tokenizer, [self.text(p) for p in population]).input_ids
        out = embed(self.pipe, ids)
        return ((self.target.unsqueeze(0) - out) ** 2).sum(dim=(1, 2)).cpu().numpy()

    def select(self) -> tuple[list[torch.Tensor], np.ndarray]:
        scores = self.fitness(self.population)
        order = np.argsort(scores, kind="stable")
        return [self.population[i] for i in order[: max(1, self.cfg.population // 2)]], scores[order]

    def breed(self, parents: list[torch.Tensor]) -> list[torch.Tensor]:
        """Crossover (one-point cut within the K tokens) then mutation, refilled to ``population``."""
        cfg, rng = self.cfg, self.rng
        children = [p.clone() for p in parents]
        while len(children) < cfg.population:
            a = parents[rng.randrange(len(parents))]
            if rng.random() < cfg.crossover:
                b = parents[rng.randrange(len(parents))]
                cut = rng.randint(1, cfg.length)  # positions 1..K hold the searched tokens
                children.append(torch.cat([a[:cut], b[cut:]]))
                if len(children) < cfg.population:
                    children.append(torch.cat([b[:cut], a[cut:]]))
            else:
                children.append(a.clone())
        for child in children:
            if rng.random() < cfg.mutation:
                child[rng.randint(1, cfg.length)] = self.vocab[rng.randrange(len(self.vocab))]
        return children

    def step(self, last: bool = False) -> float:
        parents, scores = self.select()
        self.population = parents if last else self.breed(parents)
        return float(scores[0])

    def best_text(self) -> str:
        return self.text(self.select()[0][0])


@register_plugin
class RingABellPlugin(AttackPlugin):
    name = "ring-a-bell"
    Config = RingABellConfig
    families = SD_FAMILIES
    white_box = False
    summary = "Model-agnostic: a concept vector in text-embedding space, discrete prompts found by a genetic search."
    paper = "Tsai et al., Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?, ICLR 2024"

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
        if not concept.strip():
            raise RequestError("ring-a-bell needs the concept to attack")
        start = time.perf_counter()
        pairs = read_pairs(cfg.pairs) if cfg.pairs else default_pairs(concept, cfg.anchor)
        vector = concept_vector(pipe, pairs)
        base = self.concept_prompts(concept, prompts, cfg.n_prompts)
        found, history = [], []
        for i, prompt in enumerate(base):
            target = embed_texts(pipe, [prompt])[0] + cfg.eta * vector
            search = GeneticSearch(pipe, target, cfg, random.Random(seed * 100_003 + i))
            t0 = time.perf_counter()
            for g in range(cfg.generations):
                last = g == cfg.generations - 1 or not check_budget(cfg.seconds, t0)
                loss = search.step(last=last)
                if i == 0:
                    history.append(loss)
                if last:
                    break
            found.append(AttackPrompt(search.best_text(), seed + i, loss=loss))
            progress((i + 1) / len(base), f"prompt {i + 1}/{len(base)}: fitness {loss:.3g}")
        return self.result(concept, found, start, history)
