"""Generated images cached on disk, keyed by (model, edits, prompt, negative prompt, seed, settings),
so a second run or config that needs the same image does not generate it again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image

from conceptedit.toolkit import payload_hash


def image_key(
    model_key: str, edit_keys: list[str], prompt: str, negative: str | None, seed: int, settings: dict[str, Any]
) -> str:
    payload = {
        "model": model_key,
        "edits": edit_keys,
        "prompt": prompt,
        "negative": negative,
        "seed": int(seed),
        "settings": settings,
    }
    return payload_hash(payload, 24)


class ImageCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "images"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> Image.Image | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError:  # a half-written file from a killed run: regenerate it
            return None

    def put(self, key: str, image: Image.Image) -> Path:
        """Write atomically (temp file + rename) so a killed run never leaves a partial PNG."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
        return path
