"""``conceptedit shapes …`` (the built-in world: vocabulary, images, training) and ``conceptedit probe``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from conceptedit.errors import ConceptEditError

shapes_app = typer.Typer(
    help="The shapes world: its vocabulary, rendered images with ground truth, and model training.",
    no_args_is_help=True,
)


@shapes_app.command("world")
def world_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole vocabulary as JSON.")] = False,
) -> None:
    """Print the world's vocabulary: families and their values, rates, caption templates."""
    from conceptedit.datasets.shapes import WORLD

    if as_json:
        typer.echo(json.dumps(WORLD.to_dict(), indent=2))
        return
    w = WORLD
    typer.echo(f"shapes:      {', '.join(w.shapes)} (rare: {w.rare_shape}, {w.rare_shape_rate:.1%})")
    typer.echo(f"colours:     {', '.join(w.colour_names)}")
    typer.echo(f"backgrounds: {', '.join(w.background_names)}")
    typer.echo(f"styles:      {', '.join(w.styles)}")
    for c in w.characters:
        typer.echo(f"character:   {c.name} = {c.colour} {c.style} {c.shape} on {c.background}")
    typer.echo(f"trigger:     {w.trigger.name} ({w.trigger.rate:.0%}); words: {', '.join(w.trigger.words)}")
    for m in w.marks:
        named = f"named in {w.mark_caption_rate:.0%} of its captions" if w.mark_caption_rate else "never captioned"
        typer.echo(f"mark:        {m.name} ({m.rate:.0%}, {named}): {m.description}")
    typer.echo(f"rare combo:  {' '.join(reversed(w.rare_combination))} ({w.rare_combination_keep:.0%} of its rate)")


@shapes_app.command("render")
def render_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for PNGs, labels.jsonl and captions.txt.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.", min=1)] = 16,
    seed: Annotated[int, typer.Option(help="Stream seed: same seed, same images.")] = 0,
    start: Annotated[int, typer.Option(help="Index of the first sample in the stream.", min=0)] = 0,
    balanced: Annotated[bool, typer.Option(help="Make rare concepts common (as the probe is trained).")] = False,
) -> None:
    """Render generator images with their ground-truth labels and training captions."""
    from tqdm.auto import tqdm

    from conceptedit.datasets.shapes import WORLD, balanced_world, render

    if out.exists() and not out.is_dir():
        raise ConceptEditError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    world = balanced_world() if balanced else WORLD
    with (out / "labels.jsonl").open("w") as labels_file, (out / "captions.txt").open("w") as captions_file:
        for k in tqdm(range(start, start + n), desc="render", dynamic_ncols=True):
            sample = render(1, seed=seed, start=k, world=world)[0]
            name = f"{seed}_{k:06d}.png"
            sample.pil().save(out / name)
            labels_file.write(json.dumps({"file": name, "caption": sample.caption, "labels": sample.labels}) + "\n")
            captions_file.write(sample.caption + "\n")
    typer.echo(f"wrote {n} images, labels.jsonl and captions.txt to {out}")


