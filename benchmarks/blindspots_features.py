"""Which shapes-CLIP features carry the world's labels, before and after the blind-spot SAE?

The blind-spot analysis (plugin ``blindspots``) can only find a shift in a concept its features carry
and its SAE isolates. This measures both, per ground-truth label (marks, styles, the halo, the rare
crescent, a common shape and colour), on world renders:

1. **encoding** (no SAE): test AUC of an L2 logistic-regression probe fitted on ``--n-train`` renders
   and scored on ``--n-test`` others, for the pooled embedding (CLS token), the mean patch token, and
   each extractor's full token set flattened (position kept);
2. **SAE alignment** (``--sae``): the benchmark's SAE (``blindspots_shapes.py`` settings: width 256,
   BatchTopK k 5, 150k training tokens) trained on each extractor's tokens of ``--n-sae`` renders (the
   benchmark's crescent-enriched set; ``clip-centred`` fitted on them as the analysis does), and each
   label's best-correlated concept (Pearson r of its
   per-image energy with the label), over ``--seeds``.

    nice -n 10 python benchmarks/blindspots_features.py --sae --out runs/bench/bs_features

Ground-truth labels are used only to score the features, never to build them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

LABELS = (
    "watermark=True", "qr=True", "glyphs=True", "style=striped", "style=dotted", "halo=True",
    "shape=crescent", "shape=circle", "colour=red",
)  # fmt: skip
EXTRACTORS = ("clip-all", "clip-centred", "clip-corners", "clip-all@2,3")


def indicator(labels: list[dict], key: str) -> np.ndarray:
    k, _, v = key.partition("=")
    return np.array([str(lab[k]) == v for lab in labels], dtype=int)


def probe_auc(x: np.ndarray, y: np.ndarray, n_train: int) -> float:
    """Test AUC of a logistic-regression probe (features standardised on the training part)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mu) / sd
    if len(set(y[n_train:])) < 2 or len(set(y[:n_train])) < 2:
        return float("nan")
    clf = LogisticRegression(C=0.05, max_iter=500).fit(x[:n_train], y[:n_train])
    return float(roc_auc_score(y[n_train:], clf.decision_function(x[n_train:])))


def encoding(
    pipe, n_train: int, n_test: int, seed: int, extractors: tuple[str, ...] = EXTRACTORS
) -> dict[str, dict[str, float]]:
    from conceptedit.datasets.shapes_images import real_images
    from conceptedit.plugins._blindspots_features import make_extractor

    images, _, labels = real_images(n_train + n_test, seed)
    out: dict[str, dict[str, float]] = {}
    for spec in extractors:
        if spec == "clip-centred":
            continue  # clip-all less a constant: the same probe (the probe standardises its features)
        tok = make_extractor(spec, pipe).tokens(images).numpy()
        views = {f"{spec} tokens ({tok.shape[1]}, flattened)": tok.reshape(len(tok), -1)}
        if spec == "clip-all":
            views = {"pooled (CLS)": tok[:, 0], "mean patch token": tok[:, 1:].mean(1), **views}
        for name, x in views.items():
            out[name] = {k: round(probe_auc(x, indicator(labels, k), n_train), 3) for k in LABELS}
            print(f"{name:34s} " + " ".join(f"{k}:{v:.3f}" for k, v in out[name].items()), flush=True)
    return out


def sae_alignment(
    pipe,
    n: int,
    seeds: list[int],
    out: Path,
    train_renders: int = 0,
    train_tokens: int = 150_000,
    extractors: tuple[str, ...] = EXTRACTORS,
) -> dict[str, dict[str, list[float]]]:
    """Best r per label of SAEs trained on the ``n`` scored renders, or (``train_renders`` > 0) on that many
    other renders of the world's own mix (not enriched), as the paper trains its SAE on a separate corpus."""
    from blindspots_shapes import enriched

    from conceptedit.datasets.shapes_images import real_images
    from conceptedit.plugins._blindspots_features import make_extractor
    from conceptedit.plugins._blindspots_stats import label_concepts
    from conceptedit.plugins.blindspots import BlindspotsConfig, _energies, _features_store, _trained_sae

    images, _, labels = enriched(n, 0, "crescent", 0.15)
    fit_images = real_images(train_renders, 1234)[0] if train_renders else images
    res: dict[str, dict[str, list[float]]] = {}
    for spec in extractors:
        ex = make_extractor(spec, pipe)
        ex.fit(fit_images)  # as the analysis does (clip-centred: the real images' mean token per position)
        tokens = ex.tokens(images)
        res[spec] = {k: [] for k in LABELS}
        for seed in seeds:
            t = time.perf_counter()
            tag = f"_train{train_renders}" if train_renders else ""
            folder = out / f"{spec.replace('@', '_').replace(',', '-')}{tag}_s{seed}"
            cfg = BlindspotsConfig(
                features=spec, n_images=len(fit_images), train_tokens=train_tokens, seed=seed, out=str(folder)
            )
            store, _ = _features_store(ex, fit_images, folder / "real_features")
            sae = _trained_sae(store, cfg, folder / "sae")
            best = label_concepts(_energies(sae, tokens).numpy(), labels)
            for k in LABELS:
                res[spec][k].append(round(best[k][1], 3))
            print(f"SAE {spec} seed {seed} ({time.perf_counter() - t:.0f} s): "
                  + " ".join(f"{k}:{best[k][1]:.2f}" for k in LABELS), flush=True)  # fmt: skip
    return res


def main() -> None:
    from conceptedit.loading import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=11, help="render stream of the probe's images")
    ap.add_argument("--sae", action="store_true", help="also train the benchmark's SAE per extractor")
    ap.add_argument("--n-sae", type=int, default=512)
    ap.add_argument("--seeds", default="0,1", help="SAE seeds")
    ap.add_argument(
        "--sae-train-renders", type=int, default=0,
        help="train each SAE on this many other renders (the world's mix) instead of the --n-sae scored ones",
    )  # fmt: skip
    ap.add_argument("--sae-train-tokens", type=int, default=150_000, help="SAE training token budget")
    ap.add_argument(
        "--extractors", nargs="+", default=list(EXTRACTORS), metavar="SPEC",
        help="a subset of the extractors, space-separated (a spec may hold a comma: clip-all@2,3)",
    )  # fmt: skip
    ap.add_argument("--no-probe", action="store_true", help="skip the linear-probe AUCs (the SAE part only)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/bs_features"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    extractors = tuple(args.extractors)
    unknown = [x for x in extractors if x not in EXTRACTORS]
    if unknown:
        ap.error(f"--extractors: choose from {' '.join(EXTRACTORS)} (got {' '.join(unknown)})")
    if args.sae_train_renders < 0 or args.sae_train_tokens < 1:
        ap.error("--sae-train-renders must be >= 0 and --sae-train-tokens >= 1")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)  # after the argument checks: a bad option costs no model load
    report: dict = {"n_train": args.n_train, "n_test": args.n_test}
    if not args.no_probe:
        report["probe_auc"] = encoding(pipe, args.n_train, args.n_test, args.seed, extractors)
    if args.sae:
        seeds = [int(s) for s in args.seeds.split(",")]
        report["sae_best_r"] = sae_alignment(
            pipe, args.n_sae, seeds, args.out, args.sae_train_renders, args.sae_train_tokens, extractors
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
