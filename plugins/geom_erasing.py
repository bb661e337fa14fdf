"""``geom-erasing``: remove implicit concepts (watermarks, QR codes, text) with location tokens.

Liu, Chen, Zhang, Han, Hong, Xu, Li, Yeung, Kwok, "Implicit Concept Removal of Diffusion Models",
ECCV 2024 (arXiv 2310.05873; no public code). Followed, Sec. 3:

1. A detector (``conceptedit.detectors``: a registered name, ``module:callable``; ``auto`` = the one
   registered for the model's world) gives each training image, per concept, presence and a box.
2. Box coordinates are quantised into a ``grid × grid`` set of bins, each a new token ⟨l{m,n}⟩ added to
   the tokenizer and the text encoder's embedding table (new rows only). The caption becomes
   ``y ⊕ concept name ⊕ ⟨l⟩ of every covered bin``.
3. Loss ``E[w ⊙ ‖ε − ε_θ(z_t, t, c(y′))‖²]`` with ``w = T/(K + α(T−K))`` inside the concept's region and
   ``αT/(K + α(T−K))`` outside (T latent positions, K of them inside; Σw = T).
4. Settings: ``model`` (the paper's default for a pretrained model: the model's own generations from
   its prompt distribution, labelled by the detector; only the new token embeddings are optimised) and
   ``data`` (a dataset that holds the concept — the model world's registered renders — the diffusion
   model and the tokens trained together).
5. Inference: the concept name(s) and the location tokens are the negative prompt, appended to any
   negative prompt the user gives.

The artifact is one edit: the new tokens and their embedding rows (``learned_embeds.safetensors``), the
negative prompt (as ``negative-prompt``'s runtime edit) and, in the ``data`` setting, a UNet LoRA in the
diffusers format (``pytorch_lora_weights.safetensors``, as ``LoRAEdit``). Applying adds the tokens,
merges the LoRA and wraps ``encode_prompt``; removal undoes all three exactly.

Choices no stored copy of the paper gives (each measured on the shapes model in
``benchmarks/geom_erasing.py``): grid 3 × 3 (the shapes model's tokenizer holds 32 tokens, and the three
concept names plus 9 location tokens fit in one negative prompt); α = 2 (the region counts half as much
as the rest, as the paper's re-weighting down-weights it); tokens start at the mean embedding row plus
0.1 std of seeded noise; AdamW, token lr 5e-3, 400 steps of batch 16 (model) / 600 steps (data);
256 generations in the model setting, 2048 renders in the data setting.

Deviations, and why:

- ``data`` trains a rank-4 LoRA on the UNet's attention projections (lr 1e-3, ``plugins/_training.py``'s
  LoRA factor) instead of the whole UNet: the artifact stays small and removable, as every other edit.
- ``caption_dropout`` (default 0.3): that share of training captions is the geometry clause alone, without
  ``y``, so the clause the negative prompt uses alone at inference is in the training distribution.
- Several concepts share one grid of location tokens; the negative prompt names every concept once,
  then every location token (``concept₁, concept₂ ⟨l0,0⟩ … ⟨lK,K⟩``), which fits a 32-token tokenizer.
- In the ``model`` setting only images in which the detector found a target are trained on: the others'
  captions hold no location token, so they would give the token embeddings no gradient.
- ``names`` sets the words each concept is written with in the clause and the negative prompt (the paper
  writes the concept's name); the default, ``auto``, takes the detector's ``phrases`` where it declares them,
  else the target name.
- Only ``pipe.tokenizer`` / ``pipe.text_encoder`` get the tokens (SD 1.x / 2.x); SDXL is not supported.

Measured (``benchmarks/geom_erasing.py``, the shipped shapes model v2.1, 200 generations per arm, one edit
per mark, rates read by the shapes detector; base watermark / QR / glyphs 14.5 / 6.5 / 6.0 %): the ``data``
setting lowers them to 1.5 / 0.5 / 2.0 % with the probe's shape/colour/background/style and the CLIP score at
the base's; the ``model`` setting to 2.5 / 5.0 / 3.0 %; the oracle (the same fine-tune on renders without
marks) reaches 1.0 / 0.0 / 1.0 %. So every mark is ≤ 3 %, and the oracle is tied within one or two images of
200, not beaten. The concept's caption phrase alone as the negative prompt gives 3.0 / 3.5 / 1.5 %; the clause
draws the mark (a steering control: 37 % of prompts asking for it) but the location tokens do not move it to
the asked cell (19 of 74, chance). On v2, whose captions never named a mark, the plugin wrote the bare names
and nothing steered: 15.0 / 12.0 / 8.0 % → 10.5 / 7.5 / 7.0 % (data setting), through the fine-tune alone.
The shapes detector declares the captions' phrases (``with a watermark``), which ``names: auto`` uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from conceptedit.config import config_to_dict
from conceptedit.detectors import DETECTORS, check_detections, get_detector
from conceptedit.edits import LoRAEdit, NegativePromptEdit, lora_tensors_from_peft
from conceptedit.edits.base import Edit, Undo
from conceptedit.edits.lora import LORA_FILE
from conceptedit.edits.tokens import add_token_rows, check_token_vectors, extended_tokenizer, token_table
from conceptedit.errors import ArtifactError, RequestError
from conceptedit.families import SD_FAMILIES
from conceptedit.plugin import Plugin, Request
from conceptedit.plugins._geom_erasing_fit import (
    LoopSettings,
    build_data,
    initial_vectors,
    location_tokens,
    train,
)
from conceptedit.registry import register_plugin
from conceptedit.toolkit import Progress, default_resolution, no_progress, payload_hash

TOKENS_FILE = "learned_embeds.safetensors"
TOKENS_KEY = "text_encoder.location_tokens"


@dataclass
class GeomErasingConfig:
    setting: Literal["model", "data"] = field(
        default="model",
        metadata={"help": "model: the model's own generations, tokens only; data: the world's renders, LoRA + tokens"},
    )
    detector: str = field(default="auto", metadata={"help": "registered detector, module:callable, or auto"})
    grid: int = field(default=3, metadata={"min": 1, "help": "location tokens per side (grid x grid)"})
    alpha: float = field(default=2.0, metadata={"help": "re-weighting: the region counts 1/alpha of the rest"})
    samples: int | None = field(
        default=None, metadata={"help": "generations (model) / renders (data); default 256 / 2048"}
    )
    steps: int | None = field(default=None, metadata={"min": 1, "help": "optimiser steps (default 400 / 600)"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "images per step"})
    token_lr: float = field(default=5e-3, metadata={"help": "AdamW lr of the location-token embeddings"})
    caption_dropout: float = field(default=0.3, metadata={"help": "share of captions that are the clause alone"})
    lora_rank: int = field(default=4, metadata={"min": 1, "help": "LoRA rank (data setting)"})
    lora_lr: float = field(default=1e-3, metadata={"help": "LoRA lr (data setting)"})
    data: str = field(
        default="auto", metadata={"help": "registered image set for the data setting (auto: the model's)"}
    )
    names: str = field(
        default="auto",
        metadata={
            "help": "the words for each concept in captions and the negative prompt: auto (the detector's "
            "phrases, else the concept), targets (the concept names), or 'concept=words;concept=words'"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds generations, token init, batches, noise and LoRA"})

    def __post_init__(self) -> None:
        if not 1 <= self.grid <= 16:
            raise ValueError("grid must be between 1 and 16")
        if self.alpha <= 0:
            raise ValueError("alpha must be > 0")
        if self.samples is not None and self.samples < 1:
            raise ValueError("samples must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.token_lr <= 0 or self.lora_lr <= 0:
            raise ValueError("token_lr and lora_lr must be > 0")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")
        if not self.detector.strip():
            raise ValueError("detector must not be empty (a registered name, module:callable, or auto)")
        parse_names(self.names)


class GeomErasingEdit(Edit):
    """Location tokens + their embedding rows + the negative prompt (model-removal setting)."""

    edit_type = "geom_erasing"
    artifact_kind = "runtime"
    weights_file = TOKENS_FILE

    @property
    def tokens(self) -> list[str]:
        return list(self.manifest.extra.get("tokens", []))

    def validate(self) -> None:
        tokens = self.manifest.extra.get("tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise ArtifactError("geom_erasing edit needs extra.tokens (a list of words)")
        if TOKENS_KEY not in self.tensors:
            raise ArtifactError(f"geom_erasing edit needs the tensor {TOKENS_KEY!r}")
        check_token_vectors(tokens, self.tensors[TOKENS_KEY])
        NegativePromptEdit.validate(self)  # type: ignore[arg-type]  # the same extra.negative_text / mode
        extra = set(self.tensors) - {TOKENS_KEY}
        if extra and self.artifact_kind != "lora":
            raise ArtifactError(f"geom_erasing edit has unexpected tensors {sorted(extra)[:3]}")

    def lora_part(self) -> LoRAEdit | None:
        lora = {k: v for k, v in self.tensors.items() if k != TOKENS_KEY}
        return LoRAEdit(self.manifest, lora) if lora else None

    def _attach(self, pipe: Any) -> Undo:
        undos: list[Undo] = []

        def undo() -> None:
            for step in reversed(undos):
                step()

        try:
            undos.append(add_token_rows(pipe, self.tokens, self.tensors[TOKENS_KEY]))
            lora = self.lora_part()
            if lora is not None:
                undos.append(lora._attach(pipe))
            undos.append(NegativePromptEdit(self.manifest)._attach(pipe))
        except Exception:
            undo()
            raise
        return undo


class GeomErasingLoRAEdit(GeomErasingEdit):
    """The data-removal setting's artifact: the same, plus a UNet LoRA (diffusers format, its own file)."""

    edit_type = "geom_erasing_lora"
    artifact_kind = "lora"

    def validate(self) -> None:
        super().validate()
        lora = self.lora_part()
        if lora is None:
            raise ArtifactError("geom_erasing_lora edit holds no LoRA tensors")
        lora.validate()

    def touched_components(self) -> set[str]:
        return {k.split(".", 1)[0] for k in self.tensors if k != TOKENS_KEY}

    def _write_tensors(self, folder: Any) -> list[str]:
        from safetensors.torch import save_file

        lora = {k: v.detach().contiguous().cpu() for k, v in self.tensors.items() if k != TOKENS_KEY}
        save_file(lora, str(folder / LORA_FILE))
        save_file({TOKENS_KEY: self.tensors[TOKENS_KEY].detach().contiguous().cpu()}, str(folder / TOKENS_FILE))
        return [LORA_FILE, TOKENS_FILE]


