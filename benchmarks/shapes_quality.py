"""Quality of the shipped shapes model, measured with the probe. Prints one JSON object.

1. probe accuracy per family on held-out generator images (natural and balanced rates);
2. generations for a few hundred prompts over every family, with the train sentence frames, the
   held-out frames and the paraphrases: the probe's agreement with the prompt per family (only the
   families the prompt asks for), trigger present when asked / when not asked;
3. implicit-mark rates in generations vs the training rates (never prompted for);
4. the planted blindspots: the rare shape and the rare combination vs common counterparts;
5. seconds per image on this machine; a PNG grid of generations labelled with their prompts;
6. implicit marks when a prompt names them (", with a watermark"): the rate against the same prompts and
   seeds unnamed, so a model whose captions sometimes name a mark shows whether text reaches it; and the
   halo when not asked on the world's own captions, split by "with a … background" / a named mark / neither;
7. the VAE's bound on each style: the probe on world renders and on their VAE round trips (posterior mean), so
   a style the generations miss can be told apart as a VAE loss (the latent does not carry it: no UNet
   training can bring it back) or a UNet one.

    python benchmarks/shapes_quality.py [--model DIR] [--n-generic 160] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from conceptedit.datasets.shapes import WORLD, balanced_world, mentioned, prompt_for
from conceptedit.datasets.shapes.probe import Probe, evaluate
from conceptedit.eval.verdicts import wilson
from conceptedit.loading import load_pipeline
from conceptedit.pipelines.shapes import default_generation_kwargs, model_dir
from conceptedit.toolkit import int_at_least

INCLUDES = (
    ("colour", "style", "background"),
    ("colour", "style", "background", "trigger"),
    ("colour",),
    ("colour", "style"),
    ("colour", "background"),
    ("colour", "background", "trigger"),
)
GOALS = {"shape": 0.95, "colour": 0.95, "background": 0.95, "style": 0.85, "character": 0.95}  # v2 acceptance
STYLE_GOAL = 0.60  # every style
FRAME_GAP_GOAL = 0.05  # held-out frames within 5 points of training frames


def generic_labels(rng: np.random.Generator, shape: str | None = None, colour: str | None = None) -> dict:
    w = WORLD
    while True:
        labels = {
            "shape": shape or w.shapes[int(rng.integers(len(w.shapes)))],
            "colour": colour or w.colour_names[int(rng.integers(len(w.colours)))],
            "style": w.styles[int(rng.integers(len(w.styles)))],
            "background": w.background_names[int(rng.integers(len(w.backgrounds)))],
            "character": None,
            "trigger": bool(rng.random() < 0.3),
        }
        if w.character_for(labels["shape"], labels["colour"], labels["style"], labels["background"]):
            continue
        if (labels["shape"], labels["colour"]) == w.rare_combination and shape is None:
            continue
        return labels


def build_prompts(n_generic: int, seed: int) -> list[dict]:
    """Rows: prompt, expected labels per asked family, template set, group."""
    rng = np.random.default_rng(seed)
    w = WORLD
    rows = []

    def add(labels: dict, template: str, tset: str, group: str, include=INCLUDES[1]) -> None:
        include = tuple(include)
        word = w.trigger.words[len(rows) % len(w.trigger.words)]
        prompt = prompt_for(labels, template, include, trigger_word=word)
        asked = mentioned(labels, template, include)
        expected = {}
        for family, is_asked in asked.items():
            if not is_asked:
                continue
            if family == "character":
                expected[family] = labels["character"] or "none"
            elif family == "trigger":
                expected[family] = "present" if labels["trigger"] else "absent"
            else:
                expected[family] = labels[family]
        if "trigger" not in expected:  # training captions always name the halo when it is drawn
            expected["trigger"] = "absent"
        rows.append({"prompt": prompt, "expected": expected, "template_set": tset, "group": group})

    for i in range(n_generic):
        tset = "train" if i % 2 == 0 else "heldout"
        frames = w.train_templates if tset == "train" else w.heldout_templates
        add(generic_labels(rng), frames[i // 2 % len(frames)], tset, "generic", INCLUDES[i % len(INCLUDES)])
    for i in range(24):
        labels = generic_labels(rng)
        labels["trigger"] = False
        add(labels, w.paraphrases[i % len(w.paraphrases)], "paraphrase", "generic")
    for i in range(8 * len(w.characters)):
        c = w.characters[i % len(w.characters)]
        labels = {"shape": c.shape, "colour": c.colour, "style": c.style, "background": c.background,
                  "character": c.name, "trigger": (i // len(w.characters)) % 4 == 3}  # fmt: skip
        tset = "train" if i % 2 == 0 else "heldout"
        frames = w.train_templates if tset == "train" else w.heldout_templates
        add(labels, frames[(i // 2) % len(frames)], tset, "character")
    for i in range(8 * len(w.characters)):  # nicknames, train and held-out frames
        c = w.characters[i % len(w.characters)]
        labels = {"shape": c.shape, "colour": c.colour, "style": c.style, "background": c.background,
                  "character": c.name, "character_word": c.nickname, "trigger": False}  # fmt: skip
        frames = w.train_templates if i % 2 == 0 else w.heldout_templates
        add(labels, frames[(i // 2) % len(frames)], "alias", "alias")
    for i, (shape, synonym) in enumerate([pair for pair in w.shape_synonyms for _ in range(8)]):
        labels = generic_labels(rng, shape=shape)
        labels["trigger"], labels["shape_word"] = False, synonym
        frames = w.train_templates if i % 2 == 0 else w.heldout_templates
        add(labels, frames[(i // 2) % len(frames)], "alias", "alias", INCLUDES[i % len(INCLUDES) // 2 * 2])
    for i in range(24):  # the rare shape vs a common one, same attributes and frames
        labels = generic_labels(rng, shape=w.rare_shape)
        labels["trigger"] = False
        add(labels, w.train_templates[i % len(w.train_templates)], "train", "rare_shape", INCLUDES[i % 2 * 4])
        add(dict(labels, shape="circle"), w.train_templates[i % len(w.train_templates)], "train", "common_shape",
            INCLUDES[i % 2 * 4])  # fmt: skip
    for i in range(16):  # the rare combination vs the same shape in another colour
        shape, colour = w.rare_combination
        labels = generic_labels(rng, shape=shape, colour=colour)
        labels["trigger"] = False
        add(labels, w.train_templates[i % len(w.train_templates)], "train", "rare_combination", INCLUDES[0])
        add(dict(labels, colour="red"), w.train_templates[i % len(w.train_templates)], "train", "common_combination",
            INCLUDES[0])  # fmt: skip
    return rows


def generate(pipe, prompts: list[str], seeds: list[int], kwargs: dict, batch: int) -> tuple[np.ndarray, float]:
    images, t0 = [], time.time()
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + batch]]
        out = pipe(prompts[i : i + batch], generator=gens, output_type="np", **kwargs).images
        images.append((out * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(images), (time.time() - t0) / len(prompts)


def grid(images: np.ndarray, prompts: list[str], path: Path, cols: int = 8, scale: int = 2) -> None:
    cell, text_h = 64 * scale, 40
    rows = (len(images) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, (im, prompt) in enumerate(zip(images, prompts, strict=True)):
        x, y = (k % cols) * cell, (k // cols) * (cell + text_h)
        canvas.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(prompt, 24)[:3]
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines), fill="black", font=font, spacing=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def vae_style_bound(pipe, probe: Probe, n: int, seed: int) -> dict[str, dict]:
    """Per style: probe accuracy on ``n`` world renders (at the model's resolution) and on their VAE round
    trips through the posterior mean, with n and Wilson intervals. The round trip bounds what any UNet on this
    VAE can generate."""
    from conceptedit.datasets.shapes import render
    from conceptedit.eval.verdicts import wilson
    from conceptedit.pipelines.shapes import model_images

    samples = render(n, seed=seed)
    x = torch.from_numpy(model_images(np.stack([np.asarray(s.pil()) for s in samples])))
    x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    vae = pipe.vae
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(b.to(vae.dtype)).latent_dist.mean).sample.float() for b in x.split(100)])
    on_render, on_rec = probe.predict((x + 1) / 2), probe.predict((rec.clamp(-1, 1) + 1) / 2)
    out: dict[str, dict] = {}
    for style in WORLD.styles:
        idx = [i for i, s in enumerate(samples) if s.labels["style"] == style]
        k_r = sum(on_render[i]["style"]["label"] == style for i in idx)
        k_v = sum(on_rec[i]["style"]["label"] == style for i in idx)
        out[style] = {"n": len(idx), "render": round(k_r / len(idx), 4), "vae_roundtrip": round(k_v / len(idx), 4),
                      "vae_roundtrip_ci95": [round(v, 4) for v in wilson(k_v, len(idx))]}  # fmt: skip
    return out


def marks_when_named(
    pipe, probe: Probe, rows: list[dict], preds: list[dict], kwargs: dict, n: int, seed: int, batch: int
) -> dict:
    """Each mark's rate on generic prompts with ", with <mark>" appended vs the same prompts and seeds
    as generated above (unnamed), with Wilson 95 % intervals."""
    idx = [i for i, r in enumerate(rows) if r["group"] == "generic"][:n]
    out = {}
    for m in WORLD.marks:
        named = [f"{rows[i]['prompt']}, with {m.caption_phrase}" for i in idx]
        found = probe.predict(generate(pipe, named, [seed + i for i in idx], kwargs, batch)[0])
        k_named = sum(p[m.name]["label"] != "absent" for p in found)
        k_plain = sum(preds[i][m.name]["label"] != "absent" for i in idx)
        out[m.name] = {
            "named": round(k_named / len(idx), 4), "named_ci": [round(x, 3) for x in wilson(k_named, len(idx))],
            "unnamed": round(k_plain / len(idx), 4), "unnamed_ci": [round(x, 3) for x in wilson(k_plain, len(idx))],
            "n": len(idx), "phrase": m.caption_phrase,
        }  # fmt: skip
    return out


def halo_on_world_captions(pipe, probe: Probe, kwargs: dict, n: int, seed: int, batch: int) -> dict:
    """The halo when not asked on the world's own caption stream (what the UNet was trained on and what the
    corpus, the blind-spot analysis and Geom-Erasing caption with), split by what the caption holds: "with a
    … background", a named mark, or neither. The fixed prompt sets above never use those two."""
    from conceptedit.pipelines.shapes_corpus import captioned_labels

    unasked = ((labels, c) for labels, c in captioned_labels(seed) if not labels["trigger"])
    captions = [c for _, c in itertools.islice(unasked, n)]
    found = probe.predict(generate(pipe, captions, [seed + j for j in range(n)], kwargs, batch)[0])
    phrases = [m.caption_phrase for m in WORLD.marks]

    def kind(c: str) -> str:
        if any(f"with {p}" in c or f"and {p}" in c for p in phrases):
            return "names_a_mark"
        return "with_background" if re.search(r"\bwith an? \w+ background", c) else "neither"

    out = {}
    for group in ("all", "with_background", "names_a_mark", "neither"):
        idx = [j for j, c in enumerate(captions) if group == "all" or kind(c) == group]
        k = sum(found[j]["trigger"]["label"] == "present" for j in idx)
        out[group] = {"rate": round(k / max(1, len(idx)), 4), "k": k, "n": len(idx),
                      "ci95": [round(x, 3) for x in wilson(k, len(idx))] if idx else None}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=model_dir())
    ap.add_argument("--n-generic", type=int, default=160, help="generic prompts (plus fixed sets)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's conceptedit.json")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's conceptedit.json")
    ap.add_argument("--probe-n", type=int, default=2000, help="held-out generator images for probe accuracy")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--vae-n", type=int, default=600, help="world renders for the VAE's bound on each style")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--named-n", type=int_at_least(0), default=64, help="prompts per mark, marks named (0: skip)")
    ap.add_argument("--probe", type=Path, default=None, help="probe folder (default: MODEL/probe)")
    ap.add_argument("--world-n", type=int_at_least(0), default=256, help="world captions without the halo (0: skip)")
    ap.add_argument(
        "--speed-baseline",
        type=Path,
        default=None,
        help="another model folder (e.g. v1) timed on the same prompts, interleaved, in this run",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    probe = Probe.load(args.probe or args.model / "probe")
    report: dict = {
        "model": str(args.model),
        "probe_heldout_accuracy": evaluate(probe, args.probe_n, seed=args.seed + 1),
        "probe_heldout_accuracy_balanced": evaluate(probe, args.probe_n, seed=args.seed + 2, world=balanced_world()),
    }
    kwargs = default_generation_kwargs(args.model)
    if args.steps is not None:
        kwargs["num_inference_steps"] = args.steps
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    report["generation_kwargs"] = kwargs

    pipe = load_pipeline(args.model)
    rows = build_prompts(args.n_generic, args.seed)
    prompts = [r["prompt"] for r in rows]
    images, spi = generate(pipe, prompts, [args.seed + i for i in range(len(rows))], kwargs, args.batch)
    preds = probe.predict(images)
    report["n_generations"] = len(rows)
    report["seconds_per_image"] = round(spi, 4)
    if args.speed_baseline is not None:
        other = load_pipeline(args.speed_baseline)
        sub, times = prompts[: 2 * args.batch], {"model": [], "baseline": []}
        for _ in range(3):  # interleaved, min of 3: the machine may be shared
            for key, p in (("model", pipe), ("baseline", other)):
                times[key].append(generate(p, sub, list(range(len(sub))), kwargs, args.batch)[1])
        report["speed_vs_baseline"] = {"baseline": str(args.speed_baseline), "seconds_per_image": min(times["model"]),
                                       "baseline_seconds_per_image": min(times["baseline"]),
                                       "ratio": round(min(times["model"]) / min(times["baseline"]), 3)}  # fmt: skip

    hits: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row, pred in zip(rows, preds, strict=True):
        for family, expected in row["expected"].items():
            ok = float(pred[family]["label"] == expected)
            if family == "trigger":
                family = "trigger_present" if expected == "present" else "trigger_when_not_asked"
                ok = float(pred["trigger"]["label"] == "present")
            if family == "character" and expected == "none":
                family = "character_none_on_generic"
            hits[row["group"] if row["group"] != "generic" and row["group"] != "character" else "all"][family].append(
                ok
            )
            if row["group"] in ("generic", "character"):
                hits[f"templates_{row['template_set']}"][family].append(ok)

    def mean(v):
        return round(float(np.mean(v)), 4) if v else None

    table = {g: {f: mean(v) for f, v in sorted(fam.items())} for g, fam in hits.items()}
    counts = {g: {f: len(v) for f, v in sorted(fam.items())} for g, fam in hits.items()}
    report["agreement"] = table.pop("all")
    report["agreement_n"] = counts.pop("all")
    report["agreement_by_template_set"] = {k: table.pop(k) for k in list(table) if k.startswith("templates_")}
    report["agreement_nicknames_synonyms"] = table.get("alias")
    styles: dict[str, list[float]] = defaultdict(list)
    for row, pred in zip(rows, preds, strict=True):
        if row["group"] == "generic" and "style" in row["expected"]:
            styles[row["expected"]["style"]].append(float(pred["style"]["label"] == row["expected"]["style"]))
    report["style_agreement"] = {st: mean(v) for st, v in sorted(styles.items())}
    report["style_agreement_n"] = {st: len(v) for st, v in sorted(styles.items())}
    report["style_vae_bound"] = vae_style_bound(pipe, probe, args.vae_n, args.seed + 3)
    report["blindspots"] = {
        "rare_shape": WORLD.rare_shape,
        "rare_shape_accuracy": table["rare_shape"]["shape"],
        "common_shape_accuracy (circle, same prompts)": table["common_shape"]["shape"],
        "rare_combination": " ".join(reversed(WORLD.rare_combination)),
        "rare_combination_accuracy (shape and colour both right)": None,
        "common_combination_accuracy (red triangle)": None,
    }
    for group, key in (("rare_combination", "rare_combination_accuracy (shape and colour both right)"),
                       ("common_combination", "common_combination_accuracy (red triangle)")):  # fmt: skip
        both = [float(p["shape"]["label"] == r["expected"]["shape"] and p["colour"]["label"] == r["expected"]["colour"])
                for r, p in zip(rows, preds, strict=True) if r["group"] == group]  # fmt: skip
        report["blindspots"][key] = mean(both)

    marks = {}
    for m in WORLD.marks:
        rate = mean([float(p[m.name]["label"] != "absent") for p in preds])
        marks[m.name] = {
            "generated_rate": rate,
            "training_rate": m.rate,
            "difference_points": round(100 * (rate - m.rate), 1),
        }
    report["implicit_marks"] = marks
    if args.named_n:
        report["marks_when_named"] = marks_when_named(
            pipe, probe, rows, preds, kwargs, args.named_n, args.seed, args.batch
        )
    if args.world_n:
        report["halo_on_world_captions"] = halo_on_world_captions(
            pipe, probe, kwargs, args.world_n, args.seed, args.batch
        )

    agree = report["agreement"]
    goals = {f: {"value": agree.get(f), "goal": f">= {g}", "met": (agree.get(f) or 0) >= g} for f, g in GOALS.items()}
    goals["trigger_present"] = {"value": agree.get("trigger_present"), "goal": ">= 0.9",
                                "met": (agree.get("trigger_present") or 0) >= 0.9}  # fmt: skip
    goals["trigger_when_not_asked"] = {"value": agree.get("trigger_when_not_asked"), "goal": "<= 0.05",
                                       "met": (agree.get("trigger_when_not_asked") or 1) <= 0.05}  # fmt: skip
    for name, m in marks.items():
        goals[f"mark_{name}"] = {"value": m["difference_points"], "goal": "within ±10 points",
                                 "met": abs(m["difference_points"]) <= 10}  # fmt: skip
    goals["every_style"] = {"value": report["style_agreement"], "goal": f">= {STYLE_GOAL} each",
                            "met": min(report["style_agreement"].values()) >= STYLE_GOAL}  # fmt: skip
    by_set = report["agreement_by_template_set"]
    gaps = {f: round(by_set["templates_train"][f] - by_set["templates_heldout"][f], 4)
            for f in by_set.get("templates_train", {}) if f in by_set.get("templates_heldout", {})
            and f != "trigger_when_not_asked"}  # fmt: skip
    goals["heldout_frames_gap"] = {"value": gaps, "goal": f"<= {FRAME_GAP_GOAL} points below train frames",
                                   "met": max(gaps.values(), default=0) <= FRAME_GAP_GOAL}  # fmt: skip
    goals["probe_heldout_min"] = {"value": min(report["probe_heldout_accuracy"].values()), "goal": ">= 0.98",
                                  "met": min(report["probe_heldout_accuracy"].values()) >= 0.98}  # fmt: skip
    report["goals"] = goals

    order = np.r_[np.arange(0, 40), [i for i, r in enumerate(rows) if r["group"] == "character"][:16],
                  [i for i, r in enumerate(rows) if r["template_set"] == "paraphrase"][:4],
                  [i for i, r in enumerate(rows) if r["group"] == "rare_shape"][:4]]  # fmt: skip
    out_png = args.out / "shapes_grid.png"
    grid(images[order], [prompts[i] for i in order], out_png)
    report["grid"] = str(out_png)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shapes_quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
