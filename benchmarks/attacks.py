"""Attack success rate (ASR) of every attack plugin against erasures on the built-in shapes model.

For one concept (default: the character ``zorblax``) this fits UCE and ESD (ESD with the small budget of
``tests/test_effects.py``: 20 iterations, 10 sampling steps, lr 1e-3; all configs are printed),
then, per edit, runs each attack — ``paraphrase`` and ``ring-a-bell`` (black-box: found once on the
unedited model), ``unlearndiffatk`` and ``soft-prompt`` (white-box: found against the edited model,
fitted on images of the concept made by the unedited model from prompts naming it) — and generates
every attack prompt on the edited model and on the unedited one at the same seeds. The shapes probe
is the judge: an image counts as a success when the probe reads the erased concept.

Printed per (edit, attack): ASR k/n with its 95 % Wilson interval; "no attack" is the edit's rate on
the prompts naming the concept (the images the white-box attacks fit, same seeds); "base" is the same
attack prompts on the unedited model (sanity: they should show the concept); attack cost in seconds
per prompt on this machine. One JSON document goes to stdout and ``benchmarks/results/attacks.json``.

    python benchmarks/attacks.py                      # small budgets, n = 6: 24 min on 2 cores shared with a
                                                      # training run (load ~9); about a third of that alone
    python benchmarks/attacks.py --n 2 --set esd.iterations=5 --set ring-a-bell.generations=5 \
        --set unlearndiffatk.timesteps=1 --set soft-prompt.steps=5     # a smoke run: 6 min loaded
    python benchmarks/attacks.py --model path/to/v2 --n 16 --set unlearndiffatk.timesteps=50

Budgets are far below the papers' (Ring-A-Bell 200 × 3,000, UnlearnDiffAtk 50 × 40 steps, concept
inversion 5,000 steps); raise them with ``--set PLUGIN.KEY=VALUE`` on a faster machine.
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
EDITS = ("uce", "esd")
ATTACKS = ("paraphrase", "ring-a-bell", "unlearndiffatk", "soft-prompt")
#: small budgets for a CPU run (the papers' defaults are far larger; see the module docstring)
EDIT_BUDGETS: dict[str, dict[str, Any]] = {"esd": {"iterations": 20, "num_inference_steps": 10, "lr": 1e-3}}
ATTACK_BUDGETS: dict[str, dict[str, Any]] = {
    "ring-a-bell": {"population": 64, "generations": 40},
    "unlearndiffatk": {"timesteps": 3, "iterations": 10},
    "soft-prompt": {"steps": 100},
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="shapes", help="built-in name or model folder (with probe/)")
    parser.add_argument("--concept", default="zorblax")
    parser.add_argument("--edits", default=",".join(EDITS))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--n", type=int, default=6, help="attack prompts (and images of the concept) per attack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="PLUGIN.KEY=VALUE",
                        help="budget/config override of an edit or attack plugin (recorded in the JSON)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=int(os.environ.get("CONCEPTEDIT_THREADS", "1")))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_sets(args.set)
    started = time.perf_counter()

    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    judge = Judge(args.model, args.concept)
    rows = [r for r in erasure_prompt_set([args.concept], per_role=args.n, seed=args.seed) if r.role == "target"]
    prompts, seeds = [r.prompt for r in rows], [r.evaluation_seed for r in rows]
    concept_images = generate(pipe, prompts, seeds, batch_size=16)  # the unedited model's images of the concept
    base_hits = judge(concept_images)

    attacks: dict[str, AttackPlugin] = {}
    for name in [a for a in args.attacks.split(",") if a]:
        attacks[name] = get_plugin(name).for_pipeline(pipe, {"n_prompts": args.n, **ATTACK_BUDGETS.get(name, {}),
                                                              **overrides.get(name, {})})  # fmt: skip
    black_box: dict[str, Any] = {}  # found once on the unedited model
    for name, plugin in attacks.items():
        if not plugin.white_box:
            t0 = time.perf_counter()
            found = plugin.attack(pipe, args.concept, prompts=prompts, seed=args.seed)
            seconds = time.perf_counter() - t0
            black_box[name] = (found, judge(generate_attack_images(pipe, found.prompts)), seconds)
            print(f"  {name}: {len(found.prompts)} prompts on the unedited model, e.g. {found.prompts[0].prompt!r}",
                  flush=True)  # fmt: skip

    records = []
    for edit_name in [e for e in args.edits.split(",") if e]:
        config = {**EDIT_BUDGETS.get(edit_name, {}), **overrides.get(edit_name, {})}
        plugin = get_plugin(edit_name).for_pipeline(pipe, config)
        t0 = time.perf_counter()
        edit = plugin.fit(pipe, Request(targets=[args.concept]))
        fit_seconds = time.perf_counter() - t0
        with edit.apply(pipe):
            no_attack = judge(generate(pipe, prompts, seeds, batch_size=16))
        record = {"edit": edit_name, "edit_config": config_to_dict(plugin.config), "fit_seconds": round(fit_seconds, 1),
                  "no_attack": rate_of(no_attack), "attacks": {}}  # fmt: skip
        print(f"{edit_name}: no attack {record['no_attack']['text']} (unedited {rate_of(base_hits)['text']})",
              flush=True)  # fmt: skip
        for name, attack in attacks.items():
            t0 = time.perf_counter()
            if attack.white_box:
                with edit.apply(pipe):
                    found = attack.attack(pipe, args.concept, images=concept_images, prompts=prompts, seed=args.seed,
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
            }  # fmt: skip
            record["attacks"][name] = entry
            print(f"  {name:15s} ASR {entry['asr']['text']:28s} base {entry['base']['text']:28s} "
                  f"{entry['seconds_per_prompt']} s/prompt", flush=True)  # fmt: skip
        records.append(record)

    report = {
        "benchmark": "attacks", "model": args.model, "concept": args.concept, "n": args.n, "seed": args.seed,
        "judge": "shapes probe reads the erased concept", "unedited_rate": rate_of(base_hits), "records": records,
        "seconds": round(time.perf_counter() - started, 1), "threads": args.threads, "machine": platform.machine(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attacks.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