def parse_names(spec: str) -> dict[str, str] | None:
    """``names``: None for ``auto`` / ``targets``, else the ``concept=words;…`` mapping."""
    text = spec.strip()
    if text in ("auto", "targets"):
        return None
    pairs = [p for p in text.split(";") if p.strip()]
    out: dict[str, str] = {}
    for pair in pairs:
        concept, sep, words = pair.partition("=")
        if not sep or not concept.strip() or not words.strip():
            raise ValueError(f"names: {pair.strip()!r} is not 'concept=words' (or use auto / targets)")
        out[concept.strip()] = " ".join(words.split())
    if not out:
        raise ValueError("names: give auto, targets, or 'concept=words;concept=words'")
    return out


def concept_names(spec: str, detector: Any, targets: list[str]) -> dict[str, str]:
    """Each target's words in the training captions and the negative prompt. The paper appends the concept's
    name; the name only helps if it is words the model's own captions use for the concept (on a model whose
    captions say "with a watermark", a bare "watermark" in the negative prompt moves nothing: measured on
    the shapes model v2.1, docs/shapes_model.md). ``auto`` takes the detector's ``phrases`` where it
    declares them (``{concept: words}``), else the concept name."""
    explicit = parse_names(spec)
    if explicit is not None:
        unknown = sorted(set(explicit) - set(targets))
        if unknown:
            raise RequestError(f"names gives words for {unknown}, which are not targets ({targets})")
        return {t: explicit.get(t, t) for t in targets}
    phrases = getattr(detector, "phrases", None) if spec.strip() == "auto" else None
    return {t: (phrases or {}).get(t, t) for t in targets}


