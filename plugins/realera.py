"""``realera``: RealEra — semantic-level concept erasure by neighbour-concept mining.

Liu, An, Zhang, Li, Wu, Gu, Lin, Wang, "RealEra: Semantic-level Concept Erasure via Neighbor-Concept
Mining", arXiv 2410.09140 (2024). No public code. The method section (Sec. 3) could not be read from
this machine: only the abstract, the project page's overview figure caption and a summary quoting the
mining constraints were found. The structure below follows those; every number and every detail they
leave open is a choice made here, listed under "Choices" and measured in ``benchmarks/realera_residue.py``.

What the paper says (method overview) and what is implemented:

1. **Neighbour-concept mining.** The erased concept's embedding ``e`` is perturbed with random ``η``;
   ``e + η`` is kept when ``d(e, e + η) ≤ D₁`` and ``cos(e, e + η) ∈ [S₁, S₂]``; the kept neighbours are
   erased together with ``e`` (:func:`_realera_stages.mine_neighbours`).
2. **Beyond-concept regularisation.** Embeddings outside the neighbourhood keep their mapping, so
   "irrelevant concepts maintain their spatial position" (their keys, hence their cross-attention
   maps, and their values are unchanged) (:func:`_realera_stages.beyond_from_pool`).
3. **Closed-form cross-attention alignment** of the UNet (UCE/MACE-style): every ``attn2.to_k`` /
   ``attn2.to_v`` maps the concept and its neighbours to the anchor's key/value and the beyond-concept
   samples (and the request's preserved concepts) to their old outputs:
   ``min_W Σ w_i‖W k_i − W_old s_i‖² + λ‖W − W_old‖²``, solved by the shared ridge solver
   (:func:`conceptedit.sparsity.ridge.weighted_ridge_edit`, the one UCE uses).
4. **Prediction-noise alignment with a LoRA** (peft) on the closed-form-edited UNet:
   ``ε_θ(x_t, c[e → e+η], t) → ε_orig(x_t, c_anchor, t)`` for the concept and its neighbours, and
   ``ε_θ(x_t, a[e → e+ξ], t) → ε_orig(x_t, a[e → e+ξ], t)`` for beyond-concept samples ``ξ`` placed in the
   anchor prompt's sequence ``a`` (a context without the concept: see the function's docstring)
   (:func:`_realera_stages.noise_alignment_lora`).
5. The artifact is the closed-form weight delta plus the LoRA factors (:class:`RealEraEdit`): the LoRA
   file is ``pytorch_lora_weights.safetensors`` in the diffusers layout (``load_lora_weights`` reads it; it
   is the LoRA stage alone, trained on top of the delta, which ``weights.safetensors`` holds). Applying
   adds the delta, then merges the LoRA; removal restores every weight bit for bit.

Choices (the paper's values were not found; each is a config field):

- Embedding: the text encoder's output row of the concept prompt's last word token (the key
  ``attn2.to_k``/``to_v`` read; UCE's choice), so mining perturbs exactly what the edit maps. Distances are
  relative: ``‖η‖ ≤ D₁·‖e‖`` (scale-free across text encoders).
- Keys of the closed form (``keys``). The paper names a closed form for cross-attention alignment plus a
  LoRA, MACE's two stages (Lu et al., CVPR 2024), but which rows it keys was not found. The two references
  differ: UCE's current script keys the bare word's row (its paper-time ``train_erase.py`` the rows from the
  word through the padding); MACE's closed form (``src/cfr_utils.py``: ``prepare_k_v``,
  ``find_matching_indices``) keys sentences naming the concept and maps every row it shares with the sentence
  with the anchor substituted (the prefix, and the rows after the concept through the padding, aligned from the
  end) to that sentence's row. ``keys: context`` (default) is MACE's applied to RealEra: in each keyed sentence
  the concept's row maps to the anchor sentence's row (:func:`_realera_context.concept_span`: for ``""``, the
  last row before the concept, as UCE maps the bare word to BOS), each row after it to the same row of the
  anchor sentence (weight ``context_scale`` each, MACE's 1), the prefix is kept, the beyond-concept words are
  put in the same frames (:func:`_realera_context.spliced_contexts`) and kept row for row, and neighbours are
  mined around the concept's own row only (mined around every row, 16 × 160 of them acted as an isotropic
  shrink of W, ``E‖W(e+η) − Wa‖² = ‖We − Wa‖² + E‖Wη‖²``: zorblax in-domain retain 0.50, cross-domain 0.64).
  Why: CLIP's encoder is causal, so in a sentence the concept also reaches the UNet through every row after it
  (EOS and padding repeat the last content), which a key on the word's row alone does not reach: ``keys: word``
  (UCE's; the default until Dec 4) cannot erase a shape on shapes v2 (circle 0.95 → 0.95).
- Keyed sentences. MACE writes prompts with the concept in context; here they are the six generic
  :data:`CONTEXT_TEMPLATES` plus ``context_from_corpus = 64`` captions of the model's caption corpus that name the
  concept once (the shapes model ships one, ``prompts.txt``; ``corpus`` points at a user's caption file; a
  model with neither keys the templates alone), the anchor put in the concept's place
  (:func:`_realera_context.corpus_contexts`). With ``keys: word`` the captions are keyed at the word's row only;
  UCE's key, the bare word's row alone, is ``keys: word`` with ``context_from_corpus: 0``. The same idea as
  ItD's ``target_from_corpus``. Measured why
  (closed form only, n = 20 per set, erased / residue / in-domain / cross-domain): templates alone, circle
  0.35 / 0.30 / 1.00 / 0.92 and the halo only 0.45 / 0.50 (its other words); + 16 corpus captions, the
  halo 0.00 / 0.00; + 64, circle 0.15 / 0.30 / 0.90 / 0.89 (+ 32: 0.25 / 0.30; + 128 at n = 30, seed 1:
  0.27 / 0.17 vs 64's 0.27 / 0.23). The rows of a shape's sentences after the word are the world's words
  ("on a blue background"); the templates' generic words are byte pieces in this 700-token BPE.
- Mining in the input token-embedding space instead (each neighbour encoded in every sentence, so it reaches
  the rows after the concept too) was measured and not adopted: circle 0.25 / 0.35 at 16 neighbours (0.15 /
  0.35 in the output space), zorblax in-domain 0.90 / 0.75 at 16 / 64 neighbours (1.00 in the output space).
  More output-space neighbours do not lower the residue either (32 / 64 / 128: circle residue 0.25 each).
- η: direction uniform on the sphere, radius uniform in ``[0, D₁‖e‖]``, rejection-sampled until
  ``n_neighbours`` pass (seeded). Defaults ``n_neighbours = 16``, ``D₁ = 0.75``, ``[S₁, S₂] = [0.8, 0.95]``:
  a random high-dimensional η is almost orthogonal to ``e``, so ``cos ≈ 1/√(1 + (‖η‖/‖e‖)²)``; the band keeps
  ``‖η‖/‖e‖`` in about ``[0.33, 0.75]``, i.e. neither copies of ``e`` (cos > 0.95) nor far points, and ``D₁``
  binds where ``S₁`` does.
- Beyond-concept samples (``beyond: vocabulary``, default): the text encoder's outputs for
  ``beyond_pool = 512`` random vocabulary tokens (as one-word prompts), of which ``n_beyond = 64`` outside the
  neighbourhood (``cos < S₁`` or ``‖x − e‖ > D₁‖e‖``) are drawn: real "irrelevant concepts". The literal
  reading, perturbations of ``e`` itself outside the band (``beyond: perturbation``: ``cos < S₁``,
  ``‖ξ‖ ≤ D₂‖e‖``, ``D₂ = 1.5``), is offered but not the default: measured on random 32- and 128-dimensional
  problems, fresh samples of that kind changed their outputs as much as the concept did (relative change
  1.06 vs 1.04 at d = 32), because every such sample contains ``e`` and a linear map cannot treat ``e + η``
  and ``e + ξ`` differently; vocabulary samples are kept (``tests/test_realera.py`` checks held-out words
  outside the neighbourhood move < 1/4 as much as held-out neighbours). The request's ``preserve``
  concepts are kept as well (as UCE).
- Anchor: ``""`` (the unconditional embedding; UCE's default for objects). Weights: the concept
  ``erase_scale = 1``; the neighbours share ``neighbour_scale = 1`` and the beyond-concept samples share
  ``regularisation_scale = 1`` (so mining and the regulariser weigh like one more concept each, whatever
  their number); ``λ = 0.5`` and ``to_k`` + ``to_v`` as UCE's reference.
- LoRA stage: rank 4, alpha = rank, on the ``attn2`` key/value projections (``lora_modules: attn2`` adds
  ``to_q``/``to_out``), 100 Adam steps at lr 1e-3, regulariser weight 1; ``x_t`` noises the base model's
  own latents of the concept prompt (``n_images = 4``, the model's generation settings) to a uniform
  random training timestep; each step uses the concept itself or one of its neighbours (uniformly), and
  one beyond-concept sample.
- Each target erased with the bare concept prompt (``keys: word``) or the context templates; ``expand_prompts``
  adds UCE's five templates ("image of {}", ...), with the anchor put in the same template.

Measured on the shipped shapes v2.1 (Dec 5, the same command and prompts as the v2 figures below, 1 thread;
erased / held-out / residue / held-out residue / in-domain / cross-domain, n = 20 per set, cross-domain 38-64):

- the halo (as "glowing", chance 0.5): 0.00 / 0.15 / 0.05 / 0.05, cross-domain 0.89 (base 0.88, UCE 0.93,
  which also leaves no residue: 0.10 / 0.00 / 0.00 / 0.05);
- zorblax (chance 0.17): 0 / 0 / 0 / 0, in-domain 1.00 (UCE 1.00), cross-domain 0.88 (UCE 0.88, base 0.92);
- circle (chance 0.12): 0.20 / 0.10 / **0.15 / 0.20** / 0.85 / 0.87 (base 0.87); UCE erases nothing (1.00 /
  0.90 / 1.00 / 0.85, in-domain 1.00, cross-domain 0.95); ``token: all`` 0.30 / 0.25 / 0.30 / 0.35. So the
  residue through "disc" is now under chance + 0.10 = 0.22 where UCE leaves 1.00; the in-domain retain is 15
  points under UCE's, which erases nothing. Prompt seed 1 (``--seed 1 --runs realera,uce``): circle 0.10 /
  0.10 / 0.30 / 0.00, in-domain 0.90, cross-domain 0.90 (UCE 0.88); the halo 0.15 / 0.00 / 0.05 / 0.05,
  cross-domain 0.89 (UCE 0.91); zorblax 0 / 0 / 0 / 0 and retain equal to UCE's. Over both seeds circle's
  residue is 13 of 80 (0.16 [0.10, 0.26]); through the training frames alone 9 of 40 (0.225). Prompt seed 2 at
  n = 40 (``--concepts circle --runs realera,uce --n 40 --seed 2``, Dec 5): 0.10 / 0.10 / 0.20 / 0.23, in-domain
  0.88 (35/40; UCE 1.00), cross-domain 0.88 (UCE 0.85). The in-domain loss is one shape: crosses drawn as stars
  (3 of 7 cross prompts in a re-fit, square → crescent once). Choosing the beyond-concept words nearest to the
  concept instead of at random (the other shapes) changed none of those images, so the loss does not come from
  which words are kept; in this CLIP "cross"'s one-word row has cosine 0.97 with "circle"'s (inside the band, so
  excluded) though in 60 of the 70 keyed sentences it lies outside it. Weighing the beyond-concept terms 10×
  (``--runs r10:realera --set r10.regularisation_scale=10``, same prompts) buys in-domain 0.93 at the cost of the
  erasure (0.25 / 0.10) and the residue (0.30 / 0.25, over chance + 0.10), so the default stays 1.
- ablations, circle: no mining 0.20 / 0.10 / 0.25 / 0.15; no beyond-concept terms 0.05 / 0.05 / 0.20 / 0.15,
  in-domain 0.80 (zorblax: in-domain 0.10, cross-domain 0.45); no LoRA the same as with it; templates only
  0.20 / 0.25 / 0.20 / 0.20; ``keys: word`` 1.00 / 0.85 / 1.00 / 0.95. Fit 21-37 s.

Measured on shapes v2 (``python benchmarks/realera_residue.py --n 20 --threads 2 --runs realera,realera-no-mining,
realera-no-reg,realera-no-lora,realera-templates,realera-word,uce,uce-all``, Dec 4, idle 2-core machine; n = 20 per
set, prompt seed 0; erased / erased on held-out frames / residue through the other words / the same on held-out
frames / in-domain retain / cross-domain retain):

- default (context keys, templates + 64 corpus captions): the halo (erased as "glowing") 0 / 0 / 0 / 0, cross-domain
  0.89 (base 0.89, UCE 0.93); zorblax 0 / 0 / 0 / 0, in-domain 1.00 (UCE 0.75), cross-domain 0.89 (UCE 0.92);
  circle 0.15 / 0.10 / 0.30 / 0.25 (chance 0.12), in-domain 0.90, cross-domain 0.89 (UCE 0.87). Fit 29-35 s
  (mining and the framed beyond-concept words 6-7 s, closed form 0.8-0.9 s, concept latents 4-5 s, LoRA 100 steps
  17-25 s).
- UCE with its default keys (the last token) does not erase circle (1.00 / 0.90 / 1.00 / 0.90); with its
  paper-time keys (``token: all``) 0.20 / 0.35 / 0.40 / 0.40, in-domain 0.85, cross-domain 0.84. Where UCE erases
  with its default keys (halo, zorblax) it leaves no residue: v2's aliases are close in its CLIP space (the rows of
  "a red disc on a blue background" have cosine 0.995 with those of "a red circle …").
- Ablations (circle): without mining 0.35 / 0.20 / 0.45 / 0.20; without the beyond-concept terms 0.10 / 0.10 /
  0.35 / 0.15 but in-domain 0.55 (zorblax: in-domain 0.20, cross-domain 0.41); without the LoRA stage the same as
  with it (300 LoRA steps: 0.15 / 0.10 / 0.35 / 0.25, the same: after the closed form it has little left to
  align); templates only 0.35 / 0.20 / 0.30 / 0.15 (the halo 0.40 / 0.30 / 0.50 / 0.40); ``keys: word`` 0.95 /
  0.95 / 1.00 / 0.95.
- Residue through "disc" stays above chance + 0.10 (0.30 [0.15, 0.52]; at n = 30, prompt seed 1, closed form:
  0.23); more neighbours (32-128) or mining in the input space do not lower it (above). Weighing 64 neighbours
  more does, at the cost of retain, the isotropic shrink again (closed form, n = 20): ``neighbour_scale`` 3 / 10
  gives circle residue 0.20 / 0.20 (held-out 0.15 / 0.05) but zorblax in-domain 0.75 / 0.70 (1.00 at 1), so the
  default stays 1.

SDXL: the embedding ``e`` is the concept token's row of the 2048-d context every ``attn2`` reads (both text
encoders' penultimate states concatenated, as ``encode_prompt`` gives the UNet), so mining, the vocabulary
pool (both encoders' rows of each word; their tokenizers share a vocabulary) and the closed form work in
that space; the LoRA stage conditions the UNet with each prompt's own pooled embedding and time ids (the
student sees the concept prompt's, the target the anchor prompt's). The pooled embedding itself is not
perturbed or edited (it enters the time embedding, not cross-attention).

Deviations: float64 solve; the LoRA stage trains float32 copies of only the layers it touches, whatever the
pipeline's dtype, swapped into the pipeline's UNet whose other layers compute in its own dtype
(``_realera_stages.lora_student``; a whole float32 UNet copy was 9.6 GiB on SDXL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from conceptedit.conditioning import text_encoders
from conceptedit.edits import Edit, LoRAEdit, WeightDeltaEdit, lora_tensors_from_peft
from conceptedit.edits.base import Undo
from conceptedit.edits.lora import LORA_FILE
from conceptedit.errors import ArtifactError, RequestError
from conceptedit.families import SD_FAMILIES, SDXL
from conceptedit.generation import generation_settings
from conceptedit.plugin import Plugin, Request
from conceptedit.plugins._realera_context import (
    concept_condition,
    concept_span,
    corpus_contexts,
    pool_indices,
    spliced_contexts,
    vocabulary_embeddings,
)
from conceptedit.plugins._realera_stages import (
    AlignmentProblem,
    NoiseAlignmentData,
    alignment_problem,
    beyond_from_pool,
    lora_student,
    mine_neighbours,
    noise_alignment_lora,
    sample_beyond,
)
from conceptedit.plugins._training import linear_module_names
from conceptedit.plugins.uce import OBJECT_TEMPLATES, cross_attention_projections, same_shape_chunks
from conceptedit.registry import register_plugin
from conceptedit.sparsity.ridge import weighted_ridge_edit
from conceptedit.toolkit import Progress, no_progress

DELTA_FILE = "weights.safetensors"
_LORA_ENDS = (".lora_A.weight", ".lora_B.weight")
# Sentences the in-context keys are read from (``keys: context``). Written for this plugin, generic (no
# world's words), with words after the concept as well as before it, and none of them a frame of the shapes
# benchmark (``WORLD.train_templates`` / ``heldout_templates``) except the bare concept, UCE's own key prompt.
CONTEXT_TEMPLATES = (
    "{}",
    "a view of {}",
    "{} in the middle of the scene",
    "a close-up of {} with soft light",
    "a scene with {} and nothing else",
    "an example of {}, seen from the front",
)


@dataclass
class RealEraConfig:
    anchor: str = field(default="", metadata={"help": "concept the erased neighbourhood maps to ('' = unconditional)"})
    keys: Literal["word", "context"] = field(
        default="context",
        metadata={
            "help": "closed-form keys: the concept's row and every row after it in template sentences, each mapped "
            "to the same row of the sentence with the anchor substituted (MACE's), or the bare word's row (UCE's)"
        },
    )
    n_neighbours: int = field(
        default=16, metadata={"min": 0, "help": "mined neighbours per concept prompt (0 = no mining)"}
    )
    max_distance: float = field(default=0.75, metadata={"help": "D₁: ‖η‖ ≤ D₁·‖e‖ for a neighbour e+η"})
    min_cos: float = field(default=0.8, metadata={"help": "S₁: lowest cos(e, e+η) of a neighbour"})
    max_cos: float = field(default=0.95, metadata={"help": "S₂: highest cos(e, e+η) of a neighbour"})
    beyond: Literal["vocabulary", "perturbation"] = field(
        default="vocabulary",
        metadata={"help": "beyond-concept samples: vocabulary words outside the neighbourhood, or perturbations of e"},
    )
    n_beyond: int = field(
        default=64, metadata={"min": 0, "help": "beyond-concept samples per concept prompt (0 = none)"}
    )
    beyond_pool: int = field(default=512, metadata={"min": 1, "help": "vocabulary words encoded to draw them from"})
    beyond_max_distance: float = field(default=1.5, metadata={"help": "D₂: ‖ξ‖ ≤ D₂·‖e‖ (beyond=perturbation)"})
    context_from_corpus: int = field(
        default=64,
        metadata={
            "min": 0,
            "help": "also key up to this many captions of the prompt corpus that name the concept once (MACE's "
            "concept-in-context prompts from the model's caption distribution; used when the model ships a corpus or "
            "corpus is set; with keys: word, their word rows only; 0 = templates only, or with keys: word UCE's bare "
            "word)",
        },
    )
    corpus: str | None = field(
        default=None, metadata={"help": "caption file for context_from_corpus (default: the model's shipped corpus)"}
    )
    context_scale: float = field(
        default=1.0,
        metadata={"help": "keys: context: weight of each row after the concept's, relative to the concept's (MACE: 1)"},
    )
    erase_scale: float = field(default=1.0, metadata={"help": "weight of the concept's own term"})
    neighbour_scale: float = field(default=1.0, metadata={"help": "total weight of the mined neighbours"})
    regularisation_scale: float = field(default=1.0, metadata={"help": "total weight of the beyond-concept samples"})
    preserve_scale: float = field(default=1.0, metadata={"help": "weight of each preserved concept"})
    lamb: float = field(default=0.5, metadata={"help": "λ: pull towards the original weights"})
    with_to_k: bool = field(default=True, metadata={"help": "edit to_k as well as to_v (closed form)"})
    closed_form: bool = field(default=True, metadata={"help": "run the closed-form cross-attention alignment"})
    expand_prompts: bool = field(default=False, metadata={"help": "add UCE's 5 templates per concept"})
    lora_steps: int = field(default=100, metadata={"min": 0, "help": "LoRA noise-alignment steps (0 = no LoRA stage)"})
    lora_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the LoRA stage"})
    lora_rank: int = field(default=4, metadata={"min": 1, "help": "LoRA rank"})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha (default: the rank)"})
    lora_modules: Literal["kv", "attn2"] = field(
        default="kv", metadata={"help": "attn2 to_k/to_v, or every attn2 layer"}
    )
    lora_regularisation: float = field(default=1.0, metadata={"help": "weight of the beyond-concept noise term"})
    n_images: int = field(
        default=4, metadata={"min": 1, "help": "base-model images of the concept noised for the LoRA"}
    )
    seed: int = field(default=0, metadata={"help": "seeds mining, sampling, images and LoRA init"})

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_cos <= self.max_cos <= 1.0:
            raise ValueError(f"need -1 <= min_cos <= max_cos <= 1, got min_cos={self.min_cos}, max_cos={self.max_cos}")
        if self.max_distance <= 0 or self.beyond_max_distance <= 0:
            raise ValueError("max_distance and beyond_max_distance must be > 0")
        if self.n_neighbours < 0 or self.n_beyond < 0 or self.lora_steps < 0:
            raise ValueError("n_neighbours, n_beyond and lora_steps must be >= 0")
        if self.lora_rank < 1 or self.n_images < 1 or self.beyond_pool < 1:
            raise ValueError("lora_rank, n_images and beyond_pool must be >= 1")
        scales = (self.erase_scale, self.neighbour_scale, self.regularisation_scale, self.preserve_scale)
        if self.lamb < 0 or min(scales) < 0 or self.lora_regularisation < 0:
            raise ValueError("lamb, the *_scale weights and lora_regularisation must be >= 0")
        if self.lora_lr <= 0 or (self.lora_alpha is not None and self.lora_alpha <= 0):
            raise ValueError("lora_lr and lora_alpha must be > 0")
        if not self.closed_form and self.lora_steps == 0:
            raise ValueError("closed_form is off and lora_steps is 0: nothing would be edited")


def _is_lora_key(key: str) -> bool:
    return key.endswith(_LORA_ENDS)


class RealEraEdit(Edit):
    """The closed-form weight delta (``weights.safetensors``) and the LoRA factors trained on top of it
    (``pytorch_lora_weights.safetensors``, diffusers layout). Applying adds the delta, then merges the
    LoRA; removal undoes both in reverse, restoring every weight bit for bit."""

    edit_type = "realera"
    artifact_kind = "weight_delta"

    def validate(self) -> None:
        if not self.tensors:
            raise ArtifactError("a realera edit needs a weight delta, LoRA factors or both")
        lora = {k: v for k, v in self.tensors.items() if _is_lora_key(k)}
        delta = {k: v for k, v in self.tensors.items() if not _is_lora_key(k)}
        self.delta = WeightDeltaEdit(self.manifest, delta)
        self.lora = LoRAEdit(self.manifest, lora) if lora else None

    def touched_components(self) -> set[str]:
        parts = self.delta.touched_components()
        return parts | (self.lora.touched_components() if self.lora else set())

    def _attach(self, pipe: Any) -> Undo:
        undo_delta = self.delta._attach(pipe)
        try:
            undo_lora = self.lora._attach(pipe) if self.lora else None
        except Exception:
            undo_delta()
            raise

        def undo() -> None:
            if undo_lora:
                undo_lora()
            undo_delta()

        return undo

    def _write_tensors(self, folder: Path) -> list[str]:
        files = []
        for name, part in ((DELTA_FILE, self.delta.tensors), (LORA_FILE, self.lora.tensors if self.lora else {})):
            if part:
                save_file({k: v.detach().contiguous().cpu() for k, v in part.items()}, str(folder / name))
                files.append(name)
        return files


@torch.no_grad()
def concept_latents(pipe: Any, prompt: str, n: int, seed: int) -> torch.Tensor:
    """Clean latents of ``n`` base-model generations of ``prompt`` (the model's generation settings)."""
    settings = generation_settings(pipe)
    gen = torch.Generator("cpu").manual_seed(seed)
    kwargs = {k: settings[k] for k in ("num_inference_steps", "guidance_scale", "height", "width") if k in settings}
    out = pipe([prompt] * n, generator=gen, output_type="latent", **kwargs)
    return out.images.float().cpu()


@register_plugin
class RealEraPlugin(Plugin):
    name = "realera"
    kind = "erase"
    Config = RealEraConfig
    families = (*SD_FAMILIES, SDXL)
    artifact_kind = "weight_delta"
    summary = (
        "Erase a concept and its mined neighbourhood (random perturbations of its embedding): closed-form "
        "cross-attention alignment + a LoRA for noise alignment, with beyond-concept regularisation."
    )
    paper = "Liu et al., RealEra: Semantic-level Concept Erasure via Neighbor-Concept Mining, arXiv 2410.09140"

    def prompts(self, word: str) -> list[str]:
        """The concept prompts (or, with the anchor as ``word``, their anchor prompts): the bare word, or the
        context templates (``keys: context``); plus UCE's five templates with ``expand_prompts``."""
        templates = list(CONTEXT_TEMPLATES) if self.config.keys == "context" else ["{}"]
        if self.config.expand_prompts:
            templates += OBJECT_TEMPLATES
        return [" ".join(t.format(word).split()) for t in templates]

    def caption_corpus(self, pipe: Any) -> list[str]:
        """The captions ``context_from_corpus`` draws from: ``corpus``, else the model's shipped corpus, else none
        (a hub checkpoint: the templates alone are keyed)."""
        if not self.config.context_from_corpus:
            return []
        from conceptedit.loading import model_file
        from conceptedit.toolkit import read_prompts

        source = self.config.corpus or model_file(pipe, "prompt_corpus")
        return read_prompts(source) if source else []

    def concept_pairs(self, word: str, corpus: list[str]) -> list[tuple[str, str]]:
        """(concept prompt, anchor prompt) pairs keyed for ``word``: :meth:`prompts` with the word and with the
        anchor, then up to ``context_from_corpus`` captions of ``corpus`` naming the word, the anchor in its place."""
        pairs = list(zip(self.prompts(word), self.prompts(self.config.anchor), strict=True))
        if corpus:
            gen = torch.Generator("cpu").manual_seed(self.config.seed)
            pairs += corpus_contexts(corpus, word, self.config.anchor, self.config.context_from_corpus, gen)
        return pairs

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> RealEraEdit:
        self.check_pipeline(pipe)
        cfg = self.config
        if cfg.anchor.strip().casefold() in {t.casefold() for t in request.targets}:
            raise RequestError(f"the anchor concept {cfg.anchor!r} is also a target")
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        progress(0.0, "mining neighbours")
        gen = torch.Generator("cpu").manual_seed(cfg.seed)
        tokenizer = text_encoders(pipe)[0][2]
        context = cfg.keys == "context"
        regularise = cfg.n_beyond > 0 and (cfg.regularisation_scale > 0 or cfg.lora_regularisation > 0)
        pool, pool_ids = (
            vocabulary_embeddings(pipe, cfg.beyond_pool, gen)
            if regularise and cfg.beyond == "vocabulary"
            else (None, None)
        )
        # per concept prompt (LoRA stage): its conditioning, concept row, anchor conditioning, neighbours and
        # beyond-concept samples of the concept row
        prompts, sequences, rows, anchor_seqs, lora_neighbours, lora_beyond = ([] for _ in range(6))
        # the closed form's terms, one part per concept sentence: the concept's row (its neighbours, its
        # beyond-concept samples) and, in context, the rows after it sharing ``context_scale``
        parts: list[AlignmentProblem] = []
        n_keys, n_mined, n_beyond = 0, 0, 0

        def add_part(
            rows_: list, nbs: list, anchors_: list, bcs: list, kept_: torch.Tensor | None, share: float
        ) -> None:
            parts.append(
                alignment_problem(
                    rows_,
                    nbs,
                    anchors_,
                    bcs,
                    kept_,
                    cfg.erase_scale * share,
                    cfg.neighbour_scale * share,
                    cfg.regularisation_scale * share,
                    cfg.preserve_scale * share,
                )  # fmt: skip
            )

        corpus = self.caption_corpus(pipe)  # read once for every target
        for target in request.targets:
            for prompt, anchor_prompt in self.concept_pairs(target, corpus):
                seq = concept_condition(pipe, prompt)[0]
                aseq = concept_condition(pipe, anchor_prompt)[0]
                prefix, c_end, a_end = concept_span(tokenizer, prompt, anchor_prompt)
                emb, aemb = seq.embeds[0].double(), aseq.embeds[0].double()
                if c_end >= len(emb) or a_end >= len(aemb):
                    raise RequestError(f"{prompt!r} is longer than the text encoder reads: the concept is cut off")
                e = emb[c_end]
                n_rows = min(len(emb) - c_end, len(aemb) - a_end) if context else 1
                n = cfg.n_beyond if regularise else 0
                if pool is not None:
                    chosen = beyond_from_pool(e, pool, cfg.n_beyond, cfg.max_distance, cfg.min_cos, gen)
                    if context:  # the same words in this sentence frame, row for row after the concept's
                        idx = pool_indices(pool, chosen)
                        framed = spliced_contexts(pipe, prompt, prefix, c_end, pool_ids[idx])[:, prefix:]
                else:
                    chosen = sample_beyond(e, n, cfg.min_cos, cfg.beyond_max_distance, gen)
                # mined around the concept's own row only (the paper perturbs the concept's embedding); mined
                # around every row after it too, the neighbours (weight 1 per row, 160 rows on shapes v2) acted
                # as an isotropic shrink of W (E‖W(e+η) − Wa‖² = ‖We − Wa‖² + E‖Wη‖²) and cost retain (zorblax,
                # n = 20: in-domain 0.50 vs 1.00 without mining, cross-domain 0.64 vs 0.88)
                nb = mine_neighbours(e, cfg.n_neighbours, cfg.max_distance, cfg.min_cos, cfg.max_cos, gen)
                first_beyond = framed[:, 0] if context and pool is not None else chosen
                add_part([e], [nb], [aemb[a_end]], [first_beyond], None, 1.0)
                n_keys, n_mined, n_beyond = n_keys + 1, n_mined + len(nb), n_beyond + len(first_beyond)
                if context:
                    after = range(1, n_rows)
                    bcs = [
                        framed[:, r] if pool is not None else sample_beyond(emb[c_end + r], n, cfg.min_cos,
                                                                              cfg.beyond_max_distance, gen)
                        for r in after
                    ]  # fmt: skip
                    empty = torch.zeros(0, e.numel(), dtype=torch.float64)
                    for r, bc in zip(after, bcs, strict=True):  # each row weighs as the concept's (MACE's)
                        add_part([emb[c_end + r]], [empty], [aemb[a_end + r]], [bc], None, cfg.context_scale)
                    if prefix:  # the sentence before the concept (the same with the anchor): kept, each row
                        add_part([], [], [], [], emb[:prefix], cfg.context_scale)
                    n_keys, n_beyond = n_keys + len(bcs), n_beyond + sum(len(b) for b in bcs)
                prompts.append(prompt)
                sequences.append(seq)
                rows.append(c_end)
                anchor_seqs.append(aseq)
                lora_neighbours.append(nb)
                lora_beyond.append(chosen)
        for p in request.preserve:  # preserved concepts: their row (in context: and the rows after it) kept
            for prompt, anchor_prompt in zip(self.prompts(p), self.prompts(cfg.anchor), strict=True):
                emb = concept_condition(pipe, prompt)[0].embeds[0].double()
                c_end = concept_span(tokenizer, prompt, anchor_prompt)[1]
                add_part([], [], [], [], emb[c_end : c_end + 1], 1.0)
                if context and c_end + 1 < len(emb):
                    add_part([], [], [], [], emb[c_end + 1 :], cfg.context_scale)
        seconds["mining"] = time.perf_counter() - start

        deltas: dict[str, torch.Tensor] = {}
        if cfg.closed_form:
            t0 = time.perf_counter()
            progress(0.1, "closed-form cross-attention alignment")
            problem = AlignmentProblem(
                *(torch.cat([getattr(p, f) for p in parts]) for f in ("keys", "sources", "weights"))
            )
            deltas = self._closed_form(pipe.unet, problem)
            seconds["closed_form"] = time.perf_counter() - t0

        lora: dict[str, torch.Tensor] = {}
        losses: list[float] = []
        if cfg.lora_steps:
            t0 = time.perf_counter()
            progress(0.15, "LoRA stage: generating concept latents")
            data = NoiseAlignmentData(sequences, rows, anchor_seqs, lora_neighbours, lora_beyond, torch.empty(0))
            lora, losses, seconds["lora_latents"] = self._lora_stage(pipe, deltas, data, prompts, gen, progress)
            seconds["lora"] = time.perf_counter() - t0 - seconds["lora_latents"]

        manifest = self.manifest(
            "realera",
            "weight_delta",
            request,
            erase_prompts=prompts,
            n_keys=n_keys,
            n_neighbours_mined=n_mined,
            n_beyond_sampled=n_beyond,
            lora_loss_first=losses[0] if losses else None,
            lora_loss_last=losses[-1] if losses else None,
            stage_seconds={k: round(v, 3) for k, v in seconds.items()},
            fit_seconds=round(time.perf_counter() - start, 3),
        )
        progress(1.0, "done")
        return self.finish(RealEraEdit(manifest, {**deltas, **lora}), pipe, ["unet"])

    def _closed_form(self, unet: torch.nn.Module, problem: Any) -> dict[str, torch.Tensor]:
        """Every attn2 to_k/to_v solved with the shared ridge solver; same-shape layers batched in chunks (UCE's)."""
        names = cross_attention_projections(unet, self.config.with_to_k)
        modules = [unet.get_submodule(n) for n in names]
        deltas = {}
        for idx in same_shape_chunks(modules):
            W_old = torch.stack([modules[i].weight.detach().float().cpu() for i in idx])
            W_new = weighted_ridge_edit(
                W_old, problem.keys, None, problem.weights, self.config.lamb, sources=problem.sources
            )
            for j, i in enumerate(idx):
                deltas[f"unet.{names[i]}.weight"] = W_new[j] - W_old[j]
        return deltas

    def _lora_stage(
        self,
        pipe: Any,
        deltas: dict[str, torch.Tensor],
        data: NoiseAlignmentData,
        prompts: list[str],
        gen: torch.Generator,
        progress: Progress,
    ) -> tuple[dict[str, torch.Tensor], list[float], float]:
        """LoRA factors trained on the UNet with the closed-form delta added (float32 copies of only the layers
        they touch, :func:`lora_student`), the losses, and the seconds spent generating the concept latents."""
        from diffusers import DDPMScheduler

        cfg = self.config
        device = pipe.unet.device
        # n_images in all, from prompts spread over the keyed sentences (each step draws any latent: they are the
        # concept's images, not one sentence's); one image per sentence of 70 took 60-80 s on the shapes model
        k = min(cfg.n_images, len(prompts))
        per = -(-cfg.n_images // k)
        chosen = [prompts[i * len(prompts) // k] for i in range(k)]
        t0 = time.perf_counter()
        data.latents = torch.cat([concept_latents(pipe, p, per, cfg.seed + i) for i, p in enumerate(chosen)])
        latent_seconds = time.perf_counter() - t0
        data.sequences = [s.to(device) for s in data.sequences]  # Conditioning: context (+ SDXL pooled, time ids)
        data.anchor_sequences = [s.to(device) for s in data.anchor_sequences]
        if cfg.lora_modules == "kv":
            names = cross_attention_projections(pipe.unet, True)
        else:
            names = linear_module_names(pipe.unet, lambda n: "attn2" in n)
        # W + Δ + BA on float32 copies of only those layers (+ the delta's), swapped into the pipeline's UNet
        student, trainable = lora_student(pipe.unet, deltas, names, cfg.lora_rank, cfg.lora_alpha, cfg.seed)
        # add_noise only: DDPM's forward process is the training-time x_t every scheduler's UNet expects
        # (an Euler-type copy would index the pipeline's last inference schedule instead)
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

        def report(step: int, loss: float) -> None:
            progress(0.2 + 0.8 * (step + 1) / cfg.lora_steps, f"LoRA step {step + 1}/{cfg.lora_steps}, loss {loss:.4f}")

        losses = noise_alignment_lora(
            pipe.unet, pipe.unet, scheduler, data, trainable.parameters, cfg.lora_steps, cfg.lora_lr,
            cfg.lora_regularisation, gen, report, student_context=student,
        )  # fmt: skip
        return lora_tensors_from_peft(trainable.model, "unet"), losses, latent_seconds
