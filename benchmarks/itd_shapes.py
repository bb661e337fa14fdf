"""ItD (Interpret-then-Deactivate) on the built-in shapes model.

Erases a named character, a fill style and the many-trigger-word halo concept, one at a time and
all three at once. Each fit trains its SAE on the model corpus plus its own prompts (cached by that
corpus, so a repeated fit reuses it). For each it reports

- probe accuracy of the erased concept on prompts naming it, before → after (goal: ≤ chance), also
  on held-out sentence frames and on trigger words that were NOT used to fit;
- probe accuracy of every other family on prompts without the concept (goal: drop ≤ 2 points) and of
  the concept's own family on its other members (in-domain);
- the halo on the prompts naming the concept, base vs edited (``halo_on_target_prompts``): a side effect the
  retain metrics, scored on prompts without the concept, do not see;
- the zero-shot classifier's precision and recall on prompts with and without the concept, and on
  sentence frames it was not fitted on (held-out frames, paraphrases, unfitted trigger words);
- with ``--compare``: the same for the plugin's previous behaviour (fitted and calibrated on the
  training-frame prompts only, retain set filtered by the literal target words only) beside the
  current one (diverse target prompts + ``retain_exclude``), sharing one SAE per scenario;
- the generation-time overhead of the applied edit (goal ≤ 2 %), measured side by side;
- with ``--widths``: the erasure quality per SAE width (to find the smallest width that keeps it);
- with ``--score-rules CONCEPT ...``: only the zero-shot classifier (no images), fitted on each concept
  alone with each score rule (``max`` and ``mean`` over tokens, sharing one SAE): recall and
  false-positive rate with n.

Prints one JSON document, writes ``benchmarks/results/itd_shapes.json`` and a PNG grid.

    python benchmarks/itd_shapes.py                       # ~10 min on 2 CPU cores
    python benchmarks/itd_shapes.py --scenarios character trigger --compare --per-role 6
    python benchmarks/itd_shapes.py --widths 512 1024 2048 4096 --per-role 6
    python benchmarks/itd_shapes.py --score-rules zorblax quimbo fennik drelva plimsy square dotted
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from conceptedit.datasets.shapes import WORLD
from conceptedit.datasets.shapes.erasure import chance_level, score_images
from conceptedit.datasets.shapes.probe_metric import ProbeAccuracy
from conceptedit.datasets.shapes.prompt_sets import concept_family, erasure_prompt_set
from conceptedit.errors import RequestError
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin
from conceptedit.toolkit import int_at_least, parse_overrides

RESULTS = Path(__file__).resolve().parent / "results"
FIT_TRIGGER_WORDS = ("glowing", "halo")  # the other trigger words are held out of the fit
SCENARIOS: dict[str, list[str]] = {
    "character": ["zorblax"],
    "style": ["outlined"],  # striped is a blindspot of the 32x32 model (probe reads it on 17 % of base images)
    "trigger": list(FIT_TRIGGER_WORDS),
    "all_three": ["zorblax", "outlined", *FIT_TRIGGER_WORDS],
}
EVAL_CONCEPT = {"zorblax": "zorblax", "outlined": "outlined", "glowing": "glowing", "halo": "glowing"}
# The previous fit: target prompts = the request's (training frames) only, retain filter = target words only.
PREVIOUS = {"target_templates": False, "target_from_corpus": 0, "retain_exclude": []}


def world_retain_exclude() -> list[str]:
    """The world's word groups for ``retain_exclude`` (benchmark only; a model folder ships its own in
    ``plugin_presets.itd.retain_exclude``): each character with its nickname, each shape with its synonym,
    the halo's trigger words."""
    groups = [(c.name, c.nickname) for c in WORLD.characters] + list(WORLD.shape_synonyms)
    return ["|".join(g) for g in groups] + ["|".join(WORLD.trigger.words)]


def fit_prompts(targets: list[str], per_concept: int = 20) -> list[str]:
    """Target prompts built with the training sentence frames (evaluation uses other seeds/frames)."""
    prompts: list[str] = []
    for concept in targets:
        rows = [r for r in erasure_prompt_set([concept], per_concept, seed=101) if r.role == "target"]
        prompts += [r.prompt for r in rows]
    return list(dict.fromkeys(prompts))


