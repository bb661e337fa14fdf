"""Where does the shapes model read a concept from: the word's token, EOS or the padding?

Stable Diffusion 1.x reads concepts from the word tokens and ignores the padding (Toker et al.,
"Padding Tone", NAACL 2025); erasure methods that edit a word's key (UCE) or its embedding rely on
that. Measured per model (v1 trained its text encoder jointly with the UNet; v2 froze a CLIP):

1. causal test, judged by the probe: the named character / shape in images generated from
   (a) the unchanged text-encoder output, (b) the padding outputs (after EOS) replaced by those of
   the empty prompt, (c) the word's output replaced by the BOS output (the concept word removed,
   everything else kept);
2. the share of between-concept variance of the text-encoder output at word / EOS / padding
   positions (reported, not steered by: a causal encoder's many padding positions each summarise
   the prompt, so padding holds most variance even untrained);
3. the cosine between each concept word's output and the BOS output.

    python benchmarks/shapes_word_tokens.py [--model DIR ...] [--seeds 12]

Prints one JSON object per model (and writes benchmarks/results/word_tokens.json).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conceptedit.datasets.shapes import WORLD
from conceptedit.datasets.shapes.probe import Probe
from conceptedit.loading import load_pipeline
from conceptedit.pipelines.shapes import default_generation_kwargs, model_dir

FRAMES = ("a picture of {}", "{}", "this is {}", "here we see {}")  # two train, two held-out frames


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson interval of a rate k/n."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 3), round(centre + half, 3)]


def concepts() -> list[tuple[str, str, str]]:
    """(family, label, phrase) for every character and every common shape."""
    rows = [("character", c, c) for c in WORLD.character_names]
    rows += [("shape", s, f"a {s}") for s in WORLD.shapes]
    return rows


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tok = pipe.tokenizer
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return ids.input_ids, pipe.text_encoder(ids.input_ids)[0]


def word_position(pipe, ids: torch.Tensor, word: str) -> int:
    """Index of the (last token of the) concept word in one prompt's ids."""
    word_ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    seq = ids.tolist()
    for start in range(len(seq) - len(word_ids), -1, -1):
        if seq[start : start + len(word_ids)] == word_ids:
            return start + len(word_ids) - 1
    raise ValueError(f"{word!r} not in prompt")


def conditions(pipe, prompt: str, word: str) -> dict[str, torch.Tensor]:
    ids, hidden = encode(pipe, [prompt, ""])
    h, empty = hidden[:1], hidden[1:]
    eos = int((ids[0] == pipe.tokenizer.eos_token_id).int().argmax())
    padded = h.clone()
    padded[:, eos + 1 :] = empty[:, eos + 1 :]
    no_word = h.clone()
    no_word[:, word_position(pipe, ids[0], word)] = h[:, 0]  # BOS output (the same for every prompt)
    return {"unchanged": h, "padding_from_empty": padded, "word_replaced_by_bos": no_word}


def causal_test(pipe, probe: Probe, seeds: int, kwargs: dict) -> dict:
    _, empty = encode(pipe, [""])
    hits: dict[str, dict[str, list[int]]] = {}
    for family, label, phrase in concepts():
        word = label
        for f, frame in enumerate(FRAMES):
            prompt = frame.format(phrase)
            for cond, emb in conditions(pipe, prompt, word).items():
                n = seeds // len(FRAMES) + (f < seeds % len(FRAMES))
                if n == 0:
                    continue
                gens = [torch.Generator().manual_seed(1000 * f + s) for s in range(n)]
                images = pipe(
                    prompt_embeds=emb.expand(n, -1, -1),
                    negative_prompt_embeds=empty.expand(n, -1, -1),
                    generator=gens,
                    output_type="np",
                    **kwargs,
                ).images
                preds = probe.predict((images * 255).round().clip(0, 255).astype(np.uint8))
                ok = [int(p[family]["label"] == label) for p in preds]
                hits.setdefault(f"{family}:{cond}", {}).setdefault(label, []).extend(ok)
    out = {}
    for key, per in hits.items():
        k = sum(sum(v) for v in per.values())
        n = sum(len(v) for v in per.values())
        out[key] = {
            "rate": round(k / n, 3),
            "n": n,
            "ci95": wilson(k, n),
            "per_concept": {c: round(sum(v) / len(v), 3) for c, v in per.items()},
        }
    return out


def variance_shares(pipe) -> dict:
    """Between-character variance of the output at word / EOS / padding positions, "a picture of {c}"."""
    prompts = [f"a picture of {c}" for c in WORLD.character_names]
    ids, hidden = encode(pipe, prompts)
    eos = int((ids[0] == pipe.tokenizer.eos_token_id).int().argmax())
    per_position = hidden.var(dim=0).sum(-1)  # (L,)
    total = float(per_position.sum())
    return {
        "word": round(float(per_position[eos - 1]) / total, 4),
        "eos": round(float(per_position[eos]) / total, 4),
        "padding": round(float(per_position[eos + 1 :].sum()) / total, 4),
        "other": round(float(per_position[: eos - 1].sum()) / total, 4),
    }


def cosine_to_bos(pipe) -> dict:
    words = list(WORLD.character_names) + ["circle", "square", "halo", "glowing", "striped", "outlined"]
    out = {}
    _, empty = encode(pipe, [""])
    bos = empty[0, 0]
    for w in words:
        ids, hidden = encode(pipe, [f"a picture of {w}"])
        out[w] = round(float(F.cosine_similarity(hidden[0, word_position(pipe, ids[0], w)], bos, dim=0)), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, nargs="+", default=[model_dir()])
    ap.add_argument("--seeds", type=int, default=12, help="images per concept and condition")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/word_tokens.json"))
    args = ap.parse_args()
    results = {}
    for folder in args.model:
        pipe = load_pipeline(folder)
        pipe.set_progress_bar_config(disable=True)
        probe = Probe.load(folder / "probe")
        kwargs = default_generation_kwargs(folder)
        report = {
            "variance_share": variance_shares(pipe),
            "cos_word_to_bos": cosine_to_bos(pipe),
            "causal": causal_test(pipe, probe, args.seeds, kwargs),
        }
        results[str(folder)] = report
        print(json.dumps({str(folder): report}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
