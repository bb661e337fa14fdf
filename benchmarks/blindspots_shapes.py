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

``--plant-halo`` / ``--plant-crescent`` plant a known exaggeration / suppression (``plant_concepts.py``:
halo: a rank-8 UNet LoRA on the transformer blocks, 300 steps, on 256 renders that all carry the halo,
captioned without halo words; crescent: by default (``--crescent-plant uce``) the ``uce`` plugin erasing
"crescent" with its paper defaults, or (``lora``) a LoRA as the halo's on 2,048 pairs, half of them a
crescent caption over the scene drawn with a common shape, half ordinary pairs). Each is fitted once
(saved under ``--out/CONCEPT_KIND``, e.g. ``halo_lora``, ``crescent_uce``, and reused), applied as an Edit
for an analysis, removed, and the model analysed again. Reports go to
``--out/{base,halo_planted,halo_removed,crescent_planted,crescent_removed}/report.html``. ``--features``
picks the extractor (default ``clip``: ``clip-centred`` on the shapes CLIP; ``clip-all`` is the earlier
one, measured below as "previous").

    python benchmarks/blindspots_shapes.py --n 512 --out runs/bench/bs512 --threads 1 --plant-halo --plant-crescent

Measured on the shipped v2.1 (Dec 5, the same command, ``--out`` apart; the world's captions now read "with a
… background" in 30 % and name a carried mark in 25 %; n = 512, crescent enriched to 15 %):

- base: 0 suppressed, 2 exaggerated (#54, named crescent, r 0.52, δ 0.604 [0.571, 0.644], q 1e-5, while the
  probe reads crescents on 15.0 % of real and of generated images: a false discovery; #167, background gray,
  r 0.49, δ 0.612), 213 faithful, 41 inactive; 11 significant below the least shift. Common shape/colour
  concepts discovered: 0 of 32. Near copies: 0. The halo on captions that do not ask for it: 6.4 % (v2: 0.0 %
  on its own captions; `docs/shapes_model.md`: a caption naming a mark brings it).
- marks, probe real → generated: watermark 25.6 → 25.2 % (its concept #55, r 0.51, δ 0.494, faithful:
  right), qr 15.0 → 9.8 % (#3, r 0.35, δ 0.431, right direction, q 0.47), glyphs 13.9 → 14.3 % (#211, r
  0.19, never active); striped 16.8 → 7.2 % (#180, r 0.37, δ 0.529, the wrong direction, q 0.83).
- planted halo LoRA (fit 205 s): the halo on 14.7 % of unasked captions (6.4 % without); 9 of the 12
  concepts named halo found exaggerated, best #134 δ 0.702 [0.685, 0.718], q 7e-80; the LoRA is not
  surgical, so 17 of 32 common concepts are found too. Removed: the base's analysis exactly (cache hits).
- planted crescent (UCE): asked crescents 100 % → 13 %, all crescents 15.0 → 2.0 %. Found suppressed only
  through a weakly named concept, #192 (crescent, r 0.25) δ 0.205; the best-correlated #54 moves from 0.604
  to 0.518 (faithful). 2 + 9 discoveries, 1 of them a common concept. Removed: the base's analysis exactly.
- seconds: generation 105-109 per 512 images, analysis 1, SAE 4.5 (then loaded).

So on v2.1 the analysis still finds the planted exaggeration clearly and the planted suppression only
weakly, and it calls the (correctly drawn) crescent exaggerated on the base: the issue's goals for the
crescent are not met.

The same with ``--features clip-all`` (Dec 5, ``--n 512 --plant-crescent --out`` apart), whose crescent concept is
the best isolated (#54, r 0.71 against clip-centred's 0.52): base 0 suppressed, 2 exaggerated (two yellow concepts,
δ 0.614; 2 of 25 common concepts, the probe's yellow 15.8 → 17.6 %), crescent #54 faithful δ 0.557; with the UCE
plant (all crescents 15.0 → 2.0 %, asked 13 %) #54 stays faithful, δ 0.445 [0.405, 0.487], and only #221 (r 0.32)
is called suppressed (δ 0.216, q 0.049), beside 8 background concepts. So the centring is not what hides the
planted suppression: a concept of the thin curved outline that crescents share with hearts and blobs is what the
shapes CLIP's tokens give.

A natural blind spot, measured on the v2.2 candidate (Dec 5; not shipped, ``docs/shapes_model.md``: v2.1's UNet
fine-tuned 3,725 steps with no crescent in its latent pool), ``--model <candidate> --n 512``, no plant: the
crescent fell from 15.0 % of real images to 9.0 % of generations (asked for: 59.7 % of the 77 crescent captions),
a blind spot by under-representation. The analysis misses it. The label's best concept #54 (r 0.71 on real
images) stays faithful, δ 0.506 [0.478, 0.537]. Its top generated images are outlined shapes (an outlined
triangle, an outlined circle) as well as crescents, so the generations that miss the crescent keep its energy.
Only a weakly named concept (#221, r 0.32) is called suppressed, δ 0.215, q 0.027. The base also has 10
suppressed and 5 exaggerated concepts: eight weak "background=sky" concepts (r 0.41-0.44; the best sky concept,
r 0.90, is faithful), solid, yellow and gray. 1 of 25 common shape/colour concepts is among them: yellow,
probe 15.8 → 16.8 %. Runtime: generation 88 s, SAE 3 s. So the goal fails in the analysis itself, not only in
the model. At width 256 the crescent's concept is "a thin curved outline", not the shape. Wider SAEs do not help.
These runs used the new ``--sae-width``, the same generations (cache hits) and otherwise the same settings:
- 1,024: no crescent concept is discovered; the label's concept (r 0.62) has δ 0.544; 21 discoveries, 17 of
  them sky concepts.
- 4,096: 2,690 of the 4,096 concepts are inactive; the crescent's best concept has r 0.26 and δ 0.116 (not
  significant); all 22 discoveries are sky concepts.

The sky shift shows at every width. The probe reads every generated background right (1.00), so the
candidate's sky is probably a shade off, which the CLIP features see. Striped is missed the same way: the probe
reads 16.8 % → 8.4 %, and the label's concept (r 0.72-0.76) gives δ 0.47.

Measured on the shipped v2 (n = 512 real/generated pairs, crescent enriched to 15 %, SAE width 256 on
150k ``clip-centred`` tokens, FDR 0.05, least shift |δ - 0.5| >= 0.1; 2 shared cores at load 8-11,
Dec 2026):

- base: 0 suppressed, 0 exaggerated, 217 faithful, 39 inactive; 5 concepts significant below the
  least shift (previous, ``clip-all``: 1 + 1 found, 23 below). False positives among the 29 concepts
  named (r >= 0.3) by a common shape or colour: 0. Near copies: 0.
- marks, probe real -> generated (all under-produced): watermark 25.6 -> 20.5 %, qr 15.0 -> 9.4 %,
  glyphs 13.9 -> 10.4 %. Now one concept is named by a mark: #55 (watermark, r 0.51; previous best r
  0.25) δ 0.452 [0.410, 0.498], the right direction, q 0.25: not significant. qr's best concept #3
  (r 0.36, named background=black) δ 0.421 [0.329, 0.517], right direction, q 0.40; glyphs' best
  (#211, r 0.19) is almost never active (δ 0.0 [0.0, 0.5], q 0.35). None is significant, so none is in
  the wrong direction. Even a concept that were the mark exactly would give δ = gen / (real + gen) =
  0.445 (watermark), 0.385 (qr), 0.428 (glyphs): only qr's shift reaches the least shift of 0.1.
- striped: 16.8 -> 10.9 % (dotted 21.9 -> 14.3 %); best concept #180 (r 0.37) δ 0.474 [0.347, 0.582],
  right direction, q 0.85; an exact striped concept would give δ 0.394, just past the margin.
- crescent (v2 draws it when asked: probe 97.4 % of the 77 crescent captions): concept #54 (r 0.52)
  faithful, δ 0.594 [0.557, 0.635] (q 0.002, below the margin).
- halo asked: 17.8 % real, 17.6 % generated, 0.0 % on captions that do not ask for it; faithful.
- planted halo LoRA: the halo on 13.1 % of generations for captions that do not ask for it (0.0 %
  without). Found: 10 of the 12 concepts named halo=True exaggerated, the best #134 δ 0.697 [0.680,
  0.713], d_z +1.11, q 1e-88. The LoRA is not surgical (83 discoveries; yellow objects 15.8 -> 58.6 %,
  green 18.9 -> 2.5 %, purple 17.8 -> 2.5 %), so 11 common shape/colour concepts are found too, rightly.
- halo LoRA removed: 0 + 0 discoveries as the base, every generation a cache hit of the base's: the
  weights are restored bit for bit.
- planted crescent LoRA (2,048 pairs): the probe reads a crescent on 35.1 % of the 77 crescent
  captions (97.4 % without), but the LoRA is not surgical: on the other 435 captions the asked shape
  drops from 99.8 % to 46.7 % and 37 show a crescent-like shape, so the overall crescent rate barely
  moves (15.0 % real, 12.5 % generated). Not found as suppressed: the crescent concept #54 (r 0.52) is
  found exaggerated, δ 0.792 [0.762, 0.824], q 2e-33, as the broken shapes on other prompts light it
  (45 discoveries, 4 of them common shape/colour concepts). With 256 pairs it was the same (asked
  crescent 52 %, #54 δ 0.808, 52 discoveries), and with the LoRA on the cross-attention keys and
  values only (``layers="cross-kv"``, 2,048 pairs) worse: asked crescent 29.9 %, other prompts' shape
  39.8 %, 61 stray crescents, #54 exaggerated δ 0.781. The analysis reports what the planted model
  does (more crescent-concept energy overall); a surgical suppression plant is still to be found.
- crescent LoRA removed: 0 + 0 discoveries, as the base; every generation a cache hit of the base's.
- planted crescent by UCE (``--crescent-plant uce``, Dec 4, idle machine): asked crescents drop from
  97.4 % to 18.2 % (the probe; UCE draws a heart, a square or a blob instead), all crescents 15.0 % real
  → 2.7 % generated. Not found at n = 512: the concept best correlated with crescent (#54, r 0.52) does
  not move (δ 0.536 [0.484, 0.590]); the next (#251, r 0.31) has the right direction, δ 0.308 [0.195,
  0.443], q 0.12. 4 + 11 discoveries, 2 of them common colours in the wrong direction (green δ 0.635
  with the probe's green 18.9 → 16.4 %, blue δ 0.603 with 15.8 → 14.3 %).
- the same at n = 1,024 (``--out`` apart; generation 318 s at 2 threads): the planted crescent is found
  suppressed, but only through a weakly named concept: #128 (named crescent, r 0.27, under the 0.3 that
  names a finding) δ 0.313 [0.195, 0.451], q 0.049; the best-correlated crescent concept (#222, r 0.46)
  stays faithful (δ 0.532; 0.573 on the base). The base at n = 1,024 has 8 + 3 discoveries, one of them a
  false positive among the 24 common concepts (heart exaggerated, δ 0.653, with the probe's heart
  12.6 → 12.7 %): twice the pairs makes small shifts pass the FDR, and the least shift of 0.1 lets one
  through.
- seconds per stage: render 22; real features 14 (10 once the store exists); SAE 22 (once, then
  loaded in 0.03); generation 356 for 512 images (two workers); planted generation 327 (two workers);
  analysis (generated features, statistics, bootstrap) 5.5-6.4; probe 4. LoRA fits: halo 1,328 s,
  crescent 1,243 s (256 pairs) and 666 s (2,048 pairs) wall at load 8-11, one thread each.
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
from conceptedit.toolkit import int_at_least

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


def summarise(
    result: dict, labels: list[dict], real_rows: list[dict], gen_rows: list[dict], rare: str, min_corr: float
) -> dict:
    """The benchmark's questions answered from one analysis: named findings, false discoveries, rates."""
    named = [c for c in result["concepts"] if c["label"] != "inactive" and c.get("name_corr", 0) >= min_corr]
    by_name: dict[str, list[dict]] = {}
    for c in named:
        by_name.setdefault(c["name"], []).append(c)
    watch = [f"shape={rare}"] if rare else []
    watch += ["glyphs=True", "watermark=True", "qr=True", "style=striped", "style=dotted", "halo=True"]
    unasked = [i for i, lab in enumerate(labels) if not lab["halo"]]
    findings = {}
    for key in watch:
        cs = by_name.get(key, [])
        findings[key] = {
            "real_rate": round(rate(labels, key), 4),
            "real_rate_probe": round(rate(real_rows, key), 4),
            "generated_rate_probe": round(rate(gen_rows, key), 4),
            "concepts": len(cs),
            "verdicts": dict(Counter(c["label"] for c in cs)),
            "best": min((_brief(c) for c in cs), key=lambda d: d["q"], default=None),
        }
        if key in result.get("labels", {}):  # the concept that carries this label best, named by it or not
            j = result["labels"][key]
            lc = _brief(result["concepts"][j["concept"]]) | {"r_label": j["r"]}
            # the direction the probe measures (generated vs real rate) against the concept's δ - 0.5
            shift = findings[key]["generated_rate_probe"] - findings[key]["real_rate_probe"]
            lc["direction_right"] = bool(shift * (lc["delta"] - 0.5) > 0) if shift and lc["r_label"] > 0 else None
            findings[key]["label_concept"] = lc
    findings["halo=True"]["generated_rate_probe_unasked"] = round(rate([gen_rows[i] for i in unasked], "halo=True"), 4)
    if rare:  # the rare shape where the caption asks for it (the planted suppression acts there)
        asked = [i for i, lab in enumerate(labels) if lab["shape"] == rare]
        findings[f"shape={rare}"]["generated_rate_probe_asked"] = round(
            rate([gen_rows[i] for i in asked], f"shape={rare}"), 4
        )
    common = [f"shape={s}" for s in COMMON_SHAPES] + [f"colour={c}" for c in WORLD.colour_names]
    common_concepts = [c for k in common for c in by_name.get(k, [])]
    fp = [c for c in common_concepts if c["label"] in ("suppressed", "exaggerated")]
    found = sorted((c for c in result["concepts"] if c["label"] in ("suppressed", "exaggerated")), key=lambda c: c["q"])
    return {
        "counts": result["counts"],
        "significant_below_min_shift": result.get("significant_below_min_shift"),
        "discoveries": [_brief(c) | {"name": c.get("name")} for c in found],
        "findings": findings,
        "common_shape_colour_concepts": len(common_concepts),
        "common_shape_colour_discoveries": len(fp),
        "common_discoveries_detail": [
            _brief(c)
            | {
                "name": c["name"],
                "real_rate": round(rate(labels, c["name"]), 3),
                "gen_rate_probe": round(rate(gen_rows, c["name"]), 3),
            }
            for c in fp
        ],  # fmt: skip
        "memorisation_flagged": len(result["memorisation"]["flagged"]),
        "seconds": result["seconds"],
    }


def _brief(c: dict) -> dict:
    return {
        "concept": c["concept"], "label": c["label"], "delta": round(c["delta"], 3),
        "ci": [round(c["delta_low"], 3), round(c["delta_high"], 3)], "d_z": round(c["effect"], 3),
        "q": float(f"{c['q']:.3g}"), "significant": bool(c.get("significant")), "r": c.get("name_corr"),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--clip", default=None, help="CLIP folder (default: the model's clip/)")
    ap.add_argument(
        "--features", default="clip",
        help="extractor: clip (the shapes default, = clip-centred), clip-all (all tokens, the earlier default), "
        "clip-corners, with @LAYERS if wanted (see plugins/_blindspots_features.py)",
    )  # fmt: skip
    ap.add_argument("--probe", type=Path, default=None, help="probe folder (default: <model>/probe or the shipped one)")
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--enrich", default="crescent=0.15")
    ap.add_argument("--train-tokens", type=int, default=150_000)
    ap.add_argument("--sae-width", type=int_at_least(1), default=256, help="SAE concepts (the plugin's default 256)")
    ap.add_argument("--fdr", type=float, default=0.05)
    ap.add_argument("--min-shift", type=float, default=0.1, help="least |δ - 0.5| of a discovery (0: FDR alone)")
    ap.add_argument("--min-corr", type=float, default=0.3, help="a concept is named by a label above this r")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench/blindspots_shapes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--plant-halo", action="store_true",
        help="also fit a LoRA that draws the halo unasked (benchmarks/plant_halo.py; saved under --out/halo_lora, "
        "reused when there), analyse with it applied and again after removing it",
    )  # fmt: skip
    ap.add_argument("--halo-steps", type=int, default=300)
    ap.add_argument(
        "--plant-crescent",
        action="store_true",
        help="also fit a LoRA that draws other shapes for crescent prompts (benchmarks/plant_concepts.py; saved "
        "under --out/crescent_lora, reused when there), analyse with it applied and again after removing it",
    )
    ap.add_argument("--crescent-steps", type=int, default=300)
    ap.add_argument(
        "--crescent-plant", choices=("lora", "uce"), default="uce",
        help="the crescent plant: uce (the uce plugin erasing 'crescent', closed form, surgical) or lora "
        "(plant_concepts.py's LoRA on mismatched pairs, which breaks other shapes too)",
    )  # fmt: skip
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
    features = f"{args.features}:{args.clip}" if args.clip else args.features
    cfg = BlindspotsConfig(
        features=features, n_images=len(images), train_tokens=args.train_tokens, sae_width=args.sae_width, fdr=args.fdr,
        min_shift=args.min_shift, seed=args.seed, out=args.out,
    )  # fmt: skip
    out_dir = Path(args.out)
    probe_dir = args.probe or (Path(args.model) / "probe" if Path(args.model).is_dir() else None)
    real_rows = probe_labels(probe_dir, images)

    def run(tag: str) -> dict:
        """One analysis of the pipeline as it is now (report under --out/TAG) and its summary."""
        result = analyze_blindspots(pipe, images, captions, labels, cfg, report_dir=out_dir / tag)
        t = time.perf_counter()
        gen_rows = probe_labels(probe_dir, _generated(pipe, captions, cfg))  # read back from the cache
        summary = summarise(result, labels, real_rows, gen_rows, rare, args.min_corr)
        summary["seconds"] = {**summary["seconds"], "probe": round(time.perf_counter() - t, 1)}
        summary["report"] = str(out_dir / tag / "report.html")
        return summary

    report = {
        "model": args.model, "features": features, "n_pairs": len(images), "enrich": args.enrich, "fdr": args.fdr,
        "min_shift": args.min_shift,
        "render_seconds": round(t_render, 1), "base": run("base"),
    }  # fmt: skip
    if args.plant_halo:
        report |= plant_runs("halo", pipe, out_dir, args.halo_steps, args.seed, run)
    if args.plant_crescent:
        report |= plant_runs("crescent", pipe, out_dir, args.crescent_steps, args.seed, run, args.crescent_plant)
    print(json.dumps(report, indent=1))


def plant_runs(concept: str, pipe, out_dir: Path, steps: int, seed: int, run, kind: str = "lora") -> dict:
    """A planted blind spot (``plant_concepts.py``): analysis with its edit (a LoRA, or for the crescent
    the UCE erasure) applied, then again after removing it (reports ``CONCEPT_planted`` and
    ``CONCEPT_removed``)."""
    from plant_concepts import plant_crescent_uce, plant_lora

    from conceptedit.edits import Edit

    folder = out_dir / f"{concept}_{kind}"
    t = time.perf_counter()
    if (folder / "manifest.json").is_file():
        edit = Edit.load(folder)
    else:
        edit = plant_crescent_uce(pipe) if kind == "uce" else plant_lora(pipe, concept, steps=steps, seed=seed)
        edit.save(folder)
    fit = round(time.perf_counter() - t, 1)
    handle = edit.apply(pipe)
    try:
        planted = run(f"{concept}_planted")
    finally:
        handle.remove()
    planted["seconds"] = {"lora_fit_or_load": fit, **planted["seconds"]}
    return {f"{concept}_{kind}": {"folder": str(folder), **edit.manifest.extra}, f"{concept}_planted": planted,
            f"{concept}_removed": run(f"{concept}_removed")}  # fmt: skip


def _generated(pipe, captions: list[str], cfg: BlindspotsConfig) -> list:
    """The generations the analysis made (read back from its cache; nothing is generated again)."""
    from conceptedit.plugins.blindspots import _generate_cached

    return _generate_cached(pipe, captions, [cfg.seed + i for i in range(len(captions))], Path(cfg.out) / "cache", 16)


if __name__ == "__main__":
    main()
