"""Image feature extractors for the blind-spot analysis, behind one interface.

Bohacek, Fel et al. 2025 encode images with DINOv2 ViT-B/14 with registers and keep every token
(CLS + 4 registers + 256 patches); the SAE sees one row per token. :class:`DinoFeatures` does that
for real models (a local folder or the hub cache; offline it says so in one line). The shapes model
ships its own CLIP (both towers, ``clip/`` in its folder, read via ``conceptedit.loading.model_files``);
:class:`ClipFeatures` uses its image tower the same way (all tokens after the final layer norm), as
DINOv2 has never seen 32-pixel shapes.
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


class ClipFeatures(_HFExtractor):
    """The image tower of a ``CLIPModel`` folder: all tokens through the final layer norm."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise RequestError(f"{folder} is not a CLIP folder (no config.json); give the model's clip/ folder")
        try:
            model = CLIPModel.from_pretrained(str(folder)).vision_model
            processor = CLIPImageProcessor.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise RequestError(f"cannot load CLIP from {folder}: {' '.join(str(exc).split())[:200]}") from None
        super().__init__(model, processor, f"clip:{folder}", device)
        self.d = int(model.config.hidden_size)

    @torch.no_grad()
    def _tokens(self, images: list[Image.Image]) -> torch.Tensor:
        out = self.model(pixel_values=self._pixels(images))
        return self.model.post_layernorm(out.last_hidden_state).float().cpu()


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


def make_extractor(spec: str, pipe: Any = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """``auto`` (the model's shipped CLIP when its folder has one, else DINOv2), ``clip`` (the model's),
    ``clip:FOLDER``, ``dinov2`` (the paper's) or ``dinov2:NAME_OR_FOLDER``."""
    from conceptedit.loading import model_files

    kind, _, arg = spec.partition(":")
    shipped = model_files(pipe).get("clip") if pipe is not None else None
    if kind == "auto":
        kind = "clip" if shipped else "dinov2"
    if kind == "clip":
        folder = arg or shipped
        if not folder:
            raise RequestError(
                "the model ships no CLIP (conceptedit.json files.clip); use features=clip:FOLDER or dinov2"
            )
        return ClipFeatures(folder, device)
    if kind == "dinov2":
        return DinoFeatures(arg or DINO_DEFAULT, device)
    raise RequestError(f"unknown feature extractor {spec!r}; use auto, clip, clip:FOLDER, dinov2 or dinov2:NAME")
