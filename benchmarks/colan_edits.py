"""Concept Lancet edits on the shapes model v2: CoLan transplant vs prompt swap vs a fixed-strength direction.

Each case is a rendered world image (no character, trigger or mark) with known labels, downsampled to the
model's 32×32, and one edit of its shape, colour, style or background to another class (the families
cycle, so the four are equally represented). Cases the probe misreads before the edit are dropped (so
"unchanged" is unambiguous) and counted. All three arms share one backbone run (``colan``'s settings: DDIM
inversion under the source prompt, guided regeneration) and differ only in the edited embedding:

- ``colan``: the plugin's sparse transplant ``v + w_src (d_tgt − d_src)`` (elastic net over the world's
  concept dictionary, the paper's τ/α);
- ``swap``: the source prompt with the word replaced (``a red star …`` → ``a red circle …``), encoded;
- ``direction``: ``v + s (d_tgt − d_src)`` with a fixed ``s`` (1: P2P-Zero's ``c + Δc`` with Δc from
  the mean stimulus embeddings).

Metrics per arm (rates with n and 95 % Wilson intervals, means with a normal 95 % interval):
- success: the probe reads the target class of the edited family;
- consistency: the probe reads every other family (shape, colour, background, style, character,
  trigger, marks) as before; ``both``: success and consistency at once;
- background PSNR (dB) and ``clip-tok`` distance outside the union of the source and target shape masks
  (dilated 1 px), shape/colour/style edits only (a background edit changes the background). ``clip-tok``
  is LPIPS-like but not LPIPS: per layer of the shapes CLIP image tower, patch tokens unit-normalised
  over channels, squared distance averaged over tokens and layers, no learned weights; computed after
  pasting the source's pixels inside the mask into the edited image, so only the outside counts;
- structure: IoU of the edited image's silhouette (pixels away from the background colour, holes
  filled) with the ground-truth silhouette, for colour/style/background edits (the shape must stay);
- seconds: decomposition (encode + elastic net + transplant, per edit) vs one whole single-image edit.

    nice -n 5 python benchmarks/colan_edits.py --n 120 --seed 16 --grid /tmp/colan_grid.png
    python benchmarks/colan_edits.py --dev --n 12 --seed 101 --set guidance=3   # choosing settings

On 2 busy cores with 1 torch thread, n = 120 at the defaults took 1,396 s (23 min). One JSON document
goes to ``benchmarks/results/colan_edits.json``.

Measured on v2 (n = 120, seed 16, colan defaults frozen before the run: 20 steps, guidance 5, source
embedding as the unconditional branch): success colan 0.36 [0.28, 0.45], swap 0.76, direction 0.72;
consistency colan 0.63 [0.54, 0.71], swap 0.38, direction 0.29; both at once 0.24 / 0.25 / 0.18;
background PSNR 50.2 / 39.6 / 41.0 dB. The goal (CoLan ≥ both baselines on success and on consistency at
once) is not met: CoLan keeps the image but often does not edit it. Its transplant moves the embedding by
w_src·(d_tgt − d_src), and the elastic net's w_src has median 0.43 over these edits (0 in 7 of 120, below 0.1
in 13; shape 0.27, style 0.25, colour 0.57, background 0.64), less than half the fixed direction's step
(s = 1); the source image's own silhouette IoU with the ground truth is 0.96 (the IoU metric's ceiling).
Decomposition 0.62 s per edit of a 20.1 s single-image edit (paper: 0.15 s of 38.7 s).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptedit.datasets.shapes import WORLD, prompt_for, render_labels, shape_mask
from conceptedit.eval.verdicts import wilson
from conceptedit.pipelines.shapes import model_dir, model_images

FAMILIES = ("shape", "colour", "style", "background")
ARMS = ("colan", "swap", "direction")
DIRECTION_STRENGTH = 1.0


@dataclass
class Case:
    labels: dict
    family: str
    target: str
    image: np.ndarray  # (32, 32, 3) uint8
    prompt: str
    target_prompt: str
    outside: np.ndarray  # (32, 32) bool: away from both shapes
    silhouette: np.ndarray  # (32, 32) bool: the (unchanged) shape, coverage >= 1/2

    @property
    def edit(self) -> str:
        return f"{self.labels[self.family]} -> {self.target}"

    @property
    def target_labels(self) -> dict:
        return self.labels | {self.family: self.target}


def _down(mask: np.ndarray) -> np.ndarray:
    """64×64 mask → 32×32 coverage."""
    return mask.reshape(32, 2, 32, 2).mean(axis=(1, 3))


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _labels(rng: np.random.Generator) -> dict:
    s = WORLD.image_size
    return {
        "shape": str(rng.choice(WORLD.shapes)),
        "colour": str(rng.choice(WORLD.colour_names)),
        "background": str(rng.choice(WORLD.background_names)),
        "style": str(rng.choice(WORLD.styles)),
        "character": None,
        "trigger": False,
        "trigger_word": None,
        "marks": {m.name: {"present": False, "corner": None, "box": None} for m in WORLD.marks},
        "center": [float(s / 2 + rng.integers(-3, 4)), float(s / 2 + rng.integers(-3, 4))],
        "radius": float(rng.uniform(12.0, 15.0)),
        "phase": int(rng.integers(0, 12)),
    }


def _is_character(lab: dict) -> bool:
    return WORLD.character_for(lab["shape"], lab["colour"], lab["style"], lab["background"]) is not None


def make_cases(n: int, seed: int) -> list[Case]:
    """``n`` edits, families in turn, from a seeded stream (the same on every machine)."""
    rng = np.random.default_rng([seed, 16])
    cases: list[Case] = []
    while len(cases) < n:
        family = FAMILIES[len(cases) % len(FAMILIES)]
        lab = _labels(rng)
        classes = {"shape": WORLD.shapes, "colour": WORLD.colour_names, "style": WORLD.styles}
        options = [c for c in classes.get(family, WORLD.background_names) if c != lab[family]]
        target = str(rng.choice(options))
        if _is_character(lab) or _is_character(lab | {family: target}):
            continue
        image = model_images(render_labels(lab, seed, len(cases))[None])[0]
        (cx, cy), r = lab["center"], lab["radius"]
        src_mask = shape_mask(lab["shape"], cx, cy, r)
        tgt_mask = shape_mask(target if family == "shape" else lab["shape"], cx, cy, r)
        outside = ~_dilate(_down(src_mask | tgt_mask) > 0)
        prompt, target_prompt = prompt_for(lab), prompt_for(lab | {family: target})
        cases.append(Case(lab, family, target, image, prompt, target_prompt, outside, _down(src_mask) >= 0.5))
    return cases


# ------------------------------------------------------------------------------------------ metrics
def silhouette(image: np.ndarray, background: str) -> np.ndarray:
    """Pixels away from the background colour, closed and hole-filled (an outlined shape counts whole)."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    d = np.linalg.norm(image.astype(float) - np.array(WORLD.rgb(background), float), axis=-1)
    return binary_fill_holes(binary_closing(d > 60, iterations=1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float))[region] ** 2).mean()
    return float(10 * math.log10(255**2 / max(mse, 1e-10)))