def negative_text(targets: list[str], tokens: list[str]) -> str:
    return f"{', '.join(targets)} {' '.join(tokens)}"


def check_negative_fits(pipe: Any, targets: list[str], tokens: list[str]) -> None:
    """Refuse, before any work, a grid whose negative prompt the tokenizer would truncate: the location
    tokens come last, so the cut would silently drop the cells the edit is about."""
    twin = extended_tokenizer(pipe.tokenizer, tokens, token_table(pipe.text_encoder).num_embeddings)
    length, limit = len(twin(negative_text(targets, tokens)).input_ids), twin.model_max_length
    if length > limit:
        raise RequestError(
            f"the negative prompt ({len(targets)} concept name(s) + {len(tokens)} location tokens) is {length} tokens, "
            f"over this tokenizer's {limit}; use a smaller grid or fewer targets per edit"
        )


def detector_for(pipe: Any, spec: str) -> Any:
    """The configured detector; ``auto`` = the registered one whose ``world`` is the model's."""
    if spec != "auto":
        return get_detector(spec)
    from conceptedit.plugins.blindspots import _model_world

    world = _model_world(pipe)
    for name, factory in DETECTORS.items():
        if world and getattr(factory, "world", None) == world:
            return get_detector(name)
    raise RequestError(
        "no detector registered for this model; set detector to a registered name "
        f"({', '.join(sorted(DETECTORS)) or 'none'}) or 'module:callable'"
    )