def classifier_scores(edit: Any, pipe: Any, concepts: list[str], per_role: int) -> dict[str, Any]:
    positives, negatives = [], []
    for concept in dict.fromkeys(EVAL_CONCEPT.get(c, c) for c in concepts):
        for row in erasure_prompt_set([concept], per_role, seed=7):
            (positives if row.role in ("target", "target_paraphrase") else negatives).append(row.prompt)
    held_out_words = [w for w in WORLD.trigger.words if w not in FIT_TRIGGER_WORDS]
    held_out = [p for p in positives if any(w in p.split() for w in held_out_words)]
    unseen = []  # positives in frames the fit did not see: held-out frames, paraphrases, other trigger words
    for concept in dict.fromkeys(EVAL_CONCEPT.get(c, c) for c in concepts):
        unseen += [r.prompt for r in erasure_prompt_set([concept], per_role, seed=7) if r.role == "target_paraphrase"]
    with edit.apply(pipe) as handle:
        pos = handle.classify(positives)
        neg = handle.classify(negatives)
        held = handle.classify(held_out) if held_out else []
        new = handle.classify(unseen) if unseen else []
    tp = sum(d.fired for d in pos)
    fp = sum(d.fired for d in neg)
    tp_new = sum(d.fired for d in new)
    return {
        "unseen_frames": {
            "precision": round(tp_new / max(1, tp_new + fp), 4),
            "recall": round(tp_new / max(1, len(new)), 4),
            "n_positive": len(new),
        },
        "precision": round(tp / max(1, tp + fp), 4),
        "recall": round(tp / max(1, len(pos)), 4),
        "false_positive_rate": round(fp / max(1, len(neg)), 4),
        "true_positives": tp,
        "false_positives": fp,
        "recall_held_out_trigger_words": round(sum(d.fired for d in held) / len(held), 4) if held else None,
        "n_positive": len(pos),
        "n_negative": len(neg),
        "missed": [d.prompt for d in pos if not d.fired][:8],
        "false_alarms": [d.prompt for d in neg if d.fired][:8],
    }


def erasure(pipe: Any, edit: Any, concept: str, per_role: int, metric: ProbeAccuracy) -> dict[str, Any]:
    rows = erasure_prompt_set([concept], per_role)
    prompts, seeds = [r.prompt for r in rows], [r.evaluation_seed for r in rows]
    before = generate(pipe, prompts, seeds, batch_size=32)
    with edit.apply(pipe):
        after = generate(pipe, prompts, seeds, batch_size=32)
    return {
        "chance": chance_level(concept),
        "before": score_images(metric, rows, seeds, before, "base"),
        "after": score_images(metric, rows, seeds, after, "edited"),
        "halo_on_target_prompts": {"base": halo_count(metric, rows, before), "edited": halo_count(metric, rows, after)},
        "_images": (rows, before, after),
    }


def halo_count(metric: ProbeAccuracy, rows: list, images: list) -> str:
    """k/n of the prompts naming the concept on which the probe reads the halo: a side effect the retain
    metrics do not see (they score other families on prompts without the concept)."""
    chosen = [img for r, img in zip(rows, images, strict=True) if r.role in ("target", "target_paraphrase")]
    labels = metric.predict_labels(chosen)
    return f"{sum(lab['trigger'] == 'present' for lab in labels)}/{len(chosen)}"


