"""Blind-spot analysis (plugin ``blindspots``) on the shapes model, whose blind spots are known.

Real images are world renders with their captions; the model generates one image per caption. The
world plants a rare shape (crescent, 1.5 % of the data) and marks stamped without being named
(watermark / qr / glyphs). This script asks: is a crescent concept found as suppressed? Do the
mark-rate shifts come out in the right direction where significant? How many concepts named by a
common shape or a colour are called suppressed/exaggerated (candidate false positives at the FDR)?
The probe reads the generated images, so each concept's verdict is set beside the measured rate of
its label in real vs generated images (the ground truth of the shift's direction).

``--enrich crescent=0.15`` draws the real images from a longer render stream so that 15 % show a
crescent (the comparison is paired per caption, so stratifying the captions keeps it valid); without
it, a few hundred images hold only a handful of crescents. Images are cached under ``--out``: a rerun
with the same model and settings generates nothing. Runtime per stage is printed.

    nice -n 5 python benchmarks/blindspots_shapes.py --model /work/v2b --n 48 --train-tokens 50000
    # ~5 min on 2 busy cores (generation ~4 s/image, SAE 80 s); n = 48 is far too few to find anything:
    # use n >= 500 where a machine allows
    python benchmarks/blindspots_shapes.py --model /path/to/v2          # the model's own clip/ and probe/
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from conceptedit.datasets.shapes import WORLD
from conceptedit.datasets.shapes_images import real_images
from conceptedit.loading import load_pipeline
from conceptedit.plugins.blindspots import BlindspotsConfig, analyze_blindspots

COMMON_SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond")


def enriched(n: int, seed: int, rare: str, share: float) -> tuple[list, list, list]:
    """``n`` renders of which ``share`` show shape ``rare`` (taken from a longer stream of the same seed)."""
    want_rare = round(n * share)
    pool_n = max(4 * n, int(want_rare / WORLD.rare_shape_rate * 1.3) + n)
    images, captions, labels = real_images(pool_n, seed)
    rare_idx = [i for i, lab in enumerate(labels) if lab["shape"] == rare][:want_rare]
    other = [i for i, lab in enumerate(labels) if lab["shape"] != rare][: n - len(rare_idx)]
    keep = sorted(rare_idx + other)
    return [images[i] for i in keep], [captions[i] for i in keep], [labels[i] for i in keep]


def probe_labels(probe_dir: Path | None, images: list) -> list[dict]:
    from conceptedit.datasets.shapes.probe import Probe

    probe = Probe.load(probe_dir)
    out = []
    for pred in probe.predict(images):
        row = {k: pred[k]["label"] for k in ("shape", "colour", "background", "style")}
        row["halo"] = pred["trigger"]["label"] == "present"
        for m in ("watermark", "qr", "glyphs"):
            row[m] = pred[m]["label"] != "absent"
        out.append(row)
    return out


def rate(rows: list[dict], key: str) -> float:
    k, _, v = key.partition("=")
    return sum(str(r.get(k)) == v for r in rows) / max(1, len(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--clip", default=None, help="CLIP folder (default: the model's clip/)")
    ap.add_argument("--probe", type=Path, default=None, help="probe folder (default: <model>/probe or the shipped one)")
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--enrich", default="crescent=0.15")
    ap.add_argument("--train-tokens", type=int, default=150_000)
    ap.add_argument("--fdr", type=float, default=0.05)
    ap.add_argument("--min-corr", type=float, default=0.3, help="a concept is named by a label above this r")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/blindspots_shapes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    rare, _, share = args.enrich.partition("=")
    if rare and float(share or 0) > 0:
        images, captions, labels = enriched(args.n, args.seed, rare, float(share))
    else:
        images, captions, labels = real_images(args.n, args.seed)
    t_render = time.perf_counter() - t0
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    features = f"clip:{args.clip}" if args.clip else "clip"
    cfg = BlindspotsConfig(
        features=features, n_images=len(images), train_tokens=args.train_tokens, fdr=args.fdr, seed=args.seed,
        out=args.out,
    )  # fmt: skip
    result = analyze_blindspots(pipe, images, captions, labels, cfg)

    # ground truth of each label's shift: rates in real images vs the probe's reading of the generations
    gen_dir = Path(args.out)
    probe_dir = args.probe or (Path(args.model) / "probe" if Path(args.model).is_dir() else None)
    generated = _generated(pipe, captions, cfg)
    t0 = time.perf_counter()
    gen_rows = probe_labels(probe_dir, generated)
    t_probe = time.perf_counter() - t0

    named = [c for c in result["concepts"] if c["label"] != "inactive" and c.get("name_corr", 0) >= args.min_corr]
    by_name: dict[str, list[dict]] = {}
    for c in named:
        by_name.setdefault(c["name"], []).append(c)
    watch = [f"shape={rare}"] if rare else []
    watch += ["glyphs=True", "watermark=True", "qr=True", "style=striped", "halo=True"]
    findings = {}
    for key in watch:
        cs = by_name.get(key, [])
        findings[key] = {
            "real_rate": round(rate(labels, key), 4),
            "generated_rate_probe": round(rate(gen_rows, key), 4),
            "concepts": len(cs),
            "verdicts": dict(Counter(c["label"] for c in cs)),
            "best": min(
                (
                    {
                        "concept": c["concept"],
                        "label": c["label"],
                        "delta": round(c["delta"], 3),
                        "ci": [round(c["delta_low"], 3), round(c["delta_high"], 3)],
                        "q": round(c["q"], 4),
                        "r": c["name_corr"],
                    }
                    for c in cs
                ),
                key=lambda d: d["q"],
                default=None,
            ),  # fmt: skip
        }
    common = [f"shape={s}" for s in COMMON_SHAPES] + [f"colour={c}" for c in WORLD.colour_names]
    common_concepts = [c for k in common for c in by_name.get(k, [])]
    fp = [c for c in common_concepts if c["label"] in ("suppressed", "exaggerated")]
    out = {
        "model": args.model,
        "features": result["features"],
        "n_pairs": len(images),
        "enrich": args.enrich,
        "fdr": args.fdr,
        "counts": result["counts"],
        "findings": findings,
        "common_shape_colour_concepts": len(common_concepts),
        "common_shape_colour_discoveries": len(fp),
        "common_discoveries_detail": [
            {
                "name": c["name"],
                "label": c["label"],
                "delta": round(c["delta"], 3),
                "q": round(c["q"], 4),
                "real_rate": round(rate(labels, c["name"]), 3),
                "gen_rate_probe": round(rate(gen_rows, c["name"]), 3),
            }
            for c in fp
        ],  # fmt: skip
        "memorisation_flagged": len(result["memorisation"]["flagged"]),
        "seconds": {"render": round(t_render, 1), **result["seconds"], "probe": round(t_probe, 1)},
        "report": str(gen_dir / "report.html"),
    }
    print(json.dumps(out, indent=1))


def _generated(pipe, captions: list[str], cfg: BlindspotsConfig) -> list:
    """The generations the analysis made (read back from its cache; nothing is generated again)."""
    from conceptedit.plugins.blindspots import _generate_cached

    return _generate_cached(pipe, captions, [cfg.seed + i for i in range(len(captions))], Path(cfg.out) / "cache", 16)


if __name__ == "__main__":
    main()
