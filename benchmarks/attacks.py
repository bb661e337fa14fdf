"""Attack success rate (ASR) of every attack plugin against every erase plugin on the built-in shapes model.

For each concept (default: the character ``zorblax``, the shape ``circle`` and the halo through its
trigger word ``glowing``) and each erase plugin (negative-prompt, UCE, ESD, few-shot unlearning, ItD,
RealEra; CPU budgets in ``EDIT_BUDGETS``, every config is recorded in the JSON) this fits the edit,
then runs each attack — ``paraphrase`` and ``ring-a-bell`` (black-box: found once per concept on the
unedited model), ``unlearndiffatk`` and ``soft-prompt`` (white-box: found against the edited model,
fitted on images of the concept made by the unedited model from the prompts naming it) — and
generates every attack prompt on the edited model and on the unedited one at the same seeds. The
shapes probe is the judge: an image counts as a success when the probe reads the erased concept.

Per (concept, edit, attack): ASR k/n with its 95 % Wilson interval; "no attack" is the edit's rate on
the n prompts naming the concept (the images the white-box attacks fit, same seeds); "unedited" is
the same attack prompts on the unedited model (sanity: they should show the concept); attack cost in
seconds per prompt. Edits run outer and concepts inner, so an interrupted run has every concept's
first edits; the JSON (``--out``) is rewritten after every attack; ``--table FILE ...`` prints the
markdown table of one or more result files.

    python benchmarks/attacks.py                                   # everything, n = 12 (hours on 2 busy cores)
    python benchmarks/attacks.py --concepts zorblax --edits uce,negative-prompt --out /tmp/z.json
    python benchmarks/attacks.py --table /tmp/z.json /tmp/c.json
    python benchmarks/attacks.py --n 2 --set esd.iterations=5 --set ring-a-bell.generations=5 \
        --set unlearndiffatk.timesteps=1 --set soft-prompt.steps=5     # a smoke run

Budgets (``--set PLUGIN.KEY=VALUE`` raises them) against the papers': Ring-A-Bell population 64 × 40
generations (paper 200 × 3,000; K = 16, η = 3 as the paper), UnlearnDiffAtk 3 timesteps × 10 Adam
steps, k = 3, stopping at the first success as the paper does (paper 50 × 40), concept inversion
(soft prompt) 100 steps (paper 5,000), lr 5e-3 as the paper. Edits: ESD 20 iterations, 10 sampling
steps, lr 1e-3 (plugin default 200 at 5e-5; the effect tests' budget), few-shot unlearning lr 1e-3 on the
model's own 4 images (paper 1e-5), RealEra 20 LoRA steps (default 100); UCE, negative prompt and
ItD (the model's presets) as shipped.

Measured on the shipped v2.1 (n = 12 per cell, 2 shared cores; v2's table beside it in ``docs/attacks.md``):
zorblax stays erased under every attack through UCE, RealEra, ESD and few-shot unlearning (≤ 3/12), while
UnlearnDiffAtk walks around ItD's prompt classifier (10/12; the paraphrases no longer do: 0/12, v2 6/12). The
soft prompt no longer brings zorblax back through UCE (v2 12/12, now 0/12 with a sane prompt); it is the one
attack that beats a weight edit on the halo (RealEra 8/12). The negative prompt hardly erases on any concept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from conceptedit.attack import AttackPlugin, generate_attack_images
from conceptedit.config import config_to_dict
from conceptedit.datasets.shapes.probe import Probe
from conceptedit.datasets.shapes.prompt_sets import concept_family, erasure_prompt_set
from conceptedit.eval.verdicts import Rate
from conceptedit.generation import generate
from conceptedit.loading import load_pipeline
from conceptedit.plugin import Request
from conceptedit.registry import get_plugin

RESULTS = Path(__file__).resolve().parent / "results"
CONCEPTS = ("zorblax", "circle", "glowing")  # a character, a shape, the halo (through its trigger word)
EDITS = ("negative-prompt", "uce", "esd", "fewshot-unlearning", "itd", "realera")
ATTACKS = ("paraphrase", "ring-a-bell", "unlearndiffatk", "soft-prompt")
#: small budgets for a CPU run (the papers' defaults are far larger; see the module docstring)
EDIT_BUDGETS: dict[str, dict[str, Any]] = {
    "esd": {"iterations": 20, "num_inference_steps": 10, "lr": 1e-3},
    "fewshot-unlearning": {"images_from_model": True, "lr": 1e-3},
    "realera": {"lora_steps": 20},
}
ATTACK_BUDGETS: dict[str, dict[str, Any]] = {
    "ring-a-bell": {"population": 64, "generations": 40},
    "unlearndiffatk": {"timesteps": 3, "iterations": 10},
    "soft-prompt": {"steps": 100},
}


def edit_config(edit: str, concept: str) -> dict[str, Any]:
    """The benchmark's settings of an edit plugin for a concept (on top of the paper defaults)."""
    config = dict(EDIT_BUDGETS.get(edit, {}))
    if edit == "fewshot-unlearning":
        config["template_set"] = "style" if concept_family(concept)[0] == "style" else "object"
    return config


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, _, value = item.partition("=")
        plugin, _, name = key.partition(".")
        if not name or not value:
            raise SystemExit(f"--set {item!r}: use PLUGIN.KEY=VALUE")
        out.setdefault(plugin, {})[name] = value
    return out


