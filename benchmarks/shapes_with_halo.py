"""The halo and the word "with" (``docs/shapes_model.md``, "v2.2 candidate"): the frozen shapes CLIP saw "with" only
before "a halo/aura", so a UNet on it may draw the halo for any "with". Per model folder, the probe counts the halo
on seeded generations of: the held-out frame "a sketch with {np}", six "with" frames that no training caption of
any stage has (web-prefix nouns + "with"), and two prompts that ask for the halo ("with a halo", "glowing").

    python benchmarks/shapes_with_halo.py [--model DIR ...] [--seeds 24]

Measured (Dec 5, 24 seeds, seed 1): v2.1 (shipped) 24 / 144 of 144 / 24 / 24 (the held-out frame / the six
unseen frames / "with a halo" / "glowing"); the v2.2 candidate 0 / 41 / 21 / 24.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from conceptedit.datasets.shapes.probe import Probe
from conceptedit.errors import ConceptEditError
from conceptedit.loading import load_pipeline
from conceptedit.pipelines.shapes import default_generation_kwargs, model_dir
from conceptedit.toolkit import int_at_least

HELD_OUT = ("a sketch with a red circle",)
UNSEEN_WITH = (
    "a poster with a red circle", "a scan with a blue square", "a cartoon with a green star",
    "a closeup with a yellow heart", "a logo with an orange cross", "art with a purple diamond",
)  # fmt: skip
ASKED = ("a red circle with a halo", "a glowing blue square")


def halo_counts(folder: Path, probe: Probe, seeds: int, seed: int) -> dict[str, int]:
    pipe = load_pipeline(str(folder), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    kwargs = default_generation_kwargs(folder)
    counts = {}
    for prompt in HELD_OUT + UNSEEN_WITH + ASKED:
        images = pipe([prompt] * seeds, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
        counts[prompt] = sum(p["trigger"]["label"] == "present" for p in probe.predict(images.images))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, nargs="+", default=[model_dir()])
    ap.add_argument("--probe", type=Path, default=model_dir() / "probe", help="the judge (default: the shipped probe)")
    ap.add_argument("--seeds", type=int_at_least(1), default=24, help="images per prompt")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int_at_least(1), default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        probe = Probe.load(args.probe)
    except ConceptEditError as err:
        ap.error(str(err))
    report = {}
    for folder in args.model:
        try:
            counts = halo_counts(folder, probe, args.seeds, args.seed)
        except ConceptEditError as err:  # a missing or non-pipeline folder: one line, not a traceback
            ap.error(str(err))
        report[str(folder)] = {
            "per_prompt": counts,
            "held_out_frame": sum(counts[p] for p in HELD_OUT),
            "unseen_with_frames": sum(counts[p] for p in UNSEEN_WITH),
            "asked": {p: counts[p] for p in ASKED},
            "n_per_prompt": args.seeds,
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
