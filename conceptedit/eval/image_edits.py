"""Image-edit benchmarks: the eval config's ``image_edits:`` section (and ``benchmarks/colan_edits.py``).

An image-edit plugin (kind ``edit``, e.g. ``colan``) edits rendered images whose labels and masks are
known (a *case set*, registered through the entry-point group ``conceptedit.image_edit_cases``; built in:
``shapes``, the shapes world's renders read by its probe). Arms:

- ``plugin``: the plugin's own edit. A plugin with colan's backbone protocol (``encode``,
  ``transplant``, ``invert``, ``regenerate``) is run batched with one shared inversion per chunk; any
  other image-edit plugin through ``edit_image`` one case at a time, given ``"SRC -> TGT"`` or, with
  ``instruction: target_prompt``, the whole target prompt;
- baselines on the same backbone (colan's protocol only), which differ only in the edited embedding:
  ``swap`` (the source prompt with the word replaced, encoded: the paper's comparison) and
  ``direction`` (``v + s (d_tgt − d_src)`` with a fixed ``s``: P2P-Zero's ``c + Δc`` with Δc from the
  mean stimulus embeddings).

Metrics per arm (rates with k/n and 95 % Wilson intervals, means with a normal 95 % interval):
success (the reader sees the target class), consistency (every other family read as before), both;
background PSNR and ``clip_tok`` outside the source and target shapes (shape/colour/style edits),
silhouette IoU (colour/style/background edits); seconds: decomposition per edit, inversion and
regeneration per image. ``clip_tok`` is LPIPS-like but not LPIPS: per layer of a CLIP image tower,
patch tokens unit-normalised over channels, squared distance averaged over tokens and layers, no
learned weights; computed after pasting the source's pixels inside the mask into the edited image.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptedit.errors import ConfigError
from conceptedit.eval.verdicts import wilson
from conceptedit.registry import Registry

__all__ = [
    "ARMS", "BASELINES", "ClipTokDistance", "case_set", "edited_embeddings", "image_edit_lines", "iou",
    "mean", "psnr", "rate", "run_arms", "run_image_edits", "save_grid", "score", "silhouette",
]  # fmt: skip

BASELINES = ("swap", "direction")
ARMS = ("plugin", *BASELINES)
BACKBONE_PROTOCOL = ("encode", "dictionary", "transplant", "invert", "regenerate")
INSTRUCTIONS = ("edit", "target_prompt")


#: case sets: name -> class with ``families``, ``cases(n, seed, families)``, ``read(images)``, ``keep(cases,
#: read)`` and optionally ``distance(a, b)`` (entry-point group ``conceptedit.image_edit_cases``)
CASE_SETS: Registry[Any] = Registry("image-edit case set", group="conceptedit.image_edit_cases")


def case_set(name: str) -> Any:
    """A registered case set by name (built in: ``shapes``), instantiated."""
    if name not in CASE_SETS and name in CASE_SETS.broken:
        raise ConfigError(f"image-edit case set {name!r} failed to load: {CASE_SETS.broken[name]}")
    if name not in CASE_SETS:
        raise ConfigError(f"unknown image-edit case set {name!r}; registered: {', '.join(sorted(CASE_SETS)) or 'none'}")
    return CASE_SETS[name]()


def has_backbone(plugin: Any) -> bool:
    """Whether the plugin exposes colan's backbone protocol (batched arms and baselines)."""
    return all(callable(getattr(plugin, k, None)) for k in BACKBONE_PROTOCOL)


# ------------------------------------------------------------------------------------------ metrics
def silhouette(image: np.ndarray, background_rgb: tuple[int, int, int]) -> np.ndarray:
    """Pixels away from the background colour, closed and hole-filled (an outlined shape counts whole)."""
    from scipy.ndimage import binary_closing, binary_fill_holes

    d = np.linalg.norm(image.astype(float) - np.array(background_rgb, float), axis=-1)
    return binary_fill_holes(binary_closing(d > 60, iterations=1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float))[region] ** 2).mean()
    return float(10 * math.log10(255**2 / max(mse, 1e-10)))