class Judge:
    """The shapes probe reads the erased concept back (character, shape, style, halo ...)."""

    def __init__(self, model: str, concept: str) -> None:
        folder = Path(model) / "probe"
        self.probe = Probe.load(folder if folder.is_dir() else None)
        self.family, self.value = concept_family(concept)

    def __call__(self, images: list[Any]) -> list[bool]:
        out = []
        for pred in self.probe.predict(images):
            label = pred.get(self.family, {})
            label = label.get("label", label.get("value")) if isinstance(label, dict) else label
            out.append(str(label) == self.value if self.value != "present" or self.family == "trigger"
                       else str(label) != "absent")  # fmt: skip
        return out


def rate_of(hits: list[bool]) -> dict[str, Any]:
    rate = Rate(sum(hits), len(hits))
    return {**rate.to_dict(), "text": rate.text()}


class ConceptSetup:
    """What every edit of one concept shares: the judge, the prompts naming the concept with their seeds,
    the unedited model's images of it, and the black-box attacks' prompts (found once, unedited model)."""

    def __init__(self, pipe: Any, args: argparse.Namespace, concept: str, attacks: dict[str, AttackPlugin],
                 report: dict[str, Any]) -> None:  # fmt: skip
        self.judge = Judge(args.model, concept)
        rows = [r for r in erasure_prompt_set([concept], per_role=args.n, seed=args.seed) if r.role == "target"]
        self.prompts, self.seeds = [r.prompt for r in rows], [r.evaluation_seed for r in rows]
        self.images = generate(pipe, self.prompts, self.seeds, batch_size=16)
        report["unedited"][concept] = rate_of(self.judge(self.images))
        print(f"{concept}: unedited {report['unedited'][concept]['text']}", flush=True)
        self.black_box: dict[str, Any] = {}
        for name, plugin in attacks.items():
            if not plugin.white_box:
                t0 = time.perf_counter()
                found = plugin.attack(pipe, concept, prompts=self.prompts, seed=args.seed)
                seconds = time.perf_counter() - t0
                self.black_box[name] = (found, self.judge(generate_attack_images(pipe, found.prompts)), seconds)
                print(f"  {name}: {len(found.prompts)} prompts on the unedited model, e.g. "
                      f"{found.prompts[0].prompt!r}", flush=True)  # fmt: skip


