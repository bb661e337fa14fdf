"""``blindspots``: find a model's conceptual blindspots with an archetypal SAE on image features.

Bohacek, Fel et al. 2025, "Uncovering Conceptual Blindspots in Generative Image Models Using Sparse
Autoencoders" (arXiv 2506.19708; code maty-bohacek/conceptual-blindspots, partial). Steps:

1. features of real images (all tokens of an image encoder: the model's shipped CLIP image tower, or
   DINOv2 with registers as the paper) go to an activation store on disk;
2. an RA-SAE (archetypal, BatchTopK selection, ``conceptedit.sae``) is trained on them;
3. the model generates one image per real image's caption (seeded, batched, cached like ``eval``);
4. per concept, energy (per-image sum of codes over tokens) on real vs generated images →
   δ = E_gen / (E_real + E_gen), a paired test, bootstrap interval, BH-FDR → suppressed /
   exaggerated / faithful (``_blindspots_stats``); generated images that are near copies of a real
   image are flagged;
5. concepts are named by their top-activating real images and, when the image set has ground-truth
   labels (the shapes world), the label most correlated with their energy; HTML + JSON report.

Deviations from the paper: the SAE is trained on the analysed data set, not ImageNet (nothing else
exists offline; the paper's own SAE weights are not reachable); width 256 and a token budget sized for
a CPU (paper: 32k concepts, 50 epochs, AdamW with cosine schedule; here Adam with warm-up, the SAE
trainer's); a concept is called suppressed/exaggerated by a paired t-test at a BH-controlled FDR and
a least shift |δ − 0.5| ≥ ``min_shift`` (0.1; the paper thresholds δ at 0.1/0.9, kept as ``paper_class``
in the report; ``_blindspots_stats`` says why a margin is needed); memorisation is flagged by
nearest-neighbour distance in pooled features (the paper flags pairs with near-zero energy
difference); on the shapes CLIP each token position's mean over the real images is subtracted
(``clip-centred``, ``_blindspots_features`` says why and what it measured; the paper keeps DINOv2's
tokens as they are). ``request.targets`` is not used: the analysis covers every concept the SAE finds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from conceptedit.errors import RequestError
from conceptedit.plugin import AnalysisPlugin, Report, Request
from conceptedit.registry import Registry, register_plugin
from conceptedit.toolkit import Progress, no_progress


def _image_set_from_entry_point(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"entry point {name!r} must point at a function (n, seed) -> (images, captions, labels)")
    IMAGE_SETS.register(name, obj)


#: real-image sources: name -> function(n, seed) -> (PIL images, captions, label dicts); a function's
#: ``world`` attribute names the model world it belongs to (entry-point group conceptedit.image_sets)
IMAGE_SETS: Registry[Callable[..., Any]] = Registry(
    "image set", group="conceptedit.image_sets", load=_image_set_from_entry_point
)


@dataclass
class BlindspotsConfig:
    features: str = field(
        default="auto",
        metadata={"help": "auto (the model's CLIP, else DINOv2), clip, clip:FOLDER, dinov2 or dinov2:NAME_OR_FOLDER"},
    )
    image_set: str = field(
        default="auto",
        metadata={"help": "registered real-image set when no images are given (auto: the model's world)"},
    )
    n_images: int = field(default=512, metadata={"help": "real images drawn from the image set"})
    sae_width: int = field(default=256, metadata={"help": "SAE concepts (paper: 32768)"})
    sae_k: int = field(default=5, metadata={"help": "BatchTopK: active concepts per token on average (paper: 5)"})
    n_archetypes: int = field(default=512, metadata={"help": "k-means archetypes of the RA-SAE"})
    train_tokens: int = field(default=400_000, metadata={"help": "SAE training token budget"})
    lr: float = field(default=5e-4, metadata={"help": "SAE learning rate (paper: 5e-4)"})
    fdr: float = field(default=0.05, metadata={"help": "false-discovery rate across concepts (Benjamini–Hochberg)"})
    min_shift: float = field(
        default=0.1,
        metadata={"help": "least |δ − 0.5| of a discovery (0.1: generated energy ≥ 1.5× or ≤ 2/3 of the real)"},
    )
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for δ's interval"})
    memorisation_quantile: float = field(
        default=0.01, metadata={"help": "flag a generation closer to a real image than this quantile of real-real NN"}
    )
    top_images: int = field(default=6, metadata={"help": "top-activating real images shown per concept"})
    batch_size: int = field(default=16, metadata={"help": "images per generation batch"})
    seed: int = field(default=0, metadata={"help": "generation seed of image i is seed + i; SAE seed"})
    out: str = field(default="runs/blindspots", metadata={"help": "folder for the report, store, SAE and cache"})

    def __post_init__(self) -> None:
        for name in ("n_images", "sae_width", "sae_k", "n_archetypes", "train_tokens", "top_images", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.fdr < 1:
            raise ValueError("fdr must be in (0, 1)")
        if not 0 <= self.min_shift < 0.5:
            raise ValueError("min_shift must be in [0, 0.5)")
        if not 0 < self.memorisation_quantile < 1:
            raise ValueError("memorisation_quantile must be in (0, 1)")
        if self.bootstrap < 0:
            raise ValueError("bootstrap must be >= 0")


def read_captions(path: str | Path) -> list[str]:
    """Captions, one per line (``.txt``), or a CSV/JSON list read by ``toolkit.read_prompts``."""
    from conceptedit.toolkit import read_prompts

    return list(read_prompts(Path(path)))


def check_user_images(images: list[Path], captions: list[str]) -> list[Path]:
    """The image files, checked against the captions before any work (count, empty captions)."""
    from conceptedit.toolkit import expand_images

    files = expand_images(images)
    if not files:
        raise RequestError("no images given; pass a folder of real images (and one caption per image)")
    if len(files) != len(captions):
        raise RequestError(f"{len(files)} images but {len(captions)} captions; give one caption per image, same order")
    empty = [i for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise RequestError(f"caption {empty[0] + 1} is empty; every image needs its caption")
    return files


def load_user_images(images: list[Path], captions: list[str]) -> list[Image.Image]:
    """A user's images (files or folders, sorted) paired one-to-one with ``captions``."""
    files = check_user_images(images, captions)
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(im.convert("RGB"))
        except OSError:
            raise RequestError(f"{f} is not a readable image") from None
    return out