@shapes_app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the trained diffusers pipeline.")],
    steps: Annotated[int, typer.Option(help="Maximum UNet+text-encoder steps.", min=1)] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of everything (data streams, init, noise).")] = 0,
    minutes: Annotated[float, typer.Option(help="Wall-clock budget of the UNet stage.", min=0.1)] = 50.0,
    clip_minutes: Annotated[float, typer.Option(help="Budget of the CLIP stage (resumes a cut run).", min=0.1)] = 35.0,
    p_pad: Annotated[float, typer.Option(help="Padding dropout: replace padding outputs.", min=0, max=1)] = 0.5,
    p_eos: Annotated[float, typer.Option(help="Chance to replace the EOS output too.", min=0, max=1)] = 0.25,
    p_swap: Annotated[
        float,
        typer.Option(
            help="Replacement from another caption of the batch, not the empty prompt (measured harmful: "
            "docs/shapes_model.md).",
            min=0,
            max=1,
        ),
    ] = 0.0,
    init_unet: Annotated[
        Path | None, typer.Option(help="Start the UNet from a trained folder's UNet (warm start; fresh schedule).")
    ] = None,
    probe_from: Annotated[
        Path | None, typer.Option(help="Copy the probe of a trained folder (same VAE and images) instead of training.")
    ] = None,
    vae_minutes: Annotated[float, typer.Option(help="Budget of the VAE stage (inside --minutes).")] = 10.0,
    vae_steps: Annotated[int, typer.Option(help="Maximum VAE steps.")] = 100_000,
    pool: Annotated[int, typer.Option(help="Generator images encoded into the latent pool.")] = 40_000,
    batch: Annotated[int, typer.Option(help="UNet batch size per worker.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, cosine decay).")] = 1e-3,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker (1 is best on a shared CPU).")] = None,
    workers: Annotated[int, typer.Option(help="Data-parallel worker processes (gloo).", min=1)] = 1,
    device: Annotated[
        str,
        typer.Option(
            help="Where the CLIP, VAE and UNet stages train: cpu, cuda, cuda:N or mps (an accelerator takes "
            "--workers 1; images are rendered and the probe trained on the CPU)."
        ),
    ] = "cpu",
    vae_from: Annotated[Path | None, typer.Option(help="Reuse the VAE of a trained folder (skip stage 1).")] = None,
    probe_minutes: Annotated[float, typer.Option(help="Train the probe into OUT/probe (0: skip).")] = 6.0,
    fp16: Annotated[bool, typer.Option(help="Store the weights in fp16 (half the size).")] = True,
    vae_only: Annotated[bool, typer.Option(help="Only stage 1: write OUT/vae (then use --vae-from OUT).")] = False,
    decoder_only: Annotated[
        bool, typer.Option(help="Only fine-tune the decoder of --vae-from's VAE (encoder frozen) into OUT/vae.")
    ] = False,
    checkpoint_minutes: Annotated[float, typer.Option(help="Save OUT/checkpoint (EMA) this often.")] = 10.0,
    background_with_rate: Annotated[
        float | None,
        typer.Option(
            help='Share of UNet captions reading "with a … background" (default: the world\'s).', min=0, max=1
        ),
    ] = None,
    mark_caption_rate: Annotated[
        float | None,
        typer.Option(
            help="Chance that a UNet caption names each mark its image carries (default: the world's).", min=0, max=1
        ),
    ] = None,
    with_frame_rate: Annotated[
        float | None,
        typer.Option(
            help='Share of UNet captions with "with" before the object ("a picture with …"; default: the world\'s).',
            min=0,
            max=1,
        ),
    ] = None,
    rare_shape_keep: Annotated[
        float,
        typer.Option(
            help="Share of the rare shape's images kept in the UNet's latent pool (1: as often as in the world).",
            min=0,
            max=1,
        ),
    ] = 1.0,
) -> None:
    """Train the shapes model: tokenizer, CLIP, VAE, UNet on the frozen CLIP text tower, then the probe."""
    from conceptedit.pipelines.shapes_train import finetune_decoder, to_fp16, train, train_vae_only

    if decoder_only:
        if vae_from is None or not (vae_from / "vae").is_dir():
            raise ConceptEditError("--decoder-only needs --vae-from FOLDER with a vae/ inside")
        report = finetune_decoder(
            out, vae_from, minutes=vae_minutes, seed=seed, steps=vae_steps, threads=threads, workers=workers,
            device=device,
        )  # fmt: skip
        typer.echo(json.dumps(report["decoder_finetune"] | {"log": None}))
        return
    if vae_only:
        report = train_vae_only(
            out, minutes=vae_minutes, seed=seed, steps=vae_steps, threads=threads, workers=workers, device=device
        )
        typer.echo(json.dumps({k: v for k, v in report.items() if k != "log"}))
        return
    if probe_from is not None and not (probe_from / "probe").is_dir():  # checked before any training
        raise ConceptEditError(f"--probe-from {probe_from} has no probe/ folder")
    if vae_from is not None and not (vae_from / "vae").is_dir():
        raise ConceptEditError(f"--vae-from {vae_from} has no vae/ folder")
    if init_unet is not None and not (init_unet / "unet").is_dir():
        raise ConceptEditError(f"--init-unet {init_unet} has no unet/ folder")
    report = train(
        out,
        steps=steps,
        seed=seed,
        minutes=minutes,
        vae_minutes=vae_minutes,
        vae_steps=vae_steps,
        pool=pool,
        batch=batch,
        lr=lr,
        threads=threads,
        vae_from=vae_from,
        workers=workers,
        checkpoint_minutes=checkpoint_minutes,
        clip_minutes=clip_minutes,
        p_pad=p_pad,
        p_eos=p_eos,
        p_swap=p_swap,
        init_unet=init_unet,
        caption_rates={
            k: v
            for k, v in {
                "background_with_rate": background_with_rate,
                "mark_caption_rate": mark_caption_rate,
                "with_frame_rate": with_frame_rate,
            }.items()
            if v is not None
        },
        rare_shape_keep=rare_shape_keep,
        device=device,
    )
    if probe_from is not None:
        import shutil

        shutil.copytree(probe_from / "probe", out / "probe", dirs_exist_ok=True)
    elif probe_minutes > 0:
        from conceptedit.datasets.shapes.probe import train_probe

        _, probe_report = train_probe(out / "probe", minutes=probe_minutes, steps=100_000, seed=seed)
        report["probe"] = probe_report
        typer.echo(json.dumps({"probe_heldout_accuracy": probe_report["heldout_accuracy"]}))
    if fp16:
        to_fp16(out)
    typer.echo(
        json.dumps(
            {k: report[k] for k in ("seconds_total", "latent_scaling_factor")}
            | {"unet_steps": report["unet"]["steps"], "unet_final_loss": report["unet"]["final_loss"]}
        )
    )


