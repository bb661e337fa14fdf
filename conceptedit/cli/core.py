"""Core commands: ``plugins``, ``generate``, ``erase``. They call only the public API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from conceptedit.cli import app
from conceptedit.errors import ConceptEditError
from conceptedit.toolkit import DEFAULT_MODEL

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Built-in name, diffusers folder, .safetensors file or hub id.")
]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: fp16 on GPU, fp32 on CPU).")]
AllowPickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Also load pickled weights (.ckpt/.bin/.pt), which can run code when read; only for files you trust.",
    ),
]


@app.command("plugins")
def plugins_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    pattern: Annotated[str, typer.Argument(help="Glob over plugin names.")] = "*",
) -> None:
    """List plugins: name, kind, summary, supported model families, status."""
    from conceptedit.registry import list_plugins

    infos = list_plugins(pattern)
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "families", "artifact", "status", "summary")
    for info in infos:
        status = "ok" if info.status == "ok" else f"broken: {info.error}"
        table.add_row(info.name, info.kind, ",".join(info.families), info.artifact_kind, status, info.summary)
    Console().print(table)


@app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for PNGs and per-image JSON.")],
    model: ModelOpt = DEFAULT_MODEL,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts_csv: Annotated[Path | None, typer.Option(help="CSV with prompt[, evaluation_seed, case_number].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for prompts without their own.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Inference steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the model's).")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt for every image.")] = None,
    edit: Annotated[
        list[Path] | None, typer.Option("--edit", "-e", help="Edit folder to apply (repeatable, in order).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per pipeline call.")] = 8,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
) -> None:
    """Generate images (PNG + metadata JSON each), optionally with edits applied. Each batch is written
    as it finishes; run the same command again to resume (images already there are skipped)."""
    from conceptedit.edits import Edit
    from conceptedit.eval.prompts import read_prompt_csv
    from conceptedit.generation import check_request, write_images
    from conceptedit.loading import load_pipeline
    from conceptedit.validate import check_generation_settings, check_seed

    check_seed(seed, "--seed")  # even when every CSV row has its own seed: a bad value is never silent
    rows = [(p, seed, i) for i, p in enumerate(prompt or [])]
    if prompts_csv is not None:
        rows += [(r.prompt, r.evaluation_seed, r.case_number) for r in read_prompt_csv(prompts_csv, default_seed=seed)]
    if not rows:
        raise ConceptEditError("nothing to generate: pass --prompt or --prompts-csv")
    if out.exists() and not out.is_dir():
        raise ConceptEditError(f"--out {out} is a file, not a folder")
    check_request([r[0] for r in rows], [r[1] for r in rows], batch_size)  # before loading anything
    check_generation_settings({"num_inference_steps": steps, "guidance_scale": guidance})
    edits = [Edit.load(p) for p in (edit or [])]
    pipe = load_pipeline(model, device=device, dtype=dtype, allow_pickle=allow_pickle)
    pipe.set_progress_bar_config(disable=True)
    handles = [e.apply(pipe) for e in edits]
    edit_meta = [
        {"path": str(p), "plugin": e.manifest.plugin, "targets": e.manifest.targets, "config": e.manifest.config}
        for p, e in zip(edit or [], edits, strict=True)
    ]
    try:
        written, skipped = write_images(
            pipe,
            rows,
            out,
            extra_meta={"edits": edit_meta},
            batch_size=batch_size,
            negative_prompt=negative_prompt,
            progress=True,
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
    finally:
        for handle in reversed(handles):
            handle.remove()
    kept = f" ({skipped} already there with the same settings)" if skipped else ""
    typer.echo(f"wrote {written} images to {out}{kept}")


@app.command("erase")
def erase_command(
    method: Annotated[str, typer.Option("--method", help="Plugin name (see `conceptedit plugins`).")],
    concept: Annotated[list[str], typer.Option("--concept", "-c", help="Concept to erase (repeatable).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the edit artifact to.")],
    model: ModelOpt = DEFAULT_MODEL,
    preserve: Annotated[list[str] | None, typer.Option(help="Concept to preserve (repeatable).")] = None,
    image: Annotated[
        list[Path] | None, typer.Option(help="Image of the concept (repeatable; few-shot methods).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    allow_pickle: AllowPickleOpt = False,
) -> None:
    """Fit an erase plugin on a model and write the edit artifact folder."""
    from tqdm.auto import tqdm

    from conceptedit.edits.storage import check_save_target
    from conceptedit.loading import load_pipeline
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin
    from conceptedit.toolkit import parse_overrides

    plugin_cls = get_plugin(method)
    overrides = parse_overrides(set_ or [])
    plugin_cls(overrides)  # validate the config before loading the model
    check_save_target(out)  # refuse a user's folder or file before the fit, not after
    request = Request(targets=concept, preserve=preserve or [], images=image or [])
    pipe = load_pipeline(model, device=device, dtype=dtype, allow_pickle=allow_pickle)
    plugin = plugin_cls.for_pipeline(pipe, overrides)
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=100, desc=f"fit {method}", unit="%") as bar:

        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * min(max(fraction, 0.0), 1.0))
            bar.set_postfix_str(message)
            bar.refresh()

        result = plugin.fit(pipe, request, progress=progress)
    if not hasattr(result, "save"):
        raise ConceptEditError(f"plugin {method!r} is of kind {plugin_cls.kind!r} and produces no edit artifact")
    result.save(out)
    typer.echo(f"wrote {plugin_cls.artifact_kind} edit to {out}")
