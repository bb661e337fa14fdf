"""SAE training benchmark: every architecture on the same stored activations, plus the headline
TopK (sparse kernels) vs a straightforward dense TopK at width 16,384, k=32, d=768.

Prints one JSON line per run (tokens/s, peak RSS, final FVU and L0 on the first rows of the store)
and a final line with the measured TopK/dense throughput ratio. Each run is a fresh subprocess, so
its peak RSS is its own. Data: d=768 activations with a planted sparse dictionary, written once as
an on-disk store. If the built-in shapes model is installed, its text encoder's middle layer is
also benchmarked (skipped with a message otherwise).

    python benchmarks/sae_train.py                       # defaults: a few minutes on 2 CPU cores
    python benchmarks/sae_train.py --headline-tokens 65536 --arch-tokens 32768 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from conceptedit.sae import (
    SAE_ARCHITECTURES,
    ActivationStore,
    InMemoryStore,
    SAETrainer,
    TrainConfig,
    create_sae,
    evaluate_sae,
)
from conceptedit.sae.base import TrainOut, normalized_mse
from conceptedit.sae.synthetic import planted_sparse_data
from conceptedit.sae.topk import TopKSAE


class DenseTopKSAE(TopKSAE):
    """The straightforward implementation: dense pre-activations, dense codes, dense decode, the
    same loss (FVU + 1/32 AuxK) and the same selection, with plain autograd."""

    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        xc = xn - self.b_pre
        pre = xc @ self.W_enc.T + self.b_enc
        vals, idx = pre.topk(self.k, dim=-1)
        z = torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))
        recon = z @ self.W_dec + self.b_pre
        aux = {}
        if dead_mask is not None and self.aux_coef > 0 and bool(dead_mask.any()):
            av, ai = pre.masked_fill(~dead_mask, float("-inf")).topk(self.k_aux, dim=-1)
            za = torch.zeros_like(pre).scatter(1, ai, torch.relu(av))
            e = (xn - recon).detach()
            aux["auxk"] = self.aux_coef * torch.nan_to_num(normalized_mse(e, za @ self.W_dec), nan=0.0)
        return recon, z, aux


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's peak)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(spec: dict) -> dict:
    """One training run in this process; returns the JSON record."""
    torch.set_num_threads(spec["threads"])
    store = ActivationStore(spec["store"]) if spec["store"] else None
    if spec.get("real"):
        store = InMemoryStore(torch.load(spec["real"], weights_only=True))
    kw = dict(spec["kw"])
    if spec["arch"] == "topk_dense":
        sae = DenseTopKSAE(store.d_in, spec["width"], **kw)
    else:
        sae = create_sae(spec["arch"], store.d_in, spec["width"], **kw)
    cfg = TrainConfig(
        token_budget=spec["tokens"],
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        warmup_steps=5,
        dead_after_tokens=spec["dead_after"],
        init_rows=4096,
        progress=False,
    )
    trainer = SAETrainer(sae, store, cfg, device="cpu")
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    metrics = evaluate_sae(sae, store, max_rows=spec["eval_rows"])
    return {
        "data": spec["data"],
        "arch": spec["arch"],
        "d_in": store.d_in,
        "width": spec["width"],
        "k": kw.get("k"),
        "batch_size": spec["batch_size"],
        "tokens": cfg.total_steps * cfg.batch_size,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(cfg.total_steps * cfg.batch_size / seconds, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_train_mb": round(rss_before, 1),
        "train_fvu_last": round(trainer.history[-1]["fvu"], 4),
        "fvu": round(metrics["fvu"], 4),
        "l0": round(metrics["l0"], 2),
        "dead_fraction": round(metrics["dead_fraction"], 4),
        "threads": spec["threads"],
    }


def headline_worker(spec: dict) -> dict:
    """Sparse TopK and the dense baseline trained side by side on the same batches, their steps
    interleaved (alternating which goes first) so both see the same load on a shared machine."""
    torch.set_num_threads(spec["threads"])
    store = ActivationStore(spec["store"])
    cfg = TrainConfig(
        token_budget=spec["tokens"],
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        warmup_steps=5,
        dead_after_tokens=spec["dead_after"],
        init_rows=4096,
        progress=False,
    )
    kw = spec["kw"]
    trainers = {
        "topk": SAETrainer(create_sae("topk", store.d_in, spec["width"], **kw), store, cfg, device="cpu"),
        "topk_dense": SAETrainer(DenseTopKSAE(store.d_in, spec["width"], **kw), store, cfg, device="cpu"),
    }
    for trainer in trainers.values():
        trainer.prepare()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    stream = store.batches(cfg.batch_size, seed=cfg.seed)
    for step in range(cfg.total_steps):
        x = next(stream)
        names = list(trainers) if step % 2 == 0 else list(reversed(trainers))
        for name in names:
            t0 = time.perf_counter()
            trainers[name].train_step(x)
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, trainer in trainers.items():
        m = evaluate_sae(trainer.sae.eval(), store, max_rows=spec["eval_rows"])
        total = sum(times[name])
        out[name] = {
            "tokens_per_s": round(cfg.total_steps * cfg.batch_size / total, 1),
            "median_step_s": round(sorted(times[name])[len(times[name]) // 2], 3),
            "fvu": round(m["fvu"], 4),
            "l0": round(m["l0"], 2),
        }
    return {
        "headline": f"TopK training, width {spec['width']}, k={kw['k']}, d={store.d_in}, "
        f"batch {cfg.batch_size}, {cfg.total_steps} interleaved steps, {spec['threads']} threads",
        "sparse_tokens_per_s": out["topk"]["tokens_per_s"],
        "dense_tokens_per_s": out["topk_dense"]["tokens_per_s"],
        "throughput_ratio": round(out["topk"]["tokens_per_s"] / out["topk_dense"]["tokens_per_s"], 2),
        "median_step_ratio": round(out["topk_dense"]["median_step_s"] / out["topk"]["median_step_s"], 2),
        "sparse_median_step_s": out["topk"]["median_step_s"],
        "dense_median_step_s": out["topk_dense"]["median_step_s"],
        "sparse_fvu": out["topk"]["fvu"],
        "dense_fvu": out["topk_dense"]["fvu"],
        "sparse_l0": out["topk"]["l0"],
        "dense_l0": out["topk_dense"]["l0"],
    }


def run_child(spec: dict) -> dict | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        print(json.dumps({"arch": spec["arch"], "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
        return None
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(record), flush=True)
    return record


def arch_kwargs(arch: str, k: int) -> dict:
    names = SAE_ARCHITECTURES[arch].hparam_names() if arch in SAE_ARCHITECTURES else ["k"]
    kw: dict = {"seed": 0}
    if "k" in names:
        kw["k"] = k
    if "n_archetypes" in names:
        kw["n_archetypes"] = 1024
    return kw


def real_text_activations(out: Path, n_prompts: int) -> Path | None:
    """The shapes model's text-encoder middle layer on generated captions, or None with a message."""
    try:
        import numpy as np

        from conceptedit.datasets.shapes import caption_for, sample_labels
        from conceptedit.loading import load_pipeline
        from conceptedit.pipelines import shapes
        from conceptedit.sae import collect_activations

        if not (shapes.model_dir() / "model_index.json").is_file():
            raise FileNotFoundError(f"no trained shapes model at {shapes.model_dir()}")
        pipe = load_pipeline("shapes", device="cpu", dtype="float32")
        layers = pipe.text_encoder.config.num_hidden_layers
        module = f"text_model.encoder.layers.{layers // 2}"
        rng = np.random.default_rng(0)
        prompts = [caption_for(sample_labels(rng), rng)[0] for _ in range(n_prompts)]
        store = collect_activations(pipe, module, prompts, None, progress=False)
        path = out / "real.pt"
        torch.save(store.x, path)
        print(json.dumps({"note": f"real data: shapes text encoder {module}, {store.n_rows} token rows"}))
        return path
    except Exception as exc:  # the built-in model is optional here
        print(json.dumps({"note": f"skipping the real text-encoder run: {type(exc).__name__}: {exc}"}))
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--rows", type=int, default=65536, help="stored synthetic rows")
    parser.add_argument("--planted-atoms", type=int, default=8192)
    parser.add_argument("--planted-k", type=int, default=32)
    parser.add_argument("--width", type=int, default=16384, help="headline width")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--headline-tokens", type=int, default=16384, help="token budget per headline run")
    parser.add_argument("--arch-width", type=int, default=4096, help="width for the per-architecture runs")
    parser.add_argument("--arch-tokens", type=int, default=16384, help="token budget per architecture run")
    parser.add_argument("--archs", default=",".join(sorted(SAE_ARCHITECTURES)))
    parser.add_argument("--lr", type=float, default=1e-3)
    # one intra-op thread by default: on a CPU shared with other jobs a second OpenMP thread stalls
    # every parallel region (measured here: an elementwise op 0.17 ms with 1 thread, 3 ms with 2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-headline", action="store_true")
    parser.add_argument("--skip-archs", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(headline_worker(spec) if spec["arch"] == "headline" else worker(spec)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        x, _ = planted_sparse_data(args.rows, args.d, args.planted_atoms, args.planted_k, seed=0)
        InMemoryStore(x).save(tmp_path / "store", shard_rows=16384)
        del x
        base = {
            "store": str(tmp_path / "store"),
            "data": f"synthetic d={args.d} planted {args.planted_atoms} atoms k={args.planted_k}",
            "batch_size": args.batch_size,
            "lr": args.lr,
            "threads": args.threads,
            "dead_after": 4 * args.batch_size,
            "eval_rows": 8192,
        }
        if not args.skip_headline:
            head = {
                **base,
                "width": args.width,
                "tokens": args.headline_tokens,
                "kw": arch_kwargs("topk", args.k),
            }
            # peak memory of each variant alone (2 steps, a process each), then the interleaved timing
            for arch in ("topk", "topk_dense"):
                run_child({**head, "arch": arch, "tokens": 2 * args.batch_size, "data": base["data"] + " (memory)"})
            run_child({**head, "arch": "headline"})
        if not args.skip_archs:
            for arch in args.archs.split(","):
                run_child(
                    {
                        **base,
                        "arch": arch,
                        "width": args.arch_width,
                        "tokens": args.arch_tokens,
                        "kw": arch_kwargs(arch, args.k),
                    }
                )
        if not args.skip_real:
            real = real_text_activations(tmp_path, n_prompts=2000)
            if real is not None:
                for arch in ("topk", "batchtopk"):
                    run_child(
                        {
                            **base,
                            "store": None,
                            "real": str(real),
                            "data": "shapes text encoder",
                            "arch": arch,
                            "width": args.arch_width,
                            "tokens": args.arch_tokens,
                            "kw": arch_kwargs(arch, args.k),
                        }
                    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