def model_prompts(pipe: Any, request: Request, n: int, seed: int) -> list[str]:
    """``n`` prompts from the model's prompt distribution: the request's prompts, else its shipped corpus."""
    from conceptedit.loading import model_file

    pool = list(request.prompts)
    if not pool:
        corpus = model_file(pipe, "prompt_corpus")
        if corpus:
            with open(corpus, encoding="utf-8") as handle:
                pool = [line.strip() for line in handle if line.strip()]
    if not pool:
        raise RequestError("the model ships no prompt corpus; give prompts from its prompt distribution")
    gen = torch.Generator("cpu").manual_seed(seed)
    return [pool[int(i)] for i in torch.randint(0, len(pool), (n,), generator=gen)]


@register_plugin
class GeomErasingPlugin(Plugin):
    name = "geom-erasing"
    kind = "erase"
    Config = GeomErasingConfig
    families = SD_FAMILIES
    artifact_kind = "runtime"
    summary = (
        "Remove implicit concepts (watermark, QR code, text) that appear unprompted: a detector labels images, "
        "learned location tokens carry where the concept is, and concept + tokens become the negative prompt."
    )
    paper = "Liu et al., Implicit Concept Removal of Diffusion Models (Geom-Erasing), ECCV 2024"

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> GeomErasingEdit:
        self.check_pipeline(pipe)
        cfg = self.config
        start = time.perf_counter()
        detector = detector_for(pipe, cfg.detector)
        unknown = [t for t in request.targets if t not in detector.concepts]
        if unknown:
            raise RequestError(f"the detector cannot find {unknown}; it knows {list(detector.concepts)}")
        tag = payload_hash({"targets": request.targets, "config": config_to_dict(cfg)}, 6)
        tokens = location_tokens(tag, cfg.grid)
        names = concept_names(cfg.names, detector, list(request.targets))
        words = [names[t] for t in request.targets]
        check_negative_fits(pipe, words, tokens)
        images, captions = self._images(pipe, request, progress)
        progress(0.0, f"detecting {', '.join(request.targets)} in {len(images)} images")
        detections = check_detections(detector, images, request.targets)
        data = build_data(
            pipe, images, captions, detections, request.targets, tokens, cfg.grid, default_resolution(pipe),
            keep_unmarked=cfg.setting == "data", names=names,
        )  # fmt: skip
        if not any(data.clauses):
            raise RequestError(
                f"the detector found none of {request.targets} in {len(images)} images; nothing to learn from"
            )
        settings = LoopSettings(
            steps=cfg.steps or (400 if cfg.setting == "model" else 600),
            batch_size=cfg.batch_size,
            token_lr=cfg.token_lr,
            alpha=cfg.alpha,
            caption_dropout=cfg.caption_dropout,
            seed=cfg.seed,
            lora=cfg.setting == "data",
            lora_rank=cfg.lora_rank,
            lora_lr=cfg.lora_lr,
        )
        init = initial_vectors(pipe, len(tokens), cfg.seed)
        vectors, student, stats = train(pipe, data, tokens, init, settings, progress)
        assert vectors is not None
        tensors = {TOKENS_KEY: vectors}
        cls: type[GeomErasingEdit] = GeomErasingEdit
        if student is not None:
            tensors.update(lora_tensors_from_peft(student, "unet"))
            cls = GeomErasingLoRAEdit
        manifest = self.manifest(
            cls.edit_type,
            cls.artifact_kind,
            request,
            tokens=tokens,
            grid=cfg.grid,
            negative_text=negative_text(words, tokens),
            names=names,
            mode="append",
            data=data.stats,
            fit_seconds=round(time.perf_counter() - start, 2),
            **stats,
        )
        return self.finish(cls(manifest, tensors), pipe, ["text_encoder"])

    def _images(self, pipe: Any, request: Request, progress: Progress) -> tuple[list[Any], list[str]]:
        cfg = self.config
        if cfg.setting == "model":
            from conceptedit.generation import generate

            n = cfg.samples or 256
            prompts = model_prompts(pipe, request, n, cfg.seed)
            progress(0.0, f"generating {n} images from the model's prompts")
            seeds = [cfg.seed * 100_003 + i for i in range(n)]
            return generate(pipe, prompts, seeds, batch_size=32), prompts
        from conceptedit.plugins.blindspots import image_set_for

        images, captions, _labels = image_set_for(pipe, cfg.data)(cfg.samples or 2048, cfg.seed)
        return list(images), list(captions)