def _model_world(pipe: Any) -> str | None:
    from conceptedit.loading import BUILTIN_MODELS, builtin_model_dir, model_id
    from conceptedit.toolkit import MODEL_SETTINGS_FILE

    source = model_id(pipe)
    folder = builtin_model_dir(source) if source in BUILTIN_MODELS else Path(source)
    try:
        world = json.loads((folder / MODEL_SETTINGS_FILE).read_text()).get("world")
    except (OSError, ValueError, AttributeError):
        return None
    return world if isinstance(world, str) else None


def image_set_for(pipe: Any, name: str) -> Callable[..., Any]:
    if name != "auto":
        if name not in IMAGE_SETS:
            raise RequestError(f"unknown image set {name!r}; registered: {sorted(IMAGE_SETS)}")
        return IMAGE_SETS[name]
    world = _model_world(pipe)
    for fn in IMAGE_SETS.values():
        if world and getattr(fn, "world", None) == world:
            return fn
    raise RequestError(
        "no real images given and the model's world has no registered image set; pass --images and --captions"
    )


def _generate_cached(pipe: Any, captions: list[str], seeds: list[int], cache_root: Path, batch_size: int) -> list[Any]:
    """One image per caption, cached on disk by (model, edits, prompt, seed, settings) as ``eval`` does."""
    from conceptedit.edits.base import applied_edits
    from conceptedit.eval.cache import ImageCache, image_key
    from conceptedit.eval.runner import edit_key, model_key
    from conceptedit.generation import generate, generation_settings
    from conceptedit.loading import model_id

    cache = ImageCache(cache_root)
    settings = generation_settings(pipe)
    mkey = model_key(pipe, model_id(pipe))
    ekeys = [edit_key(e) for e in applied_edits(pipe)]
    keys = [image_key(mkey, ekeys, c, None, s, settings) for c, s in zip(captions, seeds, strict=True)]
    images = [cache.get(k) for k in keys]
    missing = [i for i, im in enumerate(images) if im is None]
    for start in range(0, len(missing), batch_size):
        # another process filling the same cache (a second worker, an earlier run resumed) may have made some
        for i in missing[start : start + batch_size]:
            images[i] = cache.get(keys[i])
        chunk = [i for i in missing[start : start + batch_size] if images[i] is None]
        if not chunk:
            continue
        made = generate(pipe, [captions[i] for i in chunk], [seeds[i] for i in chunk], batch_size=batch_size)
        for i, im in zip(chunk, made, strict=True):
            cache.put(keys[i], im)
            images[i] = im
    return images


