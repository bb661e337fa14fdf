"""``itd``: Interpret then Deactivate — a sparse autoencoder on the text encoder as a zero-shot
concept classifier that erases at inference time (no diffusion weight changes).

Paper: Tian et al. 2025, "Sparse Autoencoder as a Zero-Shot Classifier for Concept Erasing in
Text-to-Image Diffusion Models", arXiv:2503.09446. Reference code: NANSirun/Interpret-then-deactivate
(read, not copied). Steps, as the reference implements them:

1. **SAE** (Sec. 3.2; reference ``train_sae``): TopK SAE, k=64 with AuxK, trained token-level on the
   output of one text-encoder block — SD 1.x: ``text_model.encoder.layers.8`` (residual stream after
   block 9 of 12) — every token a sample (BOS, EOS and padding included), prompts padded to the
   batch's longest, inputs not normalised. Adam lr 1e-4 with 1,000 warm-up steps, batch of 50 prompts.
2. **Interpret** (Sec. 3.3): for each target prompt, each latent's max activation over non-BOS
   tokens; keep the top ``top_n`` (reference 128; 256 for styles) latents; drop latents that are in
   the top-``top_n`` set of any retain prompt; F = union over target prompts (and concepts).
3. **Deactivate** (Sec. 3.3, Eq. 6): on tokens after BOS, z'[F] = ``scale`` · z[F] (reference −8);
   the reference then replaces the block's *whole* output, every token BOS included, by the SAE
   reconstruction W_dec z' + b_pre (so the SAE's reconstruction error replaces the true activations,
   and BOS becomes its reconstruction). We differ here; see the first deviation.
4. **Zero-shot classifier** (Sec. 3.4): s(p) = the squared change (x' − x)², averaged over channels,
   then taken over tokens t ≥ 1 (``score``: max, the default, or mean; see the third deviation);
   the replacement happens only if s(p) ≥ τ = ``tau_factor`` · min over target prompts (0.99). Other
   prompts pass through bit for bit. Target prompts with s = 0 (no latent of F: the edit cannot touch them)
   are left out of the min and counted in the manifest (``targets_uncovered``); with them τ would be 0
   and the classifier would fire on every prompt.

Deviations, and why:
- **Only the change is written.** Where the classifier fires we output x + (x' − x) = x + W_dec(z' − z)
  on tokens t ≥ 1 and leave BOS exactly as it was, instead of the reference's W_dec z' + b_pre on every
  token. The two differ by the SAE's reconstruction error x − x̂ (on every token, and on BOS also by
  BOS's own error): keeping it means an imperfect SAE changes nothing but the concept's latents, and
  s(p) is exactly the squared size of what we write.
- **Diverse target prompts for fitting and calibration.** The paper's target prompt sets are diverse;
  a fit on a handful of sentence frames gives a τ that misses the concept in frames it has not seen
  (shapes model, issue 21: erased 0.38 for a character on held-out frames). The target set is the
  request's prompts (if any) plus ``TEMPLATES`` and ``DIVERSE_TEMPLATES`` frames of each target
  (``target_templates``) plus up to ``target_from_corpus`` prompts of the model's corpus that name a
  target (real captions in the model's own phrasing); F and τ come from this set.
- **Retain set without the concept's other words.** Corpus prompts enter the retain set only if they
  contain no target word and no ``retain_exclude`` word: a plain word always excludes, a group
  ``"a|b|c"`` excludes when a target word is in it (synonyms, nicknames, trigger words). Otherwise
  "radiant halo" prompts land in the retain set of "glowing"+"halo" and protect the very latents to
  erase (issue 13: halo erased 1.0 → 0.75). A model folder ships its groups in
  ``plugin_presets.itd.retain_exclude``.
- **One scoring rule.** The reference calibrates τ with the max over tokens for celebrities and a −6
  scale for styles, but scores at inference with the mean and −8. Here calibration and inference
  both use one rule (``score``) and the configured scale, so τ means the same thing in both. The
  default is the max over tokens t ≥ 1 (the reference's calibration rule): the mean is diluted by a
  prompt's other words, so a long target prompt sets a low τ that unrelated short prompts pass. Shapes
  v2.1, erasing zorblax (24 held-out prompts per side, ``benchmarks/itd_shapes.py``): with the mean the
  weakest target was a caption that also names two marks, τ fell and 5/24 unrelated prompts fired;
  with the max, 0/24 fired at the same recall (24/24). Over eight concepts each fitted alone
  (``--score-rules``: the five characters, square, dotted, glowing; 24 prompts naming it, 24 (glowing: 12)
  unrelated): max recall 185/192, false positives 20/180; mean 178/192 and 29/180; on the characters
  1/120 vs 9/120 false positives; square is the one concept where the mean fired less (2/24 vs 5/24, at
  recall 21 vs 23/24). ``score: mean`` restores the reference's inference rule; artifacts saved without
  the field were calibrated with the mean and keep it.
- **SAE width and budget are config values.** The reference uses 2^19 latents trained on a large
  corpus; that is the default here too, but a model folder may ship smaller presets
  (``conceptedit.json`` → ``plugin_presets.itd``; the built-in shapes model does — see its
  benchmark for the width chosen and why).
- **Layer for other encoders.** ``layer=None`` picks index 8 for 12-layer encoders and the block at
  the same relative depth (0.75) for others.
- **Padding at inference.** Prompts are tokenised exactly as the pipeline's ``encode_prompt`` does
  (padded to ``model_max_length``) both for calibration and at inference.
- **SDXL: the SAE reads ``text_encoder_2``** (OpenCLIP bigG; ``text_encoder: auto``), not both encoders:
  ItD is one SAE, one feature set and one threshold on one block, and the second encoder carries most of
  SDXL's conditioning (1280 of the 2048 context channels and the pooled embedding that enters the time
  embedding), so one hooked block there changes both what cross-attention and what the added embedding
  see. The first encoder's 768 channels are left as they are, so the concept can remain through them;
  ``text_encoder: text_encoder`` hooks the first instead. Two SAEs (both encoders) would be the complete
  version; not implemented. The default block is the same relative depth (block 23 of bigG's 32), before
  the penultimate block whose output SDXL reads.
- **The scale is the paper's (−8), with a side effect seen on the shapes model.** Zeroing F (scale 0) erases
  nothing there (zorblax 1.00 → 1.00): the concept is not only in F's latents, and it is the overshoot that
  erases. At −8 erasing zorblax draws the halo on 21/24 of the prompts naming it (base 2/24), which the retain
  metrics do not count; −2 erases zorblax (0.00) without it (2/24) but erases the halo only to 0.25 and
  "outlined" to 0.50 (−8: 0.08 and 0.08); −4 brings the halo back (17/24). ``benchmarks/itd_shapes.py
  --set scale=…`` reports all of it (``halo_on_target_prompts``).
- The reference's defects (a None comparison in the nudity path, a hard-coded
  device, dense 2^19-wide pre-activations per batch) do not apply: encoding is chunked (sparse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from conceptedit.edits.base import ArtifactError
from conceptedit.edits.runtime import ActivationHookEdit, PromptDecision
from conceptedit.errors import ConceptEditError, RequestError
from conceptedit.families import SD_FAMILIES, SDXL
from conceptedit.hooks import get_submodule
from conceptedit.plugin import Plugin, Request
from conceptedit.plugins._itd_fitting import DIVERSE_TEMPLATES, TEMPLATES, ItDFitting, words_of
from conceptedit.plugins._itd_latents import (
    _layer_output,
    _tokenize,
    cache_root,
    encoder_parts,
    layer_index,
    layer_name,
    max_activations,
    top_latents,
)
from conceptedit.registry import register_plugin
from conceptedit.sae.io import sae_config, sae_from_state
from conceptedit.toolkit import Progress, no_progress

# the SAE's view of the encoder and the fitting data live in their own modules (one job each); the
# names stay importable from here, as before the split
__all__ = [
    "ItDConfig",
    "ItDEdit",
    "ItDPlugin",
    "TEMPLATES",
    "DIVERSE_TEMPLATES",
    "words_of",
    "layer_index",
    "layer_name",
    "cache_root",
    "max_activations",
    "top_latents",
]


@dataclass
class ItDConfig:
    layer: int | None = field(default=None, metadata={"help": "text-encoder block index (None: 8 of 12 or same depth)"})
    text_encoder: Literal["auto", "text_encoder", "text_encoder_2"] = field(
        default="auto", metadata={"help": "encoder the SAE reads (auto: text_encoder; SDXL: text_encoder_2)"}
    )
    sae_path: str | None = field(default=None, metadata={"help": "reuse a saved SAE folder instead of training"})
    sae_arch: str = field(default="topk", metadata={"help": "SAE architecture (reference: topk)"})
    sae_width: int = field(default=2**19, metadata={"min": 1, "help": "SAE latents (reference 2^19)"})
    sae_k: int = field(default=64, metadata={"min": 1, "help": "active latents per token (reference 64)"})
    train_tokens: int = field(default=20_000_000, metadata={"min": 1, "help": "SAE training budget in tokens"})
    train_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (reference 1e-4)"})
    train_warmup_steps: int = field(default=1000, metadata={"min": 0, "help": "linear warm-up steps (reference 1000)"})
    train_batch_prompts: int = field(default=50, metadata={"min": 1, "help": "prompts per SAE batch (reference 50)"})
    corpus: str | None = field(default=None, metadata={"help": "prompt file for SAE training (txt or CSV)"})
    corpus_limit: int = field(default=50_000, metadata={"min": 1, "help": "at most this many corpus prompts"})
    top_n: int = field(
        default=128, metadata={"min": 1, "help": "latents kept per target prompt (reference 128; 256 styles)"}
    )
    scale: float = field(default=-8.0, metadata={"help": "factor applied to concept latents (reference -8)"})
    score: Literal["max", "mean"] = field(
        default="max",
        metadata={"help": "s(p) over tokens t>=1: max (reference calibration, celebrities) or mean (its inference)"},
    )
    tau_factor: float = field(default=0.99, metadata={"help": "threshold = factor x min target score"})
    retain_from_corpus: int = field(default=200, metadata={"min": 0, "help": "corpus prompts used as retain set"})
    retain_exclude: list[str] = field(
        default_factory=list,
        metadata={"help": "words keeping corpus prompts out of the retain set ('a|b': group, if a target is in it)"},
    )
    target_templates: bool = field(default=True, metadata={"help": "add template frames of each target to fit on"})
    target_from_corpus: int = field(default=50, metadata={"help": "corpus prompts naming a target added to fit on"})
    seed: int = field(default=0, metadata={"help": "seed of SAE training and corpus sampling"})

    def __post_init__(self) -> None:
        if self.top_n <= 0 or self.sae_width <= 0 or self.sae_k <= 0:
            raise ValueError("top_n, sae_width and sae_k must be positive")
        if self.sae_k > self.sae_width:
            raise ValueError(f"sae_k ({self.sae_k}) cannot exceed sae_width ({self.sae_width})")
        if not 0 < self.tau_factor <= 1:
            raise ValueError("tau_factor must be in (0, 1]")
        if self.target_from_corpus < 0 or self.retain_from_corpus < 0:
            raise ValueError("target_from_corpus and retain_from_corpus must be >= 0")
        if any(not isinstance(w, str) or not words_of(w.replace("|", " ")) for w in self.retain_exclude):
            raise ValueError(f"retain_exclude entries must be words or 'a|b' groups, got {self.retain_exclude!r}")


class ItDEdit(ActivationHookEdit):
    """The runtime intervention: SAE + feature set F + scale + threshold τ on one text-encoder block."""

    edit_type = "itd"

    def validate(self) -> None:
        extra = self.manifest.extra
        for key in ("sae_config", "layer", "scale", "tau"):
            if key not in extra:
                raise ArtifactError(f"itd edit lacks extra.{key}")
        if extra.get("score", "mean") not in ("max", "mean"):
            raise ArtifactError(f"itd extra.score must be 'max' or 'mean', got {extra.get('score')!r}")
        if extra.get("component", "text_encoder") not in ("text_encoder", "text_encoder_2"):
            raise ArtifactError("itd extra.component must be 'text_encoder' or 'text_encoder_2'")
        if "features" not in self.tensors:
            raise ArtifactError("itd edit lacks its feature set tensor 'features'")
        sae_tensors = {k.removeprefix("sae."): v for k, v in self.tensors.items() if k.startswith("sae.")}
        self.sae = sae_from_state(extra["sae_config"], sae_tensors, "itd artifact").eval()
        self.features = self.tensors["features"].long()
        self._pipe: Any = None
        self._bypass = False

    @property
    def component(self) -> str:
        """The text encoder the SAE reads (``text_encoder``; ``text_encoder_2`` on SDXL by default)."""
        return str(self.manifest.extra.get("component", "text_encoder"))

    @property
    def hook_points(self) -> list[str]:
        return [f"{self.component}.{layer_name(int(self.manifest.extra['layer']))}"]

    @property
    def tau(self) -> float:
        return float(self.manifest.extra["tau"])

    # -- the maths ---------------------------------------------------------------------------
    def _delta(self, hidden: torch.Tensor) -> torch.Tensor:
        """x' − x for every token of ``hidden [B, T, d]`` (BOS rows are zero)."""
        b, t, d = hidden.shape
        sae = self.sae.to(hidden.device)
        codes = sae.encode(hidden.float().reshape(b * t, d))
        in_f = torch.isin(codes.indices, self.features.to(hidden.device))
        factor = torch.where(in_f, torch.full_like(codes.values, float(self.manifest.extra["scale"]) - 1.0), 0.0)
        from conceptedit.sae.base import SparseCodes

        change = SparseCodes(codes.indices, codes.values * factor, codes.width)
        # decode is affine: decode(z') - decode(z) = (W_dec (z' - z)) / input_scale
        delta = sae.decode(change) - sae.b_pre / sae.input_scale
        delta = delta.reshape(b, t, d)
        delta[:, 0] = 0.0
        return delta

    @property
    def score_rule(self) -> str:
        """``max`` or ``mean`` over tokens; artifacts saved before the option existed were calibrated with ``mean``."""
        return str(self.manifest.extra.get("score", "mean"))

    def scores(self, hidden: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """s(p): the squared change per token (mean over channels), then max or mean over tokens t ≥ 1."""
        delta = self._delta(hidden) if delta is None else delta
        per_token = delta[:, 1:].pow(2).mean(dim=2)
        return per_token.amax(dim=1) if self.score_rule == "max" else per_token.mean(dim=1)

    def transform(self, module_key: str, hidden: torch.Tensor) -> torch.Tensor:
        if self._bypass:  # classify()/explain() read the block's own output, not the edited one
            return hidden
        with torch.no_grad():
            delta = self._delta(hidden)
            fire = self.scores(hidden, delta) >= self.tau
        if not bool(fire.any()):
            return hidden
        out = hidden.clone()
        out[fire] = (hidden[fire].float() + delta[fire]).to(hidden.dtype)
        return out

    # -- attach: remember the pipeline for classify/explain ------------------------------------
    def _attach(self, pipe: Any) -> Any:
        undo = super()._attach(pipe)
        self._pipe = pipe

        def detach() -> None:
            undo()
            self._pipe = None

        return detach

    def _hidden(self, prompts: list[str], pipe: Any | None = None) -> torch.Tensor:
        pipe = pipe or self._pipe
        if pipe is None:
            raise ConceptEditError("apply the itd edit to a pipeline before classifying prompts")
        ids = _tokenize(pipe, prompts, self.component)
        encoder = encoder_parts(pipe, self.component)[0]
        name = layer_name(int(self.manifest.extra["layer"]))
        get_submodule(encoder, name)  # clear error for a wrong layer
        self._bypass = True
        try:
            with torch.no_grad():
                return _layer_output(encoder, name, ids)
        finally:
            self._bypass = False

    def classify(self, prompts: list[str]) -> list[PromptDecision]:
        """Per prompt: score s(p), threshold τ, and whether the edit fires (the zero-shot classifier)."""
        hidden = self._hidden(list(prompts))
        scores = self.scores(hidden).tolist()
        return [
            PromptDecision(p, float(s), self.tau, bool(s >= self.tau)) for p, s in zip(prompts, scores, strict=True)
        ]

    def explain(self, prompt: str, top_n: int = 10) -> list[dict[str, Any]]:
        """The prompt's strongest SAE latents (max over tokens after BOS), flagged if in F."""
        acts = max_activations(self.sae, self._hidden([prompt]))[0]
        values, index = acts.topk(min(top_n, acts.numel()))
        in_f = set(self.features.tolist())
        return [
            {"feature": int(i), "activation": float(v), "erased": int(i) in in_f}
            for v, i in zip(values.tolist(), index.tolist(), strict=True)
            if v > 0
        ]


def threshold(target_scores: torch.Tensor, factor: float) -> tuple[float, int]:
    """τ = ``factor`` · min over the target prompts the feature set reaches (s > 0), and how many it misses.

    A target with s = 0 has no latent of F: the edit cannot change it at any τ, and letting it into the min
    (τ = 0) would make the classifier fire on every prompt that shares any latent of F."""
    reached = target_scores[target_scores > 0]
    if reached.numel() == 0:
        raise RequestError(
            "no target prompt activates the selected concept latents; raise top_n or give fewer retain prompts"
        )
    return float(factor * reached.min()), int(target_scores.numel() - reached.numel())


@register_plugin
class ItDPlugin(ItDFitting, Plugin):
    name = "itd"
    kind = "erase"
    Config = ItDConfig
    families = (*SD_FAMILIES, SDXL)
    artifact_kind = "runtime"
    summary = "Interpret-then-Deactivate: an SAE on the text encoder as a zero-shot classifier; erases at inference."
    paper = "Tian et al., arXiv:2503.09446 (2025)"

    # -- step 2: interpret ---------------------------------------------------------------------
    def interpret(
        self,
        sae: Any,
        pipe: Any,
        layer: int,
        targets: list[str],
        retain: list[str],
        component: str = "text_encoder",
    ) -> torch.Tensor:
        name = layer_name(layer)
        n = self.config.top_n
        encoder = encoder_parts(pipe, component)[0]
        with torch.no_grad():
            target_sets = top_latents(sae, _layer_output(encoder, name, _tokenize(pipe, targets, component)), n)
            retain_union: set[int] = set()
            for start in range(0, len(retain), 64):
                hidden = _layer_output(encoder, name, _tokenize(pipe, retain[start : start + 64], component))
                for s in top_latents(sae, hidden, n):
                    retain_union |= s
        features = set().union(*target_sets) - retain_union
        if not features:
            raise RequestError(
                "every latent of the target prompts also ranks high on a retain prompt; "
                "lower retain_from_corpus, give fewer retain prompts, or raise top_n"
            )
        return torch.tensor(sorted(features), dtype=torch.long)

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> ItDEdit:
        family = self.check_pipeline(pipe)
        component = self.config.text_encoder
        if component == "auto":
            component = "text_encoder_2" if family == SDXL else "text_encoder"
        encoder = encoder_parts(pipe, component)[0]
        layer = layer_index(encoder, self.config.layer)
        corpus = self.shipped_corpus(pipe)
        sae = self.get_sae(pipe, request, layer, corpus, progress, component).to(encoder.device).float().eval()
        progress(0.8, "interpreting: selecting concept features")
        targets = self.target_prompts(request, corpus)
        features = self.interpret(sae, pipe, layer, targets, self.retain_prompts(request, corpus), component)
        tensors = {f"sae.{k}": v.detach().cpu().clone() for k, v in sae.state_dict().items()}
        tensors["features"] = features
        manifest = self.manifest(
            "itd",
            "runtime",
            request,
            sae_config=sae_config(sae),
            component=component,
            layer=layer,
            scale=self.config.scale,
            score=self.config.score,
            tau=0.0,
            n_features=int(features.numel()),
            n_target_prompts=len(targets),
        )
        edit = ItDEdit(manifest, tensors)
        progress(0.9, "calibrating the threshold on the target prompts")
        with torch.no_grad():
            target_scores = edit.scores(_layer_output(encoder, layer_name(layer), _tokenize(pipe, targets, component)))
        tau, uncovered = threshold(target_scores, self.config.tau_factor)
        edit.manifest.extra.update(tau=tau, target_score_min=float(target_scores.min()), targets_uncovered=uncovered)
        note = f", {uncovered} target prompts without a concept latent (not edited)" if uncovered else ""
        progress(1.0, f"{features.numel()} features, tau={edit.tau:.4g}{note}")
        return self.finish(edit, pipe, [component])
