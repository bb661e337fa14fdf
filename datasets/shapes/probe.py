"""The shapes-world probe: a small CNN that reads every concept family off a 64×64 image.

Families (see ``WORLD.probe_families``): shape, colour, background, style, character (``none`` or a
name), trigger (``absent``/``present``) and, per implicit mark, ``absent`` or the corner it sits in.
Trained on generator images (rare classes made common, light blur/noise augmentation so it reads
decoded generations too); probabilities are calibrated per family by temperature scaling on a
held-out split. Shipped as ``probe.safetensors`` + ``probe.json`` in ``<shapes model>/probe/``.

>>> probe = Probe.load()
>>> probe.predict([image])[0]["shape"]
{'label': 'circle', 'prob': 0.99, 'probs': {'circle': 0.99, ...}}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from conceptedit.errors import ConceptEditError

WEIGHTS, CONFIG = "probe.safetensors", "probe.json"


def default_path() -> Path:
    from conceptedit.pipelines.shapes import model_dir

    return model_dir() / "probe"


class ProbeNet(nn.Module):
    def __init__(self, heads: dict[str, int], width: int = 32, image_size: int = 64) -> None:
        super().__init__()
        w = width

        def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        stride = 2 if image_size >= 64 else 1
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 5, stride, 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),  # 32×32
            block(w, 2 * w), nn.MaxPool2d(2),  # 16×16
            block(2 * w, 2 * w), nn.MaxPool2d(2),  # 8×8
            block(2 * w, 3 * w), nn.MaxPool2d(2),  # 4×4 (kept: corners need position)
        )  # fmt: skip
        feat = 3 * w * (image_size // (8 * stride)) ** 2
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(feat, 256), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.heads = nn.ModuleDict({name: nn.Linear(256, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(self.features(x))
        return {name: head(h) for name, head in self.heads.items()}


def image_kind_warning(image: Image.Image, size: int) -> str | None:
    """Why ``image`` is not the kind the probe was trained on (an RGB square at the model's resolution
    or the world's 2x render), or None. Labels of other images are guesses, so callers warn."""
    w, h = image.size
    problems = []
    if image.mode != "RGB":
        problems.append(f"mode {image.mode} (not RGB)")
    if w != h or w not in (size, 2 * size):
        problems.append(f"size {w}x{h} (the probe reads {size}x{size} or {2 * size}x{2 * size} renders)")
    if not problems:
        return None
    return "not an image of the shapes world's kind: " + ", ".join(problems) + "; its labels are guesses"


def _to_batch(images: Any, size: int) -> torch.Tensor:
    """PIL images, uint8 (N,H,W,3)/(N,3,H,W) arrays or tensors, or float tensors in [0, 1] →
    float (N, 3, size, size) in [-1, 1]. Larger images are area-averaged (as the model's training
    images are made from the 64×64 world), smaller ones upsampled bilinearly."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            return torch.zeros(0, 3, size, size)
        if not all(isinstance(im, Image.Image) for im in images):
            raise ConceptEditError("probe.predict takes PIL images, or one uint8 array/tensor of images")
        return torch.cat([_to_batch(np.asarray(im.convert("RGB"))[None], size) for im in images])
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.array(images, copy=not images.flags.writeable or None, order="C"))
    if not isinstance(images, torch.Tensor):
        raise ConceptEditError(f"probe.predict cannot read {type(images).__name__}")
    x = images
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ConceptEditError(f"expected a batch of images (N, H, W, 3) or (N, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    else:
        x = x.float() * 2.0 - 1.0  # float images in [0, 1], as diffusers' output_type="pt"
    if x.shape[-2:] != (size, size):
        if x.shape[-1] > size:
            x = F.interpolate(x, size=(size, size), mode="area")
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class Probe:
    """A trained probe: ``predict`` returns, per image and family, the label, its calibrated
    probability and the whole distribution."""

    def __init__(
        self, net: ProbeNet, classes: dict[str, list[str]], temperatures: dict[str, float], config: dict | None = None
    ) -> None:
        self.net = net.eval()
        self.classes = classes
        self.temperatures = temperatures
        self.config = config or {}
        self.image_size = int(self.config.get("image_size", 64))

    @property
    def families(self) -> list[str]:
        return list(self.classes)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Probe:
        from safetensors.torch import load_file

        folder = Path(path) if path else default_path()
        if folder.is_file():
            folder = folder.parent
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise ConceptEditError(f"no probe at {folder} (expected {CONFIG} and {WEIGHTS})")
        config = json.loads((folder / CONFIG).read_text())
        classes = {k: list(v) for k, v in config["classes"].items()}
        net = ProbeNet({k: len(v) for k, v in classes.items()}, config["width"], config["image_size"])
        state = {k: v.float() for k, v in load_file(folder / WEIGHTS).items()}
        net.load_state_dict(state)
        return cls(net, classes, {k: float(v) for k, v in config["temperatures"].items()}, config)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, folder / WEIGHTS)
        config = dict(self.config, classes=self.classes, temperatures=self.temperatures)
        (folder / CONFIG).write_text(json.dumps(config, indent=2))

    @torch.no_grad()
    def logits(self, images: Any, batch_size: int = 256) -> dict[str, torch.Tensor]:
        x = _to_batch(images, self.image_size)
        outs: dict[str, list[torch.Tensor]] = {f: [] for f in self.classes}
        for i in range(0, x.shape[0], batch_size):
            for f, v in self.net(x[i : i + batch_size]).items():
                outs[f].append(v)
        return {f: torch.cat(v) if v else torch.zeros(0, len(self.classes[f])) for f, v in outs.items()}

    def predict(self, images: Any) -> list[dict[str, dict]]:
        logits = self.logits(images)
        n = next(iter(logits.values())).shape[0]
        out: list[dict[str, dict]] = [{} for _ in range(n)]
        for family, lg in logits.items():
            probs = torch.softmax(lg / self.temperatures.get(family, 1.0), dim=-1)
            conf, idx = probs.max(dim=-1)
            names = self.classes[family]
            for i in range(n):
                out[i][family] = {
                    "label": names[int(idx[i])],
                    "prob": float(conf[i]),
                    "probs": {c: float(p) for c, p in zip(names, probs[i].tolist(), strict=True)},
                }
        return out


# ------------------------------------------------------------------------------------------ training
def targets(labels: list[dict], classes: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Ground-truth class indices per family from generator labels."""

    def value(lab: dict, family: str) -> str:
        if family == "character":
            return lab["character"] or "none"
        if family == "trigger":
            return "present" if lab["trigger"] else "absent"
        if family in lab.get("marks", {}):
            m = lab["marks"][family]
            return m["corner"] if m["present"] else "absent"
        return lab[family]

    return {f: torch.tensor([classes[f].index(value(lab, f)) for lab in labels]) for f in classes}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur some images a little and add noise: decoded generations are softer than drawings."""
    n = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :]) / 16
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(3, 1, 3, 3).contiguous(), groups=3)
    amount = torch.rand(n, 1, 1, 1, generator=gen)
    x = x + amount * (blurred - x)
    x = x + torch.randn(x.shape, generator=gen) * 0.04 * torch.rand(n, 1, 1, 1, generator=gen)
    return x.clamp(-1, 1)


def _fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _vae_roundtrip(vae, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        return vae.decode(z).sample.clamp(-1, 1)


def train_probe(
    out: str | Path | None = None,
    steps: int = 1500,
    seed: int = 0,
    minutes: float = 8.0,
    batch: int = 128,
    width: int = 32,
    n_heldout: int = 4000,
    lr: float = 2e-3,
    progress: bool = True,
    vae: str | Path | None = None,
    recon_fraction: float = 0.5,
    init: str | Path | None = None,
    image_size: int | None = None,
) -> tuple[Probe, dict]:
    """Train on the balanced generator (seed stream ``seed + 100``), calibrate and test on held-out
    streams; save to ``out`` if given. Returns the probe and a report with per-family accuracy.

    ``vae`` (a folder with ``vae/``): replace ``recon_fraction`` of every batch by its VAE round
    trip, so the probe also reads images as the model's decoder draws them. ``init``: start from a
    saved probe (fine-tuning)."""
    from tqdm.auto import tqdm

    from conceptedit.datasets.shapes import WORLD, balanced_world, render_batch
    from conceptedit.pipelines.shapes import RESOLUTION

    image_size = image_size or RESOLUTION
    torch.manual_seed(seed)
    world = balanced_world()
    classes = {f: list(WORLD.classes(f)) for f in WORLD.probe_families}
    if init is not None:
        net = Probe.load(init).net.train()
    else:
        net = ProbeNet({f: len(c) for f, c in classes.items()}, width, image_size)
    autoencoder = None
    if vae is not None:
        from diffusers import AutoencoderKL

        autoencoder = AutoencoderKL.from_pretrained(Path(vae) / "vae").eval()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    net.train()
    bar = tqdm(range(steps), desc="probe", disable=not progress, dynamic_ncols=True)
    step = 0
    for step in bar:
        frac = max(step / steps, (time.time() - t0) / (60 * minutes))
        if frac >= 1:
            break
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 50 + 0.02) * 0.5 * (1 + np.cos(np.pi * frac))
        images, labels, _ = render_batch(batch, seed=seed + 100, start=step * batch, world=world)
        x = _to_batch(images, image_size)
        if autoencoder is not None:
            k = int(round(recon_fraction * batch))
            x = torch.cat([_vae_roundtrip(autoencoder, x[:k], gen), x[k:]])
        x = _augment(x, gen)
        y = targets(labels, classes)
        outs = net(x)
        loss = sum(F.cross_entropy(outs[f], y[f]) for f in classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    config = {
        "width": width,
        "image_size": image_size,
        "trained_steps": step,
        "seed": seed,
        "vae_roundtrip": str(vae) if vae else None,
        "init": str(init) if init else None,
    }
    probe = Probe(net, classes, {f: 1.0 for f in classes}, config)

    # calibrate on one held-out stream (augmented like the training data), test on another
    images, labels, _ = render_batch(n_heldout, seed=seed + 200, world=world)
    x = _to_batch(images, image_size)
    if autoencoder is not None:
        k = int(round(recon_fraction * n_heldout))
        x = torch.cat([_vae_roundtrip(autoencoder, x[i : min(i + 256, k)], gen) for i in range(0, k, 256)] + [x[k:]])
    x = _augment(x, gen)
    lg = probe.logits(x)
    y = targets(labels, classes)
    probe.temperatures = {f: _fit_temperature(lg[f], y[f]) for f in classes}
    report = {
        "steps": step,
        "seconds": round(time.time() - t0, 1),
        "temperatures": probe.temperatures,
        "heldout_accuracy": evaluate(probe, n_heldout, seed=seed + 300, world=world),
        "heldout_accuracy_natural": evaluate(probe, n_heldout, seed=seed + 400),
    }
    probe.config["report"] = report
    if out is not None:
        probe.save(out)
    return probe, report


def evaluate(probe: Probe, n: int = 2000, seed: int = 12345, world=None) -> dict[str, float]:
    """Per-family accuracy of ``probe`` on ``n`` fresh generator images (natural world by default)."""
    from conceptedit.datasets.shapes import WORLD, render_batch

    images, labels, _ = render_batch(n, seed=seed, world=world or WORLD)
    lg = probe.logits(images)
    y = targets(labels, probe.classes)
    return {f: round(float((lg[f].argmax(-1) == y[f]).float().mean()), 4) for f in probe.classes}