def _features_store(extractor: Any, images: list[Any], folder: Path, batch_size: int = 64) -> tuple[Any, int]:
    """Token features of ``images`` into an on-disk activation store (one row per token)."""
    from conceptedit.sae.store import ActivationStore, ShardWriter

    digest = hashlib.sha256()
    for im in images:
        digest.update(im.convert("RGB").tobytes())
    key = f"{extractor.name}|{len(images)}|{digest.hexdigest()}"
    if (folder / "index.json").is_file():
        store = ActivationStore(folder)
        if store.meta.get("key") == key:
            return store, int(store.meta["tokens"])
        raise RequestError(f"{folder} holds features of other images or another extractor; use another --out folder")
    writer: Any = None
    tokens = 0
    for s in range(0, len(images), batch_size):
        t = extractor.tokens(images[s : s + batch_size], batch_size)
        tokens = t.shape[1]
        if writer is None:
            meta = {"key": key, "images": len(images), "tokens": tokens, "model": extractor.name}
            writer = ShardWriter(folder, t.shape[2], meta=meta)
        img = torch.arange(s, s + t.shape[0]).repeat_interleave(tokens)
        writer.add(t.reshape(-1, t.shape[2]), prompt_id=img, position=torch.arange(tokens).repeat(t.shape[0]))
    return writer.close(), tokens