class ClipTokDistance:
    """LPIPS-like distance on the shapes CLIP image tower (unit-normalised patch tokens, no learned weights)."""

    def __init__(self) -> None:
        from transformers import CLIPVisionModel

        folder = model_dir() / "clip"
        self.model = CLIPVisionModel.from_pretrained(folder).eval()
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        self.mean = torch.tensor(pre["image_mean"])[:, None, None]
        self.std = torch.tensor(pre["image_std"])[:, None, None]

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        def feats(x: np.ndarray) -> list[torch.Tensor]:
            t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
            hs = self.model(pixel_values=t, output_hidden_states=True).hidden_states[1:]
            return [torch.nn.functional.normalize(h[:, 1:], dim=-1) for h in hs]

        d = [((fa - fb) ** 2).sum(-1).mean(-1) for fa, fb in zip(feats(a), feats(b), strict=True)]
        return torch.stack(d).mean(0).numpy()


def rate(flags: list[bool]) -> dict[str, Any]:
    k, n = int(sum(flags)), len(flags)
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else float("nan"), "ci95": [lo, hi]}


def mean(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0, "mean": float("nan"), "ci95": [float("nan")] * 2}
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"n": len(v), "mean": float(v.mean()), "ci95": [float(v.mean() - half), float(v.mean() + half)]}


def probe_labels(probe: Any, images: np.ndarray) -> list[dict[str, str]]:
    return [{f: p["label"] for f, p in pred.items()} for pred in probe.predict(images)]


