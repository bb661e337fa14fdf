"""CLIP metrics: ``clip_score`` and ``clip_fid``/``clip_kid`` (FID/KID on CLIP image features), on the
CLIP the evaluated model folder ships when it has one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image

from conceptedit.errors import ConceptEditError
from conceptedit.eval.metrics.base import BASE, Group, Metric, MetricResult, ModelContext, mean, register_metric
from conceptedit.eval.store import ImageRow


class _Clip(NamedTuple):
    model: Any
    processor: Any
    source: str  # where it was loaded from
    label: str  # how results name it, e.g. "shapes/clip"


def _embedding(output: Any) -> torch.Tensor:
    """``get_image_features``/``get_text_features`` return a tensor in transformers 4, an output
    object whose ``pooler_output`` is the projected embedding in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _ClipMetric(Metric):
    """A metric on a transformers CLIPModel: ``options.model`` (a local folder or cached hub id) when
    given, else the CLIP the evaluated model folder ships (``conceptedit.json`` → ``files.clip``), else
    :attr:`default_model`. Each source is loaded once, so a run over several models uses each one's."""

    default_model = "openai/clip-vit-large-patch14"

    def __init__(self, options: dict[str, Any] | None = None, device: torch.device | None = None) -> None:
        super().__init__(options, device)
        self._loaded: dict[str, _Clip | str] = {}  # source -> the CLIP, or why it could not be loaded
        self._by_model: dict[str, tuple[str, str]] = {}  # evaluated model -> (source, label)
        self._current: str | None = None

    def _source(self, context: ModelContext | None) -> tuple[str, str]:
        if self.options.get("model"):
            return str(self.options["model"]), str(self.options["model"])
        shipped = context.files.get("clip") if context else None
        if context and shipped:
            return shipped, f"{context.model}/{Path(shipped).name}"
        return self.default_model, self.default_model

    def _load(self, source: str, label: str) -> _Clip | str:
        if source not in self._loaded:
            try:
                from transformers import CLIPModel, CLIPProcessor

                from conceptedit.loading import _offline

                local = Path(source).is_dir() or _offline(None)
                model = CLIPModel.from_pretrained(source, local_files_only=local, use_safetensors=True)
                processor = CLIPProcessor.from_pretrained(source, local_files_only=local)
                self._loaded[source] = _Clip(model.to(self.device).eval(), processor, source, label)
            except Exception as exc:  # transformers raises many types; the run reports it and goes on
                why = " ".join(str(exc).split())[:160]
                self._loaded[source] = f"CLIP model {label!r} unavailable: {type(exc).__name__}: {why}"
        return self._loaded[source]

    def unavailable_reason(self) -> str | None:
        if not self.options.get("model"):
            return None  # the CLIP may come with each evaluated model: checked in use_model
        loaded = self._load(*self._source(None))
        return loaded if isinstance(loaded, str) else None

    def use_model(self, context: ModelContext) -> str | None:
        source, label = self._by_model[context.model] = self._source(context)
        self._current = context.model
        loaded = self._load(source, label)
        if not isinstance(loaded, str):
            return None
        if source == self.default_model and not self.options.get("model"):
            return f"{context.model} ships no CLIP (conceptedit.json files.clip) and {loaded}"
        return loaded

    def clip(self, model: str | None = None) -> _Clip:
        """The CLIP for an evaluated model (default: the one last given to :meth:`use_model`)."""
        key = model if model is not None else self._current
        source, label = self._by_model[key] if key in self._by_model else self._source(None)
        loaded = self._load(source, label)
        if isinstance(loaded, str):
            raise ConceptEditError(loaded)
        return loaded

    def _pixels(self, clip: _Clip, images: list[Image.Image]) -> torch.Tensor:
        return clip.processor.image_processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)