def _energies(sae: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Per-image energy ``[n, width]`` (sum of codes over tokens), computed sparsely."""
    n, t, d = tokens.shape
    out = torch.zeros(n * sae.width, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, n, 64):
            x = tokens[s : s + 64].reshape(-1, d)
            codes = sae.encode(x)
            img = torch.arange(s, s + x.shape[0] // t).repeat_interleave(t)[:, None].expand_as(codes.indices)
            out.index_add_(0, (img * sae.width + codes.indices).reshape(-1), codes.values.reshape(-1).double())
    return out.view(n, sae.width)


def _trained_sae(store: Any, config: BlindspotsConfig, folder: Path) -> Any:
    """The RA-SAE on the real images' store, trained once: saved under ``folder`` with the key of its
    store and settings, so a second analysis of the same real images (another model, an edit applied)
    reuses it instead of spending minutes retraining an identical SAE."""
    from conceptedit.sae import TrainConfig, train_sae
    from conceptedit.sae.io import load_sae, save_sae

    settings = ("sae_width", "sae_k", "n_archetypes", "train_tokens", "lr", "seed")
    key = {"store": store.meta.get("key"), **{k: getattr(config, k) for k in settings}}
    key_file = folder / "key.json"
    if key_file.is_file():
        if json.loads(key_file.read_text()) == key:
            return load_sae(folder).eval()
        raise RequestError(f"{folder} holds an SAE of other images or settings; use another --out folder")
    torch.manual_seed(config.seed)
    batch = min(1024, store.n_rows)
    tc = TrainConfig(
        token_budget=max(config.train_tokens, batch), batch_size=batch, lr=config.lr, seed=config.seed,
        warmup_steps=20, init_rows=min(8192, store.n_rows), progress=False,
    )  # fmt: skip
    sae = train_sae(
        store, "archetypal", config.sae_width, config=tc, k=config.sae_k, selection="batchtopk",
        n_archetypes=min(config.n_archetypes, tc.init_rows),
    )  # fmt: skip
    sae.eval()
    save_sae(sae, folder)
    key_file.write_text(json.dumps(key))
    return sae


def analyze_blindspots(
    pipe: Any,
    images: list[Any],
    captions: list[str],
    labels: list[dict[str, Any]] | None,
    config: BlindspotsConfig,
    progress: Progress = no_progress,
    report_dir: Path | None = None,
) -> dict[str, Any]:
    """The whole analysis; writes ``report.json`` and ``report.html`` under ``report_dir`` (default
    ``config.out``, which also holds the feature store, the SAE and the image cache, shared by runs)."""
    from conceptedit.loading import model_id
    from conceptedit.plugins._blindspots_features import make_extractor
    from conceptedit.plugins._blindspots_report import write_report
    from conceptedit.plugins._blindspots_stats import (
        concept_stats,
        label_concepts,
        label_correlations,
        memorisation_flags,
    )

    if len(images) != len(captions):
        raise RequestError(f"{len(images)} images but {len(captions)} captions; give one caption per image")
    if len(images) < 8:
        raise RequestError(f"need at least 8 real images with captions, got {len(images)}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    progress(0.02, "features of real images")
    extractor = make_extractor(config.features, pipe)
    extractor.fit(images)  # state from the real images (clip-centred: each position's mean token)
    store, _ = _features_store(extractor, images, out / "real_features")
    real_tokens = extractor.tokens(images)
    times["features_real"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress(0.15, "training the SAE")
    sae = _trained_sae(store, config, out / "sae")
    times["sae_train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress(0.45, "generating images for the captions")
    seeds = [config.seed + i for i in range(len(captions))]
    generated = _generate_cached(pipe, captions, seeds, out / "cache", config.batch_size)
    times["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress(0.8, "features of generated images and statistics")
    gen_tokens = extractor.tokens(generated)
    e_real, e_gen = _energies(sae, real_tokens), _energies(sae, gen_tokens)
    stats = concept_stats(
        e_real.numpy(), e_gen.numpy(), fdr=config.fdr, bootstrap=config.bootstrap, min_shift=config.min_shift,
        seed=config.seed,
    )  # fmt: skip
    flags, nearest, dist, threshold = memorisation_flags(
        extractor.pooled(real_tokens), extractor.pooled(gen_tokens), config.memorisation_quantile
    )
    names = label_correlations(e_real.numpy(), labels) if labels else []
    by_label = label_concepts(e_real.numpy(), labels) if labels else {}
    top = torch.topk(e_real.T, min(config.top_images, len(images)), dim=1).indices.tolist()
    top_gen = torch.topk(e_gen.T, min(config.top_images, len(images)), dim=1).indices.tolist()
    times["analysis"] = time.perf_counter() - t0

    concepts = []
    for s in stats:
        row: dict[str, Any] = s.to_dict()
        row["paper_class"] = "suppressed" if s.delta < 0.1 else "exaggerated" if s.delta > 0.9 else "faithful"
        row["top_real_images"] = top[s.concept]
        row["top_generated_images"] = top_gen[s.concept]  # where an exaggerated concept shows
        if names:
            row["name"], row["name_corr"] = names[s.concept][0], round(names[s.concept][1], 4)
        concepts.append(row)
    result = {
        "format": "conceptedit.blindspots",
        "version": 1,
        "model": model_id(pipe),
        "features": extractor.name,
        "n_images": len(images),
        "config": dict(config.__dict__),
        "sae": {"architecture": "archetypal", "selection": "batchtopk", "width": sae.width, "k": config.sae_k},
        "counts": {
            lab: sum(c["label"] == lab for c in concepts)
            for lab in ("suppressed", "exaggerated", "faithful", "inactive")
        },
        "significant_below_min_shift": sum(c["significant"] and c["label"] == "faithful" for c in concepts),
        "concepts": concepts,
        # each ground-truth label's best-correlated concept (a label may be no concept's best name)
        "labels": {k: {"concept": j, "r": round(r, 4)} for k, (j, r) in by_label.items()},
        "memorisation": {
            "threshold": threshold,
            "flagged": [i for i, f in enumerate(flags) if f],
            "pairs": [{"generated": i, "nearest_real": nearest[i], "distance": dist[i]} for i in range(len(flags))],
        },
        "captions": captions,
        "seconds": {k: round(v, 2) for k, v in times.items()},
    }
    report_dir = Path(report_dir) if report_dir is not None else out
    report_dir.mkdir(parents=True, exist_ok=True)
    write_report(result, images, generated, report_dir)
    progress(1.0, "done")
    return result


@register_plugin
class Blindspots(AnalysisPlugin):
    name = "blindspots"
    Config = BlindspotsConfig
    summary = "conceptual blindspots: RA-SAE concepts of real images that the model suppresses or exaggerates"
    paper = "Bohacek, Fel et al. 2025, arXiv 2506.19708"

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> Report:
        cfg: BlindspotsConfig = self.config
        captions = request.extra.get("captions")
        labels = None
        if request.images:
            if captions is None:
                raise RequestError("real images need captions (one per image); pass --captions FILE")
            images = load_user_images(request.images, list(captions))
        else:
            images, captions, labels = image_set_for(pipe, cfg.image_set)(cfg.n_images, cfg.seed)
        result = analyze_blindspots(pipe, images, list(captions), labels, cfg, progress)
        found = [c for c in result["concepts"] if c["label"] in ("suppressed", "exaggerated")]
        rows = [
            {k: c.get(k) for k in ("concept", "label", "delta", "delta_low", "delta_high", "effect", "q", "name")}
            for c in sorted(found, key=lambda c: c["q"])
        ]
        out = Path(cfg.out)
        return Report(
            title="Conceptual blindspots",
            summary=(
                f"{result['counts']['suppressed']} suppressed, {result['counts']['exaggerated']} exaggerated of "
                f"{cfg.sae_width} concepts at FDR {cfg.fdr}; {len(result['memorisation']['flagged'])} near copies. "
                f"Report: {out / 'report.html'}"
            ),
            tables={"concepts": rows},
            figures={"δ per concept": out / "delta.png"},
            data=result,
        )