def overhead(pipe: Any, edit: Any, n: int = 32, repeats: int = 5) -> dict[str, float]:
    """Generation time with and without the edit, interleaved (min of ``repeats`` after a warm-up), and
    the edit's own cost: the extra text-encoding time relative to a whole generation."""
    rows = erasure_prompt_set(["zorblax", "outlined"], max(1, n // 8))[:n]
    prompts, seeds = [r.prompt for r in rows], [r.evaluation_seed for r in rows]
    generate(pipe, prompts[:4], seeds[:4])  # warm-up
    base_t, edit_t, enc_base, enc_edit = [], [], [], []

    def encode() -> float:
        start = time.perf_counter()
        pipe.encode_prompt(prompts, pipe.device, 1, True, [""] * len(prompts))
        return time.perf_counter() - start

    for _ in range(repeats):  # interleaved so both see the same machine load
        enc_base.append(encode())
        start = time.perf_counter()
        generate(pipe, prompts, seeds, batch_size=16)
        base_t.append(time.perf_counter() - start)
        with edit.apply(pipe):
            enc_edit.append(encode())
            start = time.perf_counter()
            generate(pipe, prompts, seeds, batch_size=16)
            edit_t.append(time.perf_counter() - start)
    b, e = min(base_t), min(edit_t)
    extra = min(enc_edit) - min(enc_base)
    return {
        "base_s": round(b, 3),
        "edited_s": round(e, 3),
        "overhead_pct": round(100 * (e - b) / b, 2),
        "encode_base_s": round(min(enc_base), 4),
        "encode_edited_s": round(min(enc_edit), 4),
        "edit_cost_pct_of_generation": round(100 * extra / b, 2),
        "images": n,
    }


def grid(sections: list[tuple[str, list, list, list]], path: Path, per: int = 4, cell: int = 96) -> None:
    label_h = 14
    height = sum(2 * (cell + label_h) + 18 for _ in sections)
    canvas = Image.new("RGB", (per * cell + 70, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for title, rows, before, after in sections:
        draw.text((2, y + 2), title, fill="black")
        y += 18
        chosen = [i for i, r in enumerate(rows) if r.role in ("target", "target_paraphrase")][:per]
        for label, images in (("base", before), ("ItD", after)):
            draw.text((2, y + cell // 2), label, fill="black")
            for j, i in enumerate(chosen):
                canvas.paste(images[i].resize((cell, cell), Image.NEAREST), (70 + j * cell, y))
                draw.text((70 + j * cell, y + cell), rows[i].prompt[:15], fill="gray")
            y += cell + label_h
    canvas.save(path)


def score_rules(pipe: Any, plugin_cls: Any, overrides: dict[str, Any], concepts: list[str], per_role: int) -> dict:
    """The classifier alone, each concept fitted with each score rule; one row per (concept, rule)."""
    rows: dict[str, Any] = {}
    for concept in concepts:
        for rule in ("max", "mean"):
            plugin = plugin_cls.for_pipeline(pipe, {**overrides, "score": rule})
            edit = plugin.fit(pipe, Request(targets=[concept], prompts=fit_prompts([concept])))
            scores = classifier_scores(edit, pipe, [concept], per_role)
            recall = f"{scores['true_positives']}/{scores['n_positive']}"
            false_positives = f"{scores['false_positives']}/{scores['n_negative']}"
            rows[f"{concept}/{rule}"] = {
                "recall": recall,
                "false_positives": false_positives,
                "false_alarms": scores["false_alarms"],
            }
            print(f"{concept:10s} {rule:5s} recall {recall}  false positives {false_positives}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-role", type=int_at_least(1), default=12)
    parser.add_argument("--widths", type=int, nargs="*", default=[])
    parser.add_argument("--set", nargs="*", default=[], help="ItD config overrides key=value")
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--compare", action="store_true", help="also fit the previous behaviour (see docstring)")
    parser.add_argument("--score-rules", nargs="+", metavar="CONCEPT", help="classifier only, max vs mean rule")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("shapes")
    pipe.set_progress_bar_config(disable=True)
    plugin_cls = get_plugin("itd")
    overrides = parse_overrides(args.set)
    if not plugin_cls.for_pipeline(pipe, overrides).config.retain_exclude:  # neither shipped nor given
        overrides["retain_exclude"] = world_retain_exclude()
    metric = ProbeAccuracy()
    out: dict[str, Any] = {"config": {**plugin_cls.for_pipeline(pipe, overrides).config.__dict__}, "scenarios": {}}
    if args.score_rules:
        for concept in args.score_rules:
            try:
                concept_family(concept)
            except RequestError as err:
                parser.error(f"--score-rules: {err}")
        out["score_rules"] = score_rules(pipe, plugin_cls, overrides, args.score_rules, args.per_role)
        (RESULTS / "itd_score_rules.json").write_text(json.dumps(out, indent=2))
        return
    sections = []
    for name, targets in ((n, SCENARIOS[n]) for n in args.scenarios):
        if args.compare:
            previous = plugin_cls.for_pipeline(pipe, {**overrides, **PREVIOUS})
            start = time.perf_counter()
            edit = previous.fit(pipe, Request(targets=targets, prompts=fit_prompts(targets)))
            result = {
                "targets": targets,
                "fit_s": round(time.perf_counter() - start, 2),
                "n_features": len(edit.features),
                "tau": edit.tau,
                "erasure": {},
            }
            for concept in dict.fromkeys(EVAL_CONCEPT[t] for t in targets):
                scores = erasure(pipe, edit, concept, args.per_role, metric)
                scores.pop("_images")
                result["erasure"][concept] = scores
            result["classifier"] = classifier_scores(edit, pipe, targets, args.per_role)
            out.setdefault("previous", {})[name] = result
            print(json.dumps({f"{name} (previous fit)": result}, indent=1), flush=True)
        plugin = plugin_cls.for_pipeline(pipe, overrides)
        start = time.perf_counter()
        edit = plugin.fit(pipe, Request(targets=targets, prompts=fit_prompts(targets)))
        fit_s = time.perf_counter() - start
        result: dict[str, Any] = {
            "targets": targets,
            "fit_s": round(fit_s, 2),
            "n_features": len(edit.features),
            "tau": edit.tau,
            "n_target_prompts": edit.manifest.extra["n_target_prompts"],
            "erasure": {},
        }
        for concept in dict.fromkeys(EVAL_CONCEPT[t] for t in targets):
            scores = erasure(pipe, edit, concept, args.per_role, metric)
            rows, before, after = scores.pop("_images")
            result["erasure"][concept] = scores
            sections.append((f"{name}: erase {'+'.join(targets)} - prompts naming {concept}", rows, before, after))
        result["classifier"] = classifier_scores(edit, pipe, targets, args.per_role)
        if name == "character":
            result["overhead"] = overhead(pipe, edit)
        out["scenarios"][name] = result
        print(json.dumps({name: {k: v for k, v in result.items()}}, indent=1), flush=True)
    for width in args.widths:
        plugin = plugin_cls.for_pipeline(pipe, {**overrides, "sae_width": width})
        edit = plugin.fit(pipe, Request(targets=["zorblax"], prompts=fit_prompts(["zorblax"])))
        scores = erasure(pipe, edit, "zorblax", max(4, args.per_role // 2), metric)
        scores.pop("_images")
        out.setdefault("width_sweep", {})[width] = {"n_features": len(edit.features), **scores}
        print(json.dumps({"width": width, **out["width_sweep"][width]}), flush=True)
    grid(sections, RESULTS / "itd_shapes.png")
    (RESULTS / "itd_shapes.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