@register_metric
class ClipScore(_ClipMetric):
    """CLIPScore (Hessel et al. 2021): 100 · max(cos(image, prompt), 0). Prompts are truncated to the
    CLIP's text positions (77 for OpenAI's, 32 for the shapes model's)."""

    name = "clip_score"
    description = "CLIP image-prompt similarity (the model's own CLIP when it ships one, else a cached hub CLIP)"

    @torch.no_grad()
    def score_images(self, rows: list[ImageRow], images: list[Image.Image]) -> list[dict[str, Any]]:
        clip = self.clip()
        tokenizer = clip.processor.tokenizer
        length = min(int(tokenizer.model_max_length), int(clip.model.config.text_config.max_position_embeddings))
        text = tokenizer(
            [r.prompt for r in rows], padding=True, truncation=True, max_length=length, return_tensors="pt"
        ).to(self.device)
        image_emb = _embedding(clip.model.get_image_features(pixel_values=self._pixels(clip, images)))
        text_emb = _embedding(
            clip.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        )
        cosine = torch.nn.functional.normalize(image_emb, dim=-1) * torch.nn.functional.normalize(text_emb, dim=-1)
        scores = (100 * cosine.sum(-1)).clamp(min=0).tolist()
        return [{"score": float(s)} for s in scores]

    def compute(self, group: Group) -> dict[str, MetricResult]:
        values = [r.per_image[self.name]["score"] for r in group.rows if self.name in r.per_image]
        details: dict[str, Any] = {"n": len(values)}
        if group.model in self._by_model:
            details["clip"] = self._by_model[group.model][1]
        return {self.name: MetricResult(mean(values), details, True)}


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (rows = samples), in float64:
    |μa − μb|² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½. Symmetric square roots by eigendecomposition
    stay real when Σ is singular (fewer samples than feature dimensions)."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(value.clamp(min=0))  # ≥ 0 in exact arithmetic; rounding can leave −1e-12


def kernel_distance(
    a: torch.Tensor, b: torch.Tensor, subset_size: int, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018, as torchmetrics computes it): the unbiased MMD² with the kernel
    (x·y/d + 1)³, averaged over ``subsets`` random subsets of ``subset_size`` per set; (mean, std).
    Seeded, so the same features give the same value."""
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ConceptEditError(f"KID needs at least 2 images per set, got {m}")
    generator = torch.Generator().manual_seed(seed)
    dim = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m]]
        y = b[torch.randperm(len(b), generator=generator)[:m]]
        k_xx, k_yy, k_xy = ((p @ q.T / dim + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - k_xx.trace() + k_yy.sum() - k_yy.trace()) / (m * (m - 1))
        values.append(within - 2 * k_xy.mean())
    scores = torch.stack(values)
    return float(scores.mean()), float(scores.std(unbiased=False))


@register_metric
class ClipFrechetDistance(_ClipMetric):
    """``clip_fid`` and ``clip_kid``: FID/KID on CLIP image-tower features, NOT Inception — the
    projected image embeddings of the CLIP ``clip_score`` uses (the model folder's own when it ships
    one), edited images against the base model's images of the same prompts and seeds. Computed here
    in float64 (needs neither torchmetrics nor Inception weights); values are not comparable with the
    ``fid`` metric's. Options: ``model``, ``kid_subset_size`` (50), ``kid_subsets`` (100), ``batch_size``."""

    name = "clip_fid"
    description = "FID/KID on CLIP image-tower features, not Inception (the model's own CLIP when it ships one)"

    def __init__(self, options: dict[str, Any] | None = None, device: torch.device | None = None) -> None:
        super().__init__(options, device)
        self._features: dict[tuple[str, str], torch.Tensor] = {}  # (CLIP source, image path) -> features

    @torch.no_grad()
    def image_features(self, clip: _Clip, paths: list[str], load_image: Callable[[str], Image.Image]) -> torch.Tensor:
        """float64 projected image embeddings, one row per path; each image is encoded once per CLIP."""
        missing = [p for p in dict.fromkeys(paths) if (clip.source, p) not in self._features]
        batch = max(1, int(self.options.get("batch_size", 64)))
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            pixels = self._pixels(clip, [load_image(p) for p in chunk])
            features = _embedding(clip.model.get_image_features(pixel_values=pixels)).double().cpu()
            for path, feature in zip(chunk, features, strict=True):
                self._features[(clip.source, path)] = feature
        return torch.stack([self._features[(clip.source, p)] for p in paths])

    def compute(self, group: Group) -> dict[str, MetricResult]:
        if group.edit == BASE:
            return {}
        pairs = group.paired()
        if len(pairs) < 2:
            return {}
        clip = self.clip(group.model)
        real = self.image_features(clip, [base.image_path for _, base in pairs], group.load_image)
        fake = self.image_features(clip, [row.image_path for row, _ in pairs], group.load_image)
        subset = min(len(pairs), int(self.options.get("kid_subset_size", 50)))
        kid, kid_std = kernel_distance(real, fake, subset, int(self.options.get("kid_subsets", 100)))
        details = {
            "n": len(pairs),
            "reference": "base generations",
            "features": f"{clip.label} image tower, not Inception",
        }
        return {
            "clip_fid": MetricResult(frechet_distance(real, fake), details, False),
            "clip_kid": MetricResult(kid, {**details, "std": kid_std, "subset_size": subset}, False),
        }
