"""``conceptedit sae``: collect activations, train an SAE, evaluate it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from conceptedit.toolkit import DEFAULT_MODEL, parse_overrides, read_prompts

sae_app = typer.Typer(
    name="sae",
    help="Sparse autoencoders on any module of a pipeline: collect activations, train, evaluate.",
    no_args_is_help=True,
)


@sae_app.command("collect")
def collect_command(
    module: Annotated[
        str, typer.Option("--module", help="Module inside the text encoder, e.g. text_model.encoder.layers.8")
    ],
    prompts: Annotated[Path, typer.Option("--prompts", help=".txt (one prompt a line) or CSV with a prompt column.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Empty folder for the activation store.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in name, diffusers folder, file or hub id.")
    ] = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 32,
    padding: Annotated[str, typer.Option(help="'longest' (batch's longest prompt) or 'max_length'.")] = "longest",
    keep_bos: Annotated[bool, typer.Option("--keep-bos", help="Also store the BOS position.")] = False,
    keep_padding: Annotated[bool, typer.Option("--keep-padding", help="Also store padding positions.")] = False,
    shard_rows: Annotated[int, typer.Option(help="Rows per safetensors shard.")] = 65536,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
) -> None:
    """Run prompts through the text encoder and store a module's token activations on disk."""
    from conceptedit.loading import load_pipeline, model_id
    from conceptedit.sae.collect import collect_activations

    texts = read_prompts(prompts)
    pipe = load_pipeline(model, device=device, dtype="float32")
    store = collect_activations(
        pipe,
        module,
        texts,
        out,
        batch_size=batch_size,
        padding=padding,
        skip_bos=not keep_bos,
        skip_padding=not keep_padding,
        shard_rows=shard_rows,
        model_id=model_id(pipe),
    )
    typer.echo(f"stored {store.n_rows} rows of d={store.d_in} from {len(texts)} prompts in {out}")


@sae_app.command("train")
def train_command(
    store_dir: Annotated[Path, typer.Argument(help="Activation store folder (from `sae collect`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the SAE (and its checkpoints).")],
    arch: Annotated[
        str,
        typer.Option(
            help="Architecture: topk, batchtopk, jumprelu, relu, mp, archetypal, mutual_choice, feature_choice."
        ),
    ] = "topk",
    width: Annotated[int, typer.Option(help="Number of latents.")] = 4096,
    k: Annotated[int | None, typer.Option(help="Active latents per token (k-sparse architectures).")] = None,
    tokens: Annotated[int, typer.Option(help="Token budget.")] = 2_000_000,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 1024,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 4e-4,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed (init and data order).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: only at the end).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the checkpoint in --out.")] = False,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="Architecture option key=value (repeatable).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
) -> None:
    """Train an SAE on a store; writes cfg.json + sae.safetensors (+ trainer state) to --out."""
    from conceptedit.sae import ActivationStore, SAETrainer, TrainConfig, create_sae

    store = ActivationStore(store_dir)
    if resume:
        trainer = SAETrainer.resume(out, store, device=device)
    else:
        kw = parse_overrides(opt, "--opt", json_values=True)
        if k is not None:
            kw["k"] = k
        kw.setdefault("seed", seed)
        cfg = TrainConfig(
            token_budget=tokens,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=warmup,
            seed=seed,
            checkpoint_every=checkpoint_every,
        )
        trainer = SAETrainer(create_sae(arch, store.d_in, width, **kw), store, cfg, checkpoint_dir=out, device=device)
    trainer.train()
    last = trainer.history[-1] if trainer.history else {}
    typer.echo(
        f"saved {trainer.sae.architecture} SAE to {out} (train fvu {last.get('fvu', float('nan')):.4f}, "
        f"l0 {last.get('l0', float('nan')):.1f})"
    )


@sae_app.command("eval")
def eval_command(
    sae_dir: Annotated[Path, typer.Argument(help="SAE folder (cfg.json + sae.safetensors).")],
    store_dir: Annotated[Path, typer.Argument(help="Activation store to evaluate on.")],
    max_rows: Annotated[int | None, typer.Option(help="Evaluate on at most this many rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """FVU, explained variance, L0 and dead-latent fraction of an SAE on stored activations."""
    from conceptedit.sae import ActivationStore, evaluate_sae, load_sae
    from conceptedit.validate import check_int

    if max_rows is not None:
        check_int("--max-rows", max_rows, 1)
    metrics = evaluate_sae(load_sae(sae_dir), ActivationStore(store_dir), max_rows=max_rows, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(metrics))
        return
    for key, value in metrics.items():
        typer.echo(f"{key:>20}: {value:.6g}")


def register(app: typer.Typer) -> None:
    """Attach the ``sae`` sub-app to the main CLI."""
    app.add_typer(sae_app, name="sae")