def run_edit(pipe: Any, args: argparse.Namespace, concept: str, edit_name: str, setup: ConceptSetup,
             attacks: dict[str, AttackPlugin], overrides: dict[str, dict[str, str]], report: dict[str, Any],
             save: Any) -> None:  # fmt: skip
    """Every attack against one edit of one concept; its record is saved after each attack."""
    judge, prompts, seeds, concept_images = setup.judge, setup.prompts, setup.seeds, setup.images
    black_box = setup.black_box
    config = {**edit_config(edit_name, concept), **overrides.get(edit_name, {})}
    plugin = get_plugin(edit_name).for_pipeline(pipe, config)
    t0 = time.perf_counter()
    edit = plugin.fit(pipe, Request(targets=[concept]))
    fit_seconds = time.perf_counter() - t0
    with edit.apply(pipe):
        no_attack = judge(generate(pipe, prompts, seeds, batch_size=16))
    record = {"concept": concept, "edit": edit_name, "edit_config": config_to_dict(plugin.config),
              "fit_seconds": round(fit_seconds, 1), "no_attack": rate_of(no_attack), "attacks": {}}  # fmt: skip
    report["records"].append(record)
    print(f"{concept} / {edit_name}: no attack {record['no_attack']['text']} (fit {fit_seconds:.0f} s)", flush=True)
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        if attack.white_box:
            with edit.apply(pipe):
                found = attack.attack(pipe, concept, images=concept_images, prompts=prompts, seed=args.seed,
                                      judge=judge if name == "unlearndiffatk" else None)  # fmt: skip
            seconds = time.perf_counter() - t0
            base = judge(generate_attack_images(pipe, found.prompts))
        else:
            found, base, seconds = black_box[name]
        with edit.apply(pipe):
            hits = judge(generate_attack_images(pipe, found.prompts))
        entry = {
            "asr": rate_of(hits), "base": rate_of(base),
            "seconds_per_prompt": round(seconds / len(found.prompts), 2),
            "white_box": attack.white_box, "config": config_to_dict(attack.config),
            "examples": [p.prompt for p in found.prompts[:3]],
            "history": [round(x, 5) for x in found.history[:: max(1, len(found.history) // 50)]],
        }  # fmt: skip
        record["attacks"][name] = entry
        print(f"  {name:15s} ASR {entry['asr']['text']:28s} base {entry['base']['text']:28s} "
              f"{entry['seconds_per_prompt']} s/prompt", flush=True)  # fmt: skip
        save()
    save()


def cell(rate: dict[str, Any]) -> str:
    """``7/12 [0.32, 0.81]``: k/n with the 95 % Wilson interval."""
    return f"{rate['k']}/{rate['n']} [{rate['ci_low']:.2f}, {rate['ci_high']:.2f}]"


def table(reports: list[dict[str, Any]]) -> str:
    """The method × attack ASR table (markdown) of one or more result files: per (concept, edit) the
    unedited and no-attack rates, then per attack the ASR on the edit and (sanity) on the unedited model."""
    best: dict[tuple[str, str], dict[str, Any]] = {}  # a (concept, edit) in several files: the most complete
    for rep in reports:
        for r in rep["records"]:
            key = (r["concept"], r["edit"])
            if key not in best or len(r["attacks"]) > len(best[key]["attacks"]):
                best[key] = r
    attacks = list(dict.fromkeys(a for rep in reports for r in rep["records"] for a in r["attacks"]))
    head = ["concept", "edit", "unedited", "no attack", *attacks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rep in reports:
        for r in rep["records"]:
            if best[(r["concept"], r["edit"])] is not r:
                continue
            cells = [r["concept"], r["edit"], cell(rep["unedited"][r["concept"]]), cell(r["no_attack"])]
            for a in attacks:
                e = r["attacks"].get(a)
                cells.append(f"{cell(e['asr'])} (unedited {e['base']['k']}/{e['base']['n']})" if e else "–")
            lines.append("| " + " | ".join(cells) + " |")
    cost: dict[str, list[float]] = {}
    for rep in reports:
        for r in rep["records"]:
            for a, e in r["attacks"].items():
                if e["white_box"] or not cost.get(a):
                    cost.setdefault(a, []).append(e["seconds_per_prompt"])
    lines.append("")
    lines.append("attack cost, s per prompt (median over runs): " + ", ".join(
        f"{a} {sorted(v)[len(v) // 2]:.1f}" for a, v in cost.items()))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes", help="built-in name or model folder (with probe/)")
    parser.add_argument("--concepts", default=",".join(CONCEPTS))
    parser.add_argument("--edits", default=",".join(EDITS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--n", type=int, default=12, help="attack prompts (and images of the concept) per attack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                        help="budget/config override of an edit or attack plugin (recorded in the JSON)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CONCEPTEDIT_THREADS", "1")))
    parser.add_argument("--out", type=Path, default=RESULTS / "attacks.json", help="result file (rewritten as it goes)")
    parser.add_argument("--table", type=Path, nargs="+", metavar="JSON", help="print the table of result files")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(path.read_text()) for path in args.table]))
        return
    torch.set_num_threads(args.threads)
    overrides = parse_sets(args.set)
    started = time.perf_counter()
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    report: dict[str, Any] = {
        "benchmark": "attacks", "model": args.model, "n": args.n, "seed": args.seed,
        "judge": "shapes probe reads the erased concept", "unedited": {}, "records": [],
        "threads": args.threads, "machine": platform.machine(), "complete": False,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(args.out)

    attacks: dict[str, AttackPlugin] = {}
    for name in [a for a in args.attacks.split(",") if a]:
        attacks[name] = get_plugin(name).for_pipeline(pipe, {"n_prompts": args.n, **ATTACK_BUDGETS.get(name, {}),
                                                              **overrides.get(name, {})})  # fmt: skip
    setups: dict[str, ConceptSetup] = {}
    for edit_name in [e for e in args.edits.split(",") if e]:  # edits outer: every concept gets the first edits
        for concept in [c for c in args.concepts.split(",") if c]:
            if concept not in setups:
                setups[concept] = ConceptSetup(pipe, args, concept, attacks, report)
            run_edit(pipe, args, concept, edit_name, setups[concept], attacks, overrides, report, save)
    report["complete"] = True
    save()
    print(table([report]))


if __name__ == "__main__":
    main()
