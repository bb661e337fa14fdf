"""The plugin toolkit: the small helpers that plugins, the CLI, the demo and the eval share.

Import them from here instead of writing a private twin; each is the one implementation in the
package. Importing this module is cheap (no torch, no diffusers), so the CLI can use it for its
defaults without slowing ``--help``.

- :data:`DEFAULT_MODEL`, :data:`MODEL_SETTINGS_FILE`, :data:`IMAGE_SUFFIXES`: shared names.
- :data:`Progress`, :func:`no_progress`: the progress callback every ``fit`` takes.
- :func:`tokenize`, :func:`encode_prompts`: prompts → ids / text-encoder states, as SD pipelines do.
- :func:`default_resolution`: the image size a model generates by default.
- :func:`expand_images`: image files and folders → image files.
- :func:`read_prompts`: prompts from a ``.txt`` (one per line) or a prompt CSV.
- :func:`parse_overrides`: ``key=value`` command-line pairs → dict.
- :func:`payload_hash`: a short, stable hash of a JSON payload (cache keys, config hashes).
- :func:`require_family`: refuse a pipeline of an unsupported model family before any work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conceptedit.errors import ConfigError, RequestError
from conceptedit.families import require_family

DEFAULT_MODEL = "shapes"  # the built-in model the CLI and the demo use when none is named
MODEL_SETTINGS_FILE = "conceptedit.json"  # generation defaults, plugin presets and data files of a model folder
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

Progress = Callable[[float, str], None]
"""``progress(fraction, message)``: ``fraction`` in [0, 1]; the CLI shows a bar, the demo Gradio's."""


def no_progress(_fraction: float, _message: str) -> None:
    """The default :data:`Progress`: report nothing."""
    return None


def tokenize(tokenizer: Any, prompts: list[str], device: Any = None) -> Any:
    """Token ids (and attention mask) padded to ``model_max_length``, exactly as SD 1.x/2.x pipelines
    tokenize (so positions and padding match what the UNet was trained on)."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return ids.to(device) if device is not None else ids


def encode_prompts(text_encoder: Any, tokenizer: Any, prompts: list[str]) -> Any:
    """Last hidden states of ``text_encoder`` for ``prompts`` (the conditioning a pipeline feeds the UNet)."""
    device = next(text_encoder.parameters()).device
    ids = tokenize(tokenizer, prompts, device)
    mask = ids.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(ids.input_ids, attention_mask=mask)[0]


def default_resolution(pipe: Any) -> int:
    """The image side the model generates by default: its shipped settings, else the UNet's sample size."""
    from conceptedit.loading import generation_defaults

    return int(generation_defaults(pipe).get("height") or pipe.unet.config.sample_size * pipe.vae_scale_factor)


def expand_images(paths: Iterable[str | Path], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files as given; a folder expands to the images inside it, sorted. A missing path or a
    folder without images is a :class:`RequestError`."""
    out: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise RequestError(f"folder {item} holds no images ({', '.join(suffixes)})")
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise RequestError(f"{item} is neither an image file nor a folder")
    return out


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a ``.csv`` in the prompt-set schema (its ``prompt`` column, read by the eval's one
    CSV reader) or from a text file, one prompt per line; blank entries are skipped."""
    from conceptedit.eval.prompts import read_prompt_csv

    path = Path(path)
    if path.suffix.lower() == ".csv":
        return [row.prompt for row in read_prompt_csv(path) if row.prompt.strip()]
    if not path.is_file():
        raise ConfigError(f"prompt file {path} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompt file {path} is not UTF-8 text: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_overrides(pairs: Iterable[str] | None, option: str = "--set", json_values: bool = False) -> dict[str, Any]:
    """``["lr=1e-5", "steps=20"]`` → ``{"lr": "1e-5", "steps": "20"}``. Values stay text (a config
    dataclass converts them) unless ``json_values``, where ``20`` → 20 and ``[1,2]`` → a list."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} expects key=value, got {pair!r}")
        value = value.strip()
        if json_values:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key.strip()] = value
    return out


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ≥ ``minimum``, else argparse's one-line usage error."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: give an integer >= {minimum}")
        return value

    return parse


def payload_hash(payload: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``payload`` as canonical JSON (sorted keys;
    values JSON cannot hold are written as ``str``). Equal payloads give equal hashes across runs."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


__all__ = [
    "DEFAULT_MODEL",
    "IMAGE_SUFFIXES",
    "MODEL_SETTINGS_FILE",
    "Progress",
    "default_resolution",
    "encode_prompts",
    "expand_images",
    "int_at_least",
    "no_progress",
    "parse_overrides",
    "payload_hash",
    "read_prompts",
    "require_family",
    "tokenize",
]
