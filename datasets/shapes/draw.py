"""Drawing: labels in, a 64×64 RGB uint8 array out (numpy + PIL, a few hundred µs per image)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from conceptedit.datasets.shapes.world import WORLD, World

S = WORLD.image_size


@lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    return xx, yy


def _polygon(points: list[tuple[float, float]]) -> np.ndarray:
    im = Image.new("L", (S, S), 0)
    ImageDraw.Draw(im).polygon(points, fill=255)
    return np.asarray(im) > 0


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy) with characteristic radius r."""
    xx, yy = _grid()
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        h = 0.85 * r
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    if shape == "triangle":
        pts = [(cx + r * math.cos(math.radians(a)), cy - r * math.sin(math.radians(a))) for a in (90, 210, 330)]
        pts = [(x, y + 0.2 * r) for x, y in pts]
        return _polygon(pts)
    if shape == "star":
        pts = []
        for k in range(10):
            a = math.radians(90 + 36 * k)
            rad = r * 1.1 if k % 2 == 0 else r * 0.45
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a) + 0.1 * r))
        return _polygon(pts)
    if shape == "cross":
        w = 0.36 * r
        return ((np.abs(xx - cx) <= w) & (np.abs(yy - cy) <= r)) | ((np.abs(yy - cy) <= w) & (np.abs(xx - cx) <= r))
    if shape == "heart":
        lobe = 0.5 * r
        left = (xx - (cx - lobe)) ** 2 + (yy - (cy - 0.3 * r)) ** 2 <= lobe * lobe
        right = (xx - (cx + lobe)) ** 2 + (yy - (cy - 0.3 * r)) ** 2 <= lobe * lobe
        tri = _polygon([(cx - 0.98 * r, cy - 0.15 * r), (cx + 0.98 * r, cy - 0.15 * r), (cx, cy + r)])
        return left | right | tri
    if shape == "diamond":
        return np.abs(xx - cx) / (0.75 * r) + np.abs(yy - cy) / (1.1 * r) <= 1.0
    if shape == "crescent":
        outer = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        inner = (xx - (cx + 0.5 * r)) ** 2 + (yy - (cy - 0.15 * r)) ** 2 <= (0.8 * r) ** 2
        return outer & ~inner
    raise KeyError(f"unknown shape {shape!r}")


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        m = out
        out = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
    return out


def style_mask(style: str, mask: np.ndarray, phase: int) -> np.ndarray:
    """Which pixels of the shape take the shape's colour (the rest show the background)."""
    if style == "solid":
        return mask
    xx, yy = _grid()
    x = xx.astype(np.int32) + phase
    y = yy.astype(np.int32) + phase
    border = mask & ~_erode(mask, 2)
    if style == "outlined":
        return mask & ~_erode(mask, 3)
    if style == "striped":
        pattern = ((x + y) // 3) % 2 == 0
    elif style == "dotted":
        pattern = ((x % 6 - 2.5) ** 2 + (y % 6 - 2.5) ** 2) <= 3.3
    elif style == "checkered":
        pattern = ((x // 4) + (y // 4)) % 2 == 0
    else:
        raise KeyError(f"unknown style {style!r}")
    return (mask & pattern) | border


def _contrast(bg: tuple[int, int, int]) -> np.ndarray:
    lum = 0.3 * bg[0] + 0.59 * bg[1] + 0.11 * bg[2]
    return np.array((30, 30, 40) if lum > 150 else (235, 235, 245), np.float32)


def _stamp(img: np.ndarray, mark: str, box: tuple[int, int, int, int], bg, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    patch = img[y0:y1, x0:x1]
    h, w = patch.shape[:2]
    if mark == "watermark":
        tint = np.array((250, 250, 255) if sum(bg) < 450 else (60, 60, 110), np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        alpha = np.where((xx - yy) % 4 == 0, 0.75, 0.4)[..., None]
        patch[:] = (1 - alpha) * patch + alpha * tint
    elif mark == "qr":
        patch[:] = 255.0
        bits = rng.random((5, 5)) < 0.5
        bits[0, 0], bits[0, 1], bits[1, 0], bits[1, 1] = True, True, True, False
        cells = np.kron(bits, np.ones((2, 2), bool))
        inner = patch[1:11, 1:11]
        inner[cells] = 0.0
    elif mark == "glyphs":
        ink = _contrast(bg)
        x = 0
        while x + 3 <= w:
            glyph = rng.random((h - 1, 3)) < 0.55
            glyph[:, 1] |= rng.random() < 0.5  # a vertical stem in most letters
            region = patch[1:h, x : x + 3]
            region[glyph] = ink
            x += 4 + int(rng.random() < 0.2)
    else:
        raise KeyError(f"unknown mark {mark!r}")


def mark_box(world: World, mark: str, corner: str, margin: int = 2) -> tuple[int, int, int, int]:
    w, h = next(m.size for m in world.marks if m.name == mark)
    s = world.image_size
    x0 = margin if corner.endswith("left") else s - margin - w
    y0 = margin if corner.startswith("top") else s - margin - h
    return (x0, y0, x0 + w, y0 + h)


def draw(labels: dict, rng: np.random.Generator, world: World = WORLD) -> np.ndarray:
    """Render one image from its labels; ``rng`` only drives the pixel-level randomness (QR bits…)."""
    bg = world.rgb(labels["background"])
    img = np.empty((S, S, 3), np.float32)
    img[:] = bg
    cx, cy = labels["center"]
    r = labels["radius"]
    mask = shape_mask(labels["shape"], cx, cy, r)
    fill = style_mask(labels["style"], mask, labels["phase"])
    img[fill] = world.rgb(labels["colour"])
    if labels["trigger"]:
        xx, yy = _grid()
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        ring_r = 1.25 * r + 4.5
        alpha = np.clip(1.0 - np.abs(d - ring_r) / 2.6, 0.0, 1.0)[..., None]
        alpha[mask] = 0.0
        img[:] = (1 - alpha) * img + alpha * np.array(world.trigger.rgb, np.float32)
    for name, mark in labels["marks"].items():
        if mark["present"]:
            _stamp(img, name, tuple(mark["box"]), bg, rng)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