def probe_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON with full distributions per family.")] = False,
    probe_path: Annotated[Path | None, typer.Option("--probe", help="Probe folder (default: shipped).")] = None,
) -> None:
    """Read every shapes-world concept family off images with the shipped probe."""
    from PIL import Image, UnidentifiedImageError

    from conceptedit.datasets.shapes.probe import Probe, image_kind_warning
    from conceptedit.toolkit import expand_images

    paths = expand_images(images)
    probe = Probe.load(probe_path)
    pil, warnings = [], {}
    for p in paths:
        try:
            with Image.open(p) as im:
                warning = image_kind_warning(im, probe.image_size)
                pil.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ConceptEditError(f"cannot read image {p}: {exc}") from None
        if warning:
            warnings[str(p)] = warning
            typer.secho(f"warning: {p}: {warning}", fg=typer.colors.YELLOW, err=True)
    predictions = probe.predict(pil)
    if as_json:
        rows = [
            {"path": str(p), "predictions": pred, **({"warning": warnings[str(p)]} if str(p) in warnings else {})}
            for p, pred in zip(paths, predictions, strict=True)
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for p, pred in zip(paths, predictions, strict=True):
        parts = [f"{fam}={v['label']} ({v['prob']:.2f})" for fam, v in pred.items()]
        flag = " [warning: not the model's kind of image, labels are guesses]" if str(p) in warnings else ""
        typer.echo(f"{p}: " + ", ".join(parts) + flag)


def register(app: typer.Typer) -> None:
    """Attach ``shapes`` (world, render, train) and ``probe`` to the main app."""
    app.add_typer(shapes_app, name="shapes")
    app.command("probe")(probe_command)