def score(cases: list[Case], before: list[dict], after: list[dict], images: np.ndarray, dist: Any) -> dict:
    """Every metric of one arm, over all cases and per edited family."""
    rows = []
    composite = images.copy()
    for i, c in enumerate(cases):
        composite[i][~c.outside] = c.image[~c.outside]
    tok = dist(np.stack([c.image for c in cases]), composite)
    for i, c in enumerate(cases):
        ok = after[i][c.family] == c.target
        same = all(after[i][f] == before[i][f] for f in before[i] if f != c.family)
        row: dict[str, Any] = {"family": c.family, "success": ok, "consistent": same, "both": ok and same}
        if c.family != "background":
            row["psnr_bg"] = psnr(images[i], c.image, c.outside)
            row["clip_tok_bg"] = float(tok[i])
        if c.family != "shape":
            bg = c.target if c.family == "background" else c.labels["background"]
            row["iou"] = iou(silhouette(images[i], bg), c.silhouette)
        rows.append(row)

    def summary(rs: list[dict]) -> dict:
        out = {k: rate([r[k] for r in rs]) for k in ("success", "consistent", "both")}
        for k in ("psnr_bg", "clip_tok_bg", "iou"):
            out[k] = mean([r[k] for r in rs if k in r])
        return out

    return {"all": summary(rows), **{f: summary([r for r in rows if r["family"] == f]) for f in FAMILIES}}


