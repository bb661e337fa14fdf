"""Image feature extractors for the blind-spot analysis, behind one interface.

Bohacek, Fel et al. 2025 encode images with DINOv2 ViT-B/14 with registers and keep every token
(CLS + 4 registers + 256 patches); the SAE sees one row per token. :class:`DinoFeatures` does that
for real models (a local folder or the hub cache; offline it says so in one line). The shapes model
ships its own CLIP (both towers, ``clip/`` in its folder, read via ``conceptedit.loading.model_files``);
:class:`ClipFeatures` uses its image tower the same way (tokens after the final layer norm), as
DINOv2 has never seen 32-pixel shapes.

Which tokens, on the shapes CLIP (3 layers of width 128, 8 x 8 patches + CLS; measured with
``benchmarks/blindspots_features.py``, Dec 2026). Linear-probe test AUC (1,000 renders to fit, 500 to
score), watermark / qr / glyphs / striped / crescent:

- pooled (CLS) only: 0.51 / 0.60 / 0.54 / 0.996 / 0.98: the marks are not in the pooled embedding
  (the CLIP's captions never name them), the style is;
- all 65 tokens of the last layer: 0.99 / 0.999 / 0.95 / 0.98 / 0.998: the tokens do carry the marks;
- CLS + 4 corner tokens (2 x 2 patch means): 0.94 / 0.98 / 0.74 / 0.99 / 0.95.

So the features encode marks and style; what the earlier analysis lacked was a concept that follows
them. Best-correlated SAE concept (the benchmark's SAE, 512 renders, SAE seeds 0 / 1), Pearson r of
its per-image energy with the label, watermark / qr / glyphs / striped / crescent:

- ``clip-all`` (every token, the earlier default): 0.25 0.29 / 0.29 0.21 / 0.13 0.20 / 0.30 0.37 /
  0.71 0.78;
- ``clip-centred`` (each position's mean real token subtracted): 0.51 0.51 / 0.36 0.25 / 0.19 0.21 /
  0.37 0.30 / 0.52 0.35;
- ``clip-corners``: 0.16 0.18 / 0.31 0.26 / 0.22 0.22 / 0.39 0.36 / 0.34 0.41; layers 2+3 concatenated (``@2,3``)
  0.47 0.34 / 0.22 0.17 / 0.19 0.16 / 0.35 0.23 / 0.41 0.40; SAE width 1024 on ``clip-all`` 0.37 / 0.21
  / 0.20 / 0.34 / 0.62.

The output tokens keep their position, so a mark stamped at a random corner can be learned as one
concept per corner, none of which follows the mark; subtracting each position's mean real token
removes what is shared at a position, and the watermark's best r doubles (the mechanism is our reading,
the r is measured). ``clip-centred`` is therefore the shapes default (:data:`SHAPES_CLIP_TOKENS`); its
cost is a weaker crescent concept (r 0.35-0.52 against 0.71-0.78). qr, glyphs and striped stay at r
0.2-0.4 whatever the tokens, although the tokens carry them (probe AUC above): the limit there is the
SAE's concepts (256, 5 active per token; width 1024 did not lift them, seed 0), not the extractor.
Nor does more training data (Dec 5, ``benchmarks/blindspots_features.py --sae --no-probe --seeds 0
--extractors clip-all clip-centred --sae-train-renders 4096 --sae-train-tokens 1600000``: the SAE trained on
4,096 other renders of the world's mix, as the paper trains on a corpus apart from the analysed images, scored on
the same 512): watermark / qr / glyphs / striped / crescent ``clip-all`` 0.52 / 0.21 / 0.20 / 0.35 / 0.41,
``clip-centred`` 0.59 / 0.33 / 0.30 / 0.34 / 0.46 (the crescent, 1.5 % of that mix, loses its concept).
A concept that fires on one style-by-colour or style-by-shape combination correlates only about √(1/8) ≈ 0.35
with the style, which is where striped stays; the analysis then needs every such concept to shift.
``clip-all`` keeps the earlier extractor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from conceptedit.errors import ConceptEditError, RequestError

DINO_DEFAULT = "facebook/dinov2-with-registers-base"


class FeatureExtractor:
    """``tokens(images)`` → ``[n, T, d]`` (every token, the SAE's rows); ``pooled(images)`` → ``[n, d]``."""

    name: str = ""
    d: int = 0

    def tokens(self, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
        return torch.cat([self._tokens(list(images[s : s + batch_size])) for s in range(0, len(images), batch_size)])

    def fit(self, images: Sequence[Image.Image]) -> None:
        """Set any state taken from the real images (before :meth:`tokens`); most extractors have none."""

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image-level feature (first token: CLS) of :meth:`tokens`' output."""
        return tokens[:, 0]

    def _tokens(self, images: list[Image.Image]) -> torch.Tensor:
        raise NotImplementedError


class _HFExtractor(FeatureExtractor):
    def __init__(self, model: Any, processor: Any, name: str, device: str | torch.device = "cpu") -> None:
        self.model, self.processor, self.name = model.eval().to(device), processor, name
        self.device = device

    @torch.no_grad()
    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)


#: token sets of :class:`ClipFeatures`
CLIP_TOKENS = ("all", "corners", "centred")


class ClipFeatures(_HFExtractor):
    """The image tower of a ``CLIPModel`` folder, through its final layer norm.

    ``tokens="all"``: every token (CLS + patches), one SAE row each, as the paper does with DINOv2.
    ``tokens="centred"``: the same tokens less each position's mean over the real images (:meth:`fit`),
    the same offset for generated images. Why: a ViT's output tokens keep their position, so the SAE
    learns "hatching in the top-left patch", "... top-right", ... and a mark stamped at a random corner
    is split over position-bound concepts, none of which follows the mark. Subtracting the per-position
    mean removes what all images share at a position (positional embedding, the usual background) and
    leaves what the image puts there. Measured (``benchmarks/blindspots_features.py``, docstring figures).
    ``tokens="corners"``: CLS plus one token per image corner, the mean of the corner's patch block (a
    quarter of the grid's side: 2 x 2 patches of the shapes CLIP's 8 x 8), since the marks sit at corners.
    ``layers`` (1-based) are concatenated along the feature axis, each through ``post_layernorm`` so they
    share one scale; default: the last layer only."""

    def __init__(
        self,
        folder: str | Path,
        device: str | torch.device = "cpu",
        layers: Sequence[int] | None = None,
        tokens: str = "all",
    ) -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise RequestError(f"{folder} is not a CLIP folder (no config.json); give the model's clip/ folder")
        if tokens not in CLIP_TOKENS:
            raise RequestError(f"CLIP token set {tokens!r}: use one of {', '.join(CLIP_TOKENS)}")
        try:
            model = CLIPModel.from_pretrained(str(folder)).vision_model
            processor = CLIPImageProcessor.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise RequestError(f"cannot load CLIP from {folder}: {' '.join(str(exc).split())[:200]}") from None
        depth = int(model.config.num_hidden_layers)
        self.layers = tuple(int(x) for x in layers) if layers else (depth,)
        bad = [x for x in self.layers if not 1 <= x <= depth]
        if bad or len(set(self.layers)) != len(self.layers):
            raise RequestError(f"CLIP layers {list(self.layers)}: give distinct layers in 1..{depth}")
        self.grid = int(model.config.image_size) // int(model.config.patch_size)
        if tokens == "corners" and self.grid < 4:
            raise RequestError(f"a {self.grid} x {self.grid} patch grid has no corner blocks; use tokens=all")
        self.token_set = tokens
        self.offset: torch.Tensor | None = None  # per-position mean of the real images' tokens ("centred")
        tag = ("" if tokens == "all" else f"-{tokens}") + (
            "" if self.layers == (depth,) else "@" + ",".join(map(str, self.layers))
        )
        super().__init__(model, processor, f"clip{tag}:{folder}", device)
        self.d = int(model.config.hidden_size) * len(self.layers)

    @torch.no_grad()
    def _tokens(self, images: list[Image.Image]) -> torch.Tensor:
        out = self.model(pixel_values=self._pixels(images), output_hidden_states=True)
        # hidden_states[0] is the patch embedding; [i] the output of layer i (the last = last_hidden_state)
        x = torch.cat([self.model.post_layernorm(out.hidden_states[i]) for i in self.layers], dim=-1).float()
        if self.token_set == "corners":
            x = torch.cat([x[:, :1], corner_tokens(x[:, 1:], self.grid)], dim=1)
        if self.token_set == "centred":
            if self.offset is None:
                raise RequestError("clip-centred needs the real images first (ClipFeatures.fit)")
            x = x - self.offset
        return x.cpu()

    @torch.no_grad()
    def fit(self, images: Sequence[Image.Image]) -> None:
        """``centred``: the per-position mean token of ``images`` (the real images), in float64."""
        if self.token_set != "centred":
            return
        self.offset = None
        total = None
        for s in range(0, len(images), 64):
            out = self.model(pixel_values=self._pixels(list(images[s : s + 64])), output_hidden_states=True)
            x = torch.cat([self.model.post_layernorm(out.hidden_states[i]) for i in self.layers], dim=-1)
            part = x.detach().double().sum(0).cpu()
            total = part if total is None else total + part
        assert total is not None
        self.offset = (total / len(images)).float()


def corner_tokens(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """``[n, grid*grid, d]`` patch tokens → ``[n, 4, d]``: the mean of the ``grid//4``-sided block at each
    corner (top-left, top-right, bottom-left, bottom-right)."""
    k = grid // 4
    g = patches.reshape(patches.shape[0], grid, grid, patches.shape[-1])
    blocks = [g[:, :k, :k], g[:, :k, -k:], g[:, -k:, :k], g[:, -k:, -k:]]
    return torch.stack([b.mean(dim=(1, 2)) for b in blocks], dim=1)


class DinoFeatures(_HFExtractor):
    """DINOv2 (the paper's ViT-B/14 with registers by default) via ``transformers``; all tokens."""

    def __init__(self, source: str = DINO_DEFAULT, device: str | torch.device = "cpu", offline: bool = True) -> None:
        from transformers import AutoImageProcessor, AutoModel

        local = Path(source).expanduser().is_dir()
        try:
            model = AutoModel.from_pretrained(source, local_files_only=offline and not local)
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline and not local)
        except (OSError, ValueError) as exc:
            hint = "" if local else " (not in the hub cache and offline: download it once, or pass a local folder)"
            raise ConceptEditError(f"cannot load DINOv2 {source!r}{hint}: {' '.join(str(exc).split())[:160]}") from None
        if "dinov2" not in str(getattr(model.config, "model_type", "")):
            raise RequestError(f"{source!r} is a {model.config.model_type} model, not DINOv2")
        super().__init__(model, processor, f"dinov2:{source}", device)
        self.d = int(model.config.hidden_size)

    @torch.no_grad()
    def _tokens(self, images: list[Image.Image]) -> torch.Tensor:
        return self.model(pixel_values=self._pixels(images)).last_hidden_state.float().cpu()


#: the token set ``clip`` (no suffix) takes for the shipped shapes CLIP (measured: module docstring)
SHAPES_CLIP_TOKENS = "centred"


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise RequestError(f"CLIP layers {text!r}: give comma-separated layer numbers, e.g. clip@2,3") from None


def make_extractor(spec: str, pipe: Any = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """``auto`` (the model's shipped CLIP when its folder has one, else DINOv2), ``clip`` (the model's),
    ``clip:FOLDER``, ``dinov2`` (the paper's) or ``dinov2:NAME_OR_FOLDER``.

    ``clip-all`` / ``clip-centred`` / ``clip-corners`` choose the CLIP token set (:class:`ClipFeatures`;
    ``centred`` needs :meth:`FeatureExtractor.fit` on the real images first); ``@LAYERS``
    (1-based, comma-separated) after either picks layers, e.g. ``clip-all@2,3:FOLDER``. Plain ``clip``
    is ``clip-centred`` on the shipped shapes CLIP (:data:`SHAPES_CLIP_TOKENS`) and ``clip-all`` on any
    other CLIP; ``clip-all`` is the shapes extractor before that choice."""
    from conceptedit.loading import model_files

    kind, _, arg = spec.partition(":")
    kind, at, layer_text = kind.partition("@")
    shipped = model_files(pipe).get("clip") if pipe is not None else None
    if kind == "auto" and not at:
        kind = "clip" if shipped else "dinov2"
    if kind in ("clip", "clip-all", "clip-centred", "clip-corners"):
        folder = arg or shipped
        if not folder:
            raise RequestError(
                "the model ships no CLIP (conceptedit.json files.clip); use features=clip:FOLDER or dinov2"
            )
        layers = _parse_layers(layer_text) if at else None
        if kind == "clip":
            token_set = SHAPES_CLIP_TOKENS if _is_shapes_clip(folder) else "all"
        else:
            token_set = kind.removeprefix("clip-")
        return ClipFeatures(folder, device, layers, token_set)
    if kind == "dinov2" and not at:
        return DinoFeatures(arg or DINO_DEFAULT, device)
    raise RequestError(
        f"unknown feature extractor {spec!r}; use auto, clip[-all|-centred|-corners][@LAYERS][:FOLDER], "
        "dinov2 or dinov2:NAME"
    )


def _is_shapes_clip(folder: str | Path) -> bool:
    """Whether ``folder`` is the shipped shapes model's CLIP (the one the token set was measured on)."""
    from conceptedit.loading import builtin_model_dir

    try:
        return Path(folder).resolve() == (builtin_model_dir("shapes") / "clip").resolve()
    except (ConceptEditError, OSError, KeyError):  # no built-in shapes model in this install
        return False