class ClipTokDistance:
    """LPIPS-like distance on a CLIP image tower (unit-normalised patch tokens, no learned weights)."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import CLIPVisionModel

        folder = Path(folder)
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


def score(
    cases: list[Any],
    before: list[dict[str, str]],
    after: list[dict[str, str]],
    images: np.ndarray,
    distance: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    families: tuple[str, ...],
) -> dict[str, Any]:
    """Every metric of one arm, over all cases and per edited family."""
    rows = []
    tok = None
    if distance is not None:
        composite = images.copy()
        for i, c in enumerate(cases):
            composite[i][~c.outside] = c.image[~c.outside]
        tok = distance(np.stack([c.image for c in cases]), composite)
    for i, c in enumerate(cases):
        ok = after[i][c.family] == c.target
        same = all(after[i][f] == before[i][f] for f in before[i] if f != c.family)
        row: dict[str, Any] = {"family": c.family, "success": ok, "consistent": same, "both": ok and same}
        if c.family != "background":
            row["psnr_bg"] = psnr(images[i], c.image, c.outside)
            if tok is not None:
                row["clip_tok_bg"] = float(tok[i])
        if c.family != "shape":
            row["iou"] = iou(silhouette(images[i], c.background_rgb), c.silhouette)
        rows.append(row)

    def summary(rs: list[dict]) -> dict:
        out = {k: rate([r[k] for r in rs]) for k in ("success", "consistent", "both")}
        for k in ("psnr_bg", "clip_tok_bg", "iou"):
            out[k] = mean([r[k] for r in rs if k in r])
        return out

    return {"all": summary(rows), **{f: summary([r for r in rows if r["family"] == f]) for f in families}}


# ------------------------------------------------------------------------------------------ running
def edited_embeddings(
    plugin: Any, pipe: Any, cases: list[Any], baselines: tuple[str, ...] = BASELINES, strength: float = 1.0
) -> tuple[dict[str, torch.Tensor], list[float], list[dict[str, float]]]:
    """Per arm the edited prompt embeddings (colan's protocol), the seconds of each decomposition
    (transplant) and each case's concept weights."""
    plugin.dictionary(pipe)  # built once per pipeline, not part of an edit's time
    src = plugin.encode(pipe, [c.prompt for c in cases])
    edited, secs, weights = [], [], []
    for c in cases:
        t = time.perf_counter()
        e, w = plugin.transplant(pipe, c.prompt, c.source, c.target)
        secs.append(time.perf_counter() - t)
        edited.append(e.float())
        weights.append(w)
    embs = {"source": src, "plugin": torch.stack(edited).reshape(src.shape)}
    if "swap" in baselines:
        embs["swap"] = plugin.encode(pipe, [c.target_prompt for c in cases])
    if "direction" in baselines:
        dic = plugin.dictionary(pipe)
        delta = torch.stack([dic.atoms[dic.index(c.target)] - dic.atoms[dic.index(c.source)] for c in cases])
        embs["direction"] = src + strength * delta.float().reshape(src.shape)
    return embs, secs, weights


def run_arms(
    pipe: Any,
    plugin: Any,
    cases: list[Any],
    baselines: tuple[str, ...] = BASELINES,
    strength: float = 1.0,
    chunk: int = 40,
    log: Callable[[str], None] = lambda s: None,
    prepared: tuple[dict[str, torch.Tensor], list[float], list[dict[str, float]]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[dict[str, float]]]:
    """Edited images per arm (one shared inversion per chunk), timings and the concept weights
    (``prepared``: :func:`edited_embeddings`' result, when the caller needs the embeddings too)."""
    arms = ("plugin", *baselines)
    embs, secs, weights = prepared or edited_embeddings(plugin, pipe, cases, baselines, strength)
    out: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    t_inv, t_regen = 0.0, dict.fromkeys(arms, 0.0)
    for s in range(0, len(cases), chunk):
        images = np.stack([c.image for c in cases[s : s + chunk]])
        t = time.perf_counter()
        zt = plugin.invert(pipe, images, embs["source"][s : s + chunk])
        t_inv += time.perf_counter() - t
        for arm in arms:
            t = time.perf_counter()
            out[arm].append(plugin.regenerate(pipe, zt, embs["source"][s : s + chunk], embs[arm][s : s + chunk]))
            t_regen[arm] += time.perf_counter() - t
        log(f"  edited {min(s + chunk, len(cases))}/{len(cases)}")
    timing = {"decomposition_s": mean(secs), "inversion_s_per_image": t_inv / len(cases)}
    timing |= {f"regeneration_s_per_image_{a}": t_regen[a] / len(cases) for a in arms}
    return {a: np.concatenate(v) for a, v in out.items()}, timing, weights


def run_one_by_one(
    pipe: Any, plugin: Any, cases: list[Any], instruction: str
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[dict[str, float]]]:
    """The plugin arm of a plugin without colan's protocol: ``edit_image`` per case."""
    images, secs, weights = [], [], []
    for i, c in enumerate(cases):
        t = time.perf_counter()
        res = plugin.edit_image(pipe, c.image, c.prompt, c.edit if instruction == "edit" else c.target_prompt, seed=i)
        secs.append(time.perf_counter() - t)
        res = res if isinstance(res, dict) else {"image": res}
        images.append(np.asarray(res["image"], np.uint8))
        weights.append(dict(res.get("weights") or {}))
    return {"plugin": np.stack(images)}, {"edit_s": mean(secs)}, weights


def save_grid(
    path: Path, cases: list[Any], images: dict[str, np.ndarray], families: tuple[str, ...], per_family: int = 3
) -> Path:
    """A PNG of a few cases per edited family: the source, then each arm's edit (nearest-neighbour scaled)."""
    from PIL import Image, ImageDraw

    picks = [i for f in families for i in [j for j, c in enumerate(cases) if c.family == f][:per_family]]
    arms = list(images)
    cell, head, label_w = 96, 16, 150
    grid = Image.new("RGB", (label_w + cell * (1 + len(arms)), head + cell * len(picks)), "white")
    d = ImageDraw.Draw(grid)
    for k, name in enumerate(("source", *arms)):
        d.text((label_w + k * cell + 4, 2), name, fill="black")
    for r, i in enumerate(picks):
        d.text((4, head + r * cell + cell // 2 - 6), cases[i].edit, fill="black")
        for k, im in enumerate([cases[i].image] + [images[a][i] for a in arms]):
            grid.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (label_w + k * cell, head + r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def source_weights(cases: list[Any], weights: list[dict[str, float]]) -> dict[str, Any]:
    """The source concept's weight in each decomposition (colan: the transplant's step along Δ)."""
    w = [float(ws.get(c.source, 0.0)) for c, ws in zip(cases, weights, strict=True)]
    if not any(weights):
        return {}
    return {"median": float(np.median(w)), "zero": sum(x == 0 for x in w), "below_0.1": sum(x < 0.1 for x in w)}


def evaluate_spec(
    pipe: Any, spec: Any, log: Callable[[str], None] = lambda s: None, grid: Path | None = None
) -> dict[str, Any]:
    """One ``image_edits`` entry on one pipeline: cases, arms, scores, timings (JSON-able); with ``grid``,
    a PNG of a few cases per family there."""
    from conceptedit.registry import get_plugin

    t0 = time.perf_counter()
    cs = case_set(spec.cases)
    families = tuple(spec.families) or cs.families
    plugin = get_plugin(spec.plugin)(spec.config)
    drawn = cs.cases(spec.n, spec.seed, families)
    read = cs.read(np.stack([c.image for c in drawn]))
    keep = cs.keep(drawn, read)
    cases = [c for c, k in zip(drawn, keep, strict=True) if k]
    before = [r for r, k in zip(read, keep, strict=True) if k]
    if not cases:
        raise ConfigError(f"image edit {spec.name!r}: the reader misread all {len(drawn)} source images")
    log(f"{spec.name}: {len(cases)} of {len(drawn)} cases read correctly before the edit")
    if has_backbone(plugin):
        images, timing, weights = run_arms(
            pipe, plugin, cases, tuple(spec.baselines), spec.direction_strength, spec.chunk, log
        )
    else:
        images, timing, weights = run_one_by_one(pipe, plugin, cases, spec.instruction)
    if grid is not None:
        save_grid(grid, cases, images, families)
    distance = getattr(cs, "distance", None)
    arms = {a: score(cases, before, cs.read(imgs), imgs, distance, families) for a, imgs in images.items()}
    return {
        "name": spec.name,
        "plugin": spec.plugin,
        "cases": spec.cases,
        "n_drawn": len(drawn),
        "n": len(cases),
        "seed": spec.seed,
        "families": list(families),
        "arms": arms,
        "source_weight": source_weights(cases, weights),
        "timing": timing,
        "seconds_total": time.perf_counter() - t0,
    }


def run_image_edits(ev: Any, pipe: Any, mkey: str, model: str) -> list[dict[str, Any]]:
    """The config's ``image_edits`` on one model, each cached under ``<cache>/image_edits/<key>.json``."""
    from tqdm.auto import tqdm

    from conceptedit.config import config_to_dict
    from conceptedit.toolkit import payload_hash

    out = []
    for spec in ev.cfg.image_edits:
        key = payload_hash({"model": mkey, "spec": {k: v for k, v in config_to_dict(spec).items() if k != "name"}})
        path = ev.cfg.cache_path / "image_edits" / f"{key}.json"
        grid = path.with_suffix(".png")
        if path.is_file():
            res = json.loads(path.read_text())
        else:
            log = (lambda s: tqdm.write(s)) if ev.progress else (lambda s: None)
            res = evaluate_spec(pipe, spec, log, grid)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(res, indent=2, default=str))
        res = res | {"name": spec.name, "model": model}
        if grid.is_file():  # the report's copy, next to report.html
            shown = ev.out / f"image_edits_{_safe(model)}_{_safe(spec.name)}.png"
            shutil.copyfile(grid, shown)
            res["grid"] = shown.name
        out.append(res)
    return out


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


# ------------------------------------------------------------------------------------------ report
def _fmt_rate(r: dict) -> str:
    return f"{r['rate']:.2f} [{r['ci95'][0]:.2f},{r['ci95'][1]:.2f}] ({r['k']}/{r['n']})"


def _fmt_mean(m: dict, digits: int = 3) -> str:
    if not m["n"]:
        return "n/a"
    return f"{m['mean']:.{digits}f} [{m['ci95'][0]:.{digits}f},{m['ci95'][1]:.{digits}f}] (n={m['n']})"


def image_edit_lines(run: dict[str, Any], scopes: tuple[str, ...] | None = None) -> list[str]:
    """The text table of one image-edit run: per scope (all, then each family) two lines per arm."""
    lines = []
    for scope in scopes or ("all", *run["families"]):
        lines.append(f"== {run['name']} ({run['plugin']}, {run['cases']}, n={run['n']} of {run['n_drawn']}): {scope}")
        for arm, res in run["arms"].items():
            s = res[scope]
            lines.append(
                f"  {arm:<9} success {_fmt_rate(s['success'])}  consistent {_fmt_rate(s['consistent'])}"
                f"  both {_fmt_rate(s['both'])}"
            )
            lines.append(
                f"  {'':<9} psnr_bg {_fmt_mean(s['psnr_bg'], 2)}  clip_tok_bg {_fmt_mean(s['clip_tok_bg'])}"
                f"  iou {_fmt_mean(s['iou'])}"
            )
    t, w = run["timing"], run.get("source_weight") or {}
    if "decomposition_s" in t:
        lines.append(
            f"  seconds per image: decomposition {t['decomposition_s']['mean']:.3f}, inversion "
            f"{t['inversion_s_per_image']:.2f}, regeneration {t['regeneration_s_per_image_plugin']:.2f} (batched)"
        )
    elif "edit_s" in t:
        lines.append(f"  seconds per edit {t['edit_s']['mean']:.2f}")
    if w:
        lines.append(f"  source-concept weight: median {w['median']:.2f}, 0 in {w['zero']}, < 0.1 in {w['below_0.1']}")
    return lines


def image_edit_html(runs: list[dict[str, Any]]) -> list[str]:
    """The report's image-edit section: one table row per (run, arm), all cases."""
    import html

    if not runs:
        return []
    parts = [
        "<h2>Image edits</h2><table><tr><th>model</th><th>run</th><th>plugin</th><th>arm</th><th>success</th>"
        "<th>consistent</th><th>both</th><th>background PSNR (dB)</th><th>clip_tok outside</th>"
        "<th>silhouette IoU</th></tr>"
    ]
    for run in runs:
        for arm, res in run["arms"].items():
            s = res["all"]
            cells = [_fmt_rate(s[k]) for k in ("success", "consistent", "both")]
            cells += [_fmt_mean(s["psnr_bg"], 2), _fmt_mean(s["clip_tok_bg"]), _fmt_mean(s["iou"])]
            parts.append(
                f"<tr><td>{html.escape(run['model'])}</td><td>{html.escape(run['name'])}</td>"
                f"<td>{html.escape(run['plugin'])}</td><td>{html.escape(arm)}</td>"
                + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
                + "</tr>"
            )
    parts.append(
        "</table><p>Edits of rendered images with known labels (cases the reader misread before the edit are "
        "dropped). Success: the target class is read; consistent: every other family is read as before; "
        "rates k/n with a 95 % Wilson interval, means with a normal 95 % interval. Background metrics outside "
        "both shapes (shape/colour/style edits); IoU of the silhouette (colour/style/background edits).</p>"
    )
    for run in runs:
        parts.append(f"<pre>{html.escape(chr(10).join(image_edit_lines(run)))}</pre>")
        if run.get("grid"):
            parts.append(
                f"<p>{html.escape(run['name'])} on {html.escape(run['model'])}: source, then each arm</p>"
                f"<img src='{html.escape(run['grid'])}'>"
            )
    return parts
