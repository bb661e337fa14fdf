"""Full-size SD 1.5 and SDXL base pipelines with random weights, built from their published configs
(typed into ``tests/data/full_size/*.json``; nothing is downloaded), so the plugins' layer names,
shapes and memory are checked on the real architectures. The tokenizer is the tiny character
tokenizer of ``tests/tiny.py`` with filler entries up to the real vocabulary size (49,408), 77 tokens long."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).parent / "data" / "full_size"
MODELS = ("sd15", "sdxl")


def config(model: str) -> dict[str, Any]:
    """The typed-in configs of ``model`` (``sd15`` or ``sdxl``)."""
    if model not in MODELS:
        raise ValueError(f"unknown full-size model {model!r}; expected one of {MODELS}")
    return json.loads((CONFIGS / f"{model}.json").read_text())


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build parameters directly in ``dtype``: an fp32 SDXL UNet first (10 GB) would double the peak."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _tokenizer(settings: dict[str, Any], vocab_size: int) -> Any:
    """The character tokenizer padded with never-produced filler entries to the text encoder's vocabulary
    size (as CLIP's own tokenizer is: plugins that add tokens, Geom-Erasing's, check the two agree); the
    special tokens keep the highest ids (CLIP pools at the highest id)."""
    from tiny import write_char_tokenizer
    from transformers import CLIPTokenizer

    folder = write_char_tokenizer(Path(tempfile.mkdtemp()) / "tok", words=("cat", "dog", "red", "blue"))
    vocab = json.loads((folder / "vocab.json").read_text())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [t for t in vocab if t not in specials]
    tokens += [f"<|filler{i}|>" for i in range(vocab_size - len(tokens) - len(specials))]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens + specials)}))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), **settings)


def _text_encoder(cfg: dict[str, Any]) -> Any:
    import transformers
    from transformers import CLIPTextConfig

    cls = getattr(transformers, cfg["_class_name"])
    return cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")}))


def full_size_pipeline(model: str, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu") -> Any:
    """A ``StableDiffusionPipeline`` (``sd15``) or ``StableDiffusionXLPipeline`` (``sdxl``) of the published
    architecture with seeded random weights, every parameter in ``dtype``, built directly on ``device``
    (initialising 2.6 B parameters on a GPU takes seconds, on CPU minutes)."""
    import diffusers

    cfg = config(model)
    torch.manual_seed(seed)
    with _default_dtype(dtype), torch.device(device):
        parts: dict[str, Any] = {
            "unet": diffusers.UNet2DConditionModel.from_config(cfg["unet"]),
            "vae": diffusers.AutoencoderKL.from_config(cfg["vae"]),
            "text_encoder": _text_encoder(cfg["text_encoder"]),
        }
        if "text_encoder_2" in cfg:
            parts["text_encoder_2"] = _text_encoder(cfg["text_encoder_2"])
    for part in parts.values():
        part.to(dtype).eval()  # a few buffers are made in fp32 whatever the default
    scheduler_cls = getattr(diffusers, cfg["scheduler"]["_class_name"])
    parts["scheduler"] = scheduler_cls.from_config(cfg["scheduler"])
    parts["tokenizer"] = _tokenizer(cfg["tokenizer"], cfg["text_encoder"]["vocab_size"])
    pipeline_cls = getattr(diffusers, cfg["pipeline"])
    if "tokenizer_2" in cfg:
        parts["tokenizer_2"] = _tokenizer(cfg["tokenizer_2"], cfg["text_encoder_2"]["vocab_size"])
        pipe = pipeline_cls(**parts, **cfg.get("pipeline_config", {}), add_watermarker=False)
    else:
        pipe = pipeline_cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(pipe: Any) -> dict[str, int]:
    """Parameters per model component, to compare with the published sizes."""
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in names if getattr(pipe, n, None)}


class CornerDetector:
    """Geom-Erasing's detector for a random-weight model (which has no world to detect in): every
    concept it is asked about is 'present' in the top-left quarter of every image."""

    concepts = ("watermark",)

    def detect(self, images: Any) -> list[dict[str, Any]]:
        from conceptedit.detectors import Detection

        return [{c: Detection(True, 1.0, (0.0, 0.0, 0.5, 0.5)) for c in self.concepts} for _ in images]