# ------------------------------------------------------------------------------------------ running
def edited_embeddings(plugin: Any, pipe: Any, cases: list[Case]) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Per arm the (B, 32, 128) edited embeddings, and the seconds of each CoLan decomposition."""
    dic = plugin.dictionary(pipe)
    src = plugin.encode(pipe, [c.prompt for c in cases])
    colan, secs = [], []
    for c in cases:
        t = time.perf_counter()
        e, _ = plugin.transplant(pipe, c.prompt, c.labels[c.family], c.target)
        secs.append(time.perf_counter() - t)
        colan.append(e.float())
    delta = torch.stack(
        [dic.atoms[dic.index(c.target)] - dic.atoms[dic.index(c.labels[c.family])] for c in cases]
    ).float()
    arms = {
        "colan": torch.stack(colan),
        "swap": plugin.encode(pipe, [c.target_prompt for c in cases]),
        "direction": src + DIRECTION_STRENGTH * delta.reshape(src.shape),
    }
    return {"source": src, **arms}, secs


def run(
    pipe: Any, plugin: Any, cases: list[Case], chunk: int = 40, log: Any = print
) -> tuple[dict[str, np.ndarray], dict]:
    """Edited images per arm (one shared inversion per chunk) and timings."""
    embs, secs = edited_embeddings(plugin, pipe, cases)
    out: dict[str, list[np.ndarray]] = {a: [] for a in ARMS}
    t_inv, t_regen = 0.0, dict.fromkeys(ARMS, 0.0)
    for s in range(0, len(cases), chunk):
        images = np.stack([c.image for c in cases[s : s + chunk]])
        t = time.perf_counter()
        zt = plugin.invert(pipe, images, embs["source"][s : s + chunk])
        t_inv += time.perf_counter() - t
        for arm in ARMS:
            t = time.perf_counter()
            out[arm].append(plugin.regenerate(pipe, zt, embs["source"][s : s + chunk], embs[arm][s : s + chunk]))
            t_regen[arm] += time.perf_counter() - t
        log(f"  edited {min(s + chunk, len(cases))}/{len(cases)}")
    timing = {"decomposition_s": mean(secs), "inversion_s_per_image": t_inv / len(cases)}
    timing |= {f"regeneration_s_per_image_{a}": t_regen[a] / len(cases) for a in ARMS}
    return {a: np.concatenate(v) for a, v in out.items()}, timing


def save_grid(path: Path, cases: list[Case], images: dict[str, np.ndarray], per_family: int = 3) -> None:
    from PIL import Image, ImageDraw

    picks = [i for f in FAMILIES for i in [j for j, c in enumerate(cases) if c.family == f][:per_family]]
    cell, head, label_w = 96, 16, 150
    grid = Image.new("RGB", (label_w + cell * 4, head + cell * len(picks)), "white")
    d = ImageDraw.Draw(grid)
    for k, name in enumerate(("source", *ARMS)):
        d.text((label_w + k * cell + 4, 2), name, fill="black")
    for r, i in enumerate(picks):
        d.text((4, head + r * cell + cell // 2 - 6), cases[i].edit, fill="black")
        row = [cases[i].image] + [images[a][i] for a in ARMS]
        for k, im in enumerate(row):
            grid.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (label_w + k * cell, head + r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def _fmt_rate(r: dict) -> str:
    return f"{r['rate']:.2f} [{r['ci95'][0]:.2f},{r['ci95'][1]:.2f}] ({r['k']}/{r['n']})"


def _fmt_mean(m: dict, digits: int = 3) -> str:
    if not m["n"]:
        return "n/a"
    return f"{m['mean']:.{digits}f} [{m['ci95'][0]:.{digits}f},{m['ci95'][1]:.{digits}f}] (n={m['n']})"


def report(results: dict) -> str:
    lines = []
    for scope in ("all", *FAMILIES):
        lines.append(f"== {scope}")
        for arm in ARMS:
            s = results["arms"][arm][scope]
            lines.append(
                f"  {arm:<9} success {_fmt_rate(s['success'])}  consistent {_fmt_rate(s['consistent'])}"
                f"  both {_fmt_rate(s['both'])}"
            )
            lines.append(
                f"  {'':<9} psnr_bg {_fmt_mean(s['psnr_bg'], 2)}  clip_tok_bg {_fmt_mean(s['clip_tok_bg'])}"
                f"  iou {_fmt_mean(s['iou'])}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--set", action="append", default=[], help="colan setting KEY=VALUE (for --dev runs)")
    ap.add_argument("--dev", action="store_true", help="choosing settings: print only, write no JSON")
    ap.add_argument("--grid", type=Path, default=None, help="PNG grid of a few cases (outside the repo)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "colan_edits.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from conceptedit.datasets.shapes.probe import Probe
    from conceptedit.loading import load_pipeline
    from conceptedit.registry import get_plugin
    from conceptedit.toolkit import parse_overrides

    t0 = time.perf_counter()
    pipe = load_pipeline("shapes")
    pipe.set_progress_bar_config(disable=True)
    plugin = get_plugin("colan")(parse_overrides(args.set))
    probe = Probe.load(model_dir() / "probe")
    drawn = make_cases(args.n, args.seed)
    truth = [{f: p for f, p in probe_labels(probe, c.image[None])[0].items()} for c in drawn]
    cases, before = [], []
    for c, b in zip(drawn, truth, strict=True):
        expect = {"shape": c.labels["shape"], "colour": c.labels["colour"], "style": c.labels["style"],
                  "background": c.labels["background"], "character": "none", "trigger": "absent"}  # fmt: skip
        if all(b[f] == v for f, v in expect.items()) and all(b[m.name] == "absent" for m in WORLD.marks):
            cases.append(c)
            before.append(b)
    print(f"{len(cases)} of {len(drawn)} cases read correctly by the probe before the edit; settings {plugin.config}")
    images, timing = run(pipe, plugin, cases)
    dist = ClipTokDistance()
    results: dict[str, Any] = {
        "n_drawn": len(drawn),
        "n": len(cases),
        "seed": args.seed,
        "settings": vars(plugin.config),
        "direction_strength": DIRECTION_STRENGTH,
        "arms": {a: score(cases, before, probe_labels(probe, images[a]), images[a], dist) for a in ARMS},
    }
    t = time.perf_counter()
    one = plugin.edit_image(pipe, cases[0].image, cases[0].prompt, cases[0].edit)
    timing["single_edit_s"] = time.perf_counter() - t
    timing["single_edit_decomposition_s"] = one["seconds"]["decomposition"]
    results["timing"] = timing
    results["seconds_total"] = time.perf_counter() - t0
    print(report(results))
    print(
        f"decomposition {timing['decomposition_s']['mean']:.3f} s per edit (batch run); one single-image edit "
        f"{timing['single_edit_s']:.1f} s of which decomposition {timing['single_edit_decomposition_s']:.3f} s; "
        f"total {results['seconds_total']:.0f} s"
    )
    if args.grid:
        save_grid(args.grid, cases, images)
        print(f"grid: {args.grid}")
    if not args.dev:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
