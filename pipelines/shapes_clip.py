"""Stage 0b of the shapes model: a tiny CLIP trained contrastively on world renders and captions.

Stable Diffusion 1.x conditions its UNet on a text encoder that was pre-trained contrastively
(CLIP ViT-L/14) and kept frozen while the UNet trained. The v1 shapes model trained its text
encoder jointly with the UNet, and the diffusion loss pushed the concepts into the padding
positions. v2 follows SD: this module trains a ``transformers`` ``CLIPModel`` (text tower = the
``CLIPTextModel`` class the pipeline loads, a small ViT image tower) with CLIP's objective
(Radford et al. 2021, §2.3: EOS pooling, linear projections, symmetric InfoNCE with a learned
temperature clamped at 100), then :mod:`.shapes_train` freezes the text tower and trains the UNet on it.

Deviations from CLIP, all for a CPU budget: tiny towers (``CLIP_TEXT_CONFIG``, ``CLIP_VISION_CONFIG``),
32 text positions, batch 128, images drawn on the fly (no dataset), empty captions left out (they
have no image to match). Training stops on held-out zero-shot accuracy per family
(:func:`zero_shot_accuracy`) or on its time budget, whichever comes first; it checkpoints and resumes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from conceptedit.datasets.shapes import WORLD, render
from conceptedit.pipelines.shapes_parallel import cosine_lr

CLIP_TEXT_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=6,  # SAE work at a middle-to-late block (block 4 of 6; SD 1.x: 9 of 12)
    num_attention_heads=4,
    max_position_embeddings=32,
    hidden_act="quick_gelu",
    projection_dim=128,
)
CLIP_VISION_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=4,
    num_channels=3,
    hidden_act="quick_gelu",
    projection_dim=128,
)
IMAGE_MEAN = (0.5, 0.5, 0.5)  # images enter the towers in [-1, 1], as the VAE sees them
IMAGE_STD = (0.5, 0.5, 0.5)


def build_clip(tokenizer, seed: int = 0):
    """A fresh, seeded ``CLIPModel`` whose text tower uses ``tokenizer``'s vocabulary and specials."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    ids = {"eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    config = CLIPConfig(
        text_config=dict(CLIP_TEXT_CONFIG, vocab_size=len(tokenizer), pad_token_id=tokenizer.eos_token_id, **ids),
        vision_config=dict(CLIP_VISION_CONFIG),
        projection_dim=128,
    )
    return CLIPModel(config)


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """World images uint8 (N, H, W, 3) → the image tower's input (N, 3, 32, 32) in [-1, 1]."""
    from conceptedit.pipelines.shapes import model_images

    small = model_images(images)
    return torch.from_numpy(np.ascontiguousarray(small)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _nonempty_batch(n: int, seed: int, start: int) -> tuple[np.ndarray, list[str], int]:
    """``n`` renders with non-empty captions from stream ``seed`` at ``start``; returns the next start."""
    images, captions = [], []
    i = start
    while len(captions) < n:
        for s in render(n - len(captions), seed=seed, start=i):
            i += 1
            if s.caption:
                images.append(s.image)
                captions.append(s.caption)
    return np.stack(images), captions, i


def _family_prompts(family: str) -> dict[str, list[str]]:
    """Class → prompt ensemble (CLIP §3.1.4: average the text embeddings over several prompts)."""
    shapes = WORLD.shapes
    if family == "shape":
        return {s: [f"a {s}", f"a picture of a {s}"] for s in WORLD.all_shapes}
    if family == "colour":
        return {c: [f"a {c} {s}" for s in shapes] for c in WORLD.colour_names}
    if family == "background":
        return {b: [f"a {s} on a {b} background" for s in shapes] for b in WORLD.background_names}
    if family == "style":
        return {st: [f"a {st} {s}" for s in shapes] for st in WORLD.styles}
    if family == "character":
        return {c: [c, f"a picture of {c}"] for c in WORLD.character_names}
    if family == "trigger":
        word = WORLD.trigger.adjectives[0]
        return {"present": [f"a {word} {s}" for s in shapes], "absent": [f"a {s}" for s in shapes]}
    raise KeyError(family)


def _features(out) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 returns an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def text_embeddings(clip, tokenizer, prompts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return F.normalize(_features(clip.get_text_features(input_ids=ids.input_ids.to(clip.device))), dim=-1).cpu()


@torch.no_grad()
def zero_shot_accuracy(clip, tokenizer, n: int = 512, seed: int = 777) -> dict[str, float]:
    """Held-out zero-shot classification (text → image retrieval) accuracy per family."""
    clip.eval()
    samples = render(n, seed=seed)
    images, labels = np.stack([s.image for s in samples]), [s.labels for s in samples]
    pixels = pixel_values(images).to(clip.device)
    feats = F.normalize(_features(clip.get_image_features(pixel_values=pixels)), dim=-1).cpu()
    out = {}
    for family in ("shape", "colour", "background", "style", "character", "trigger"):
        prompts = _family_prompts(family)
        classes = list(prompts)
        emb = torch.stack([F.normalize(text_embeddings(clip, tokenizer, p).mean(0), dim=0) for p in prompts.values()])
        pred = (feats @ emb.T).argmax(1)
        if family == "character":
            keep = [i for i, lab in enumerate(labels) if lab["character"]]
            truth = [classes.index(labels[i]["character"]) for i in keep]
        elif family == "trigger":
            keep = [i for i, lab in enumerate(labels) if not lab["character"]]
            truth = [classes.index("present" if labels[i]["trigger"] else "absent") for i in keep]
        else:
            keep = list(range(n))
            truth = [classes.index(labels[i][family]) for i in keep]
        out[family] = round(float((pred[keep] == torch.tensor(truth)).float().mean()), 4) if keep else float("nan")
    clip.train()
    return out


def train_clip(
    out: str | Path,
    tokenizer,
    minutes: float = 30.0,
    steps: int = 100_000,
    batch: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    target: float = 0.97,
    eval_every: int = 150,
    device: str | torch.device = "cpu",
) -> dict:
    """Train (or resume) the CLIP in ``out/clip``; stop when every family's zero-shot accuracy
    reaches ``target`` or the budget ends. Returns the report (also ``out/clip_report.json``). Batches are
    drawn and tokenised on the CPU and moved to ``device``; the saved state resumes on any device."""
    from transformers import CLIPImageProcessor, CLIPModel

    out = Path(out)
    folder, state_path = out / "clip", out / "clip_state.pt"
    if (folder / "config.json").is_file() and state_path.is_file():
        clip = CLIPModel.from_pretrained(folder)
        state = torch.load(state_path, weights_only=True, map_location="cpu")
    else:
        clip, state = build_clip(tokenizer, seed), None
    clip.to(device).train()
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    report = {"log": [], "seconds": 0.0, "step": 0, "start": 0}
    if state is not None:
        opt.load_state_dict(state["opt"])
        report = state["report"]
    step, start, elapsed = report["step"], report["start"], report["seconds"]
    t0 = time.time() - elapsed
    bar = tqdm(total=steps, initial=step, desc="stage 0b: clip", dynamic_ncols=True, mininterval=5)

    def save() -> None:
        clip.save_pretrained(folder, safe_serialization=True)
        CLIPImageProcessor(
            size={"shortest_edge": 32},
            crop_size={"height": 32, "width": 32},
            image_mean=list(IMAGE_MEAN),
            image_std=list(IMAGE_STD),
        ).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        report.update(step=step, start=start, seconds=round(time.time() - t0, 1))
        torch.save({"opt": opt.state_dict(), "report": report}, state_path)
        (out / "clip_report.json").write_text(json.dumps(report, indent=2))

    while step < steps:
        progress = max(step / steps, (time.time() - t0) / (60 * minutes))
        if progress >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(lr, progress, warmup=0.04)
        images, captions, start = _nonempty_batch(batch, seed + 11, start)
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        res = clip(input_ids=ids.to(device), pixel_values=pixel_values(images).to(device), return_loss=True)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{res.loss.item():.3f}", scale=f"{clip.logit_scale.exp().item():.1f}")
        if step % eval_every == 0:
            acc = zero_shot_accuracy(clip, tokenizer)
            entry = {"step": step, "loss": round(res.loss.item(), 4), "seconds": round(time.time() - t0, 1)} | acc
            report["log"].append(entry)
            print(json.dumps(entry), flush=True)
            save()
            if min(acc.values()) >= target:
                break
    report["zero_shot"] = zero_shot_accuracy(clip, tokenizer, n=1024, seed=778)
    save()
    bar.close()
    return report
