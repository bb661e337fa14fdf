"""Core commands: ``plugins``, ``generate``, ``erase``. They call only the public API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from conceptedit.cli import app
from conceptedit.errors import ConceptEditError
from conceptedit.toolkit import DEFAULT_MODEL

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Built-in name, diffusers folder, .safetensors file or hub id.")
]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, float16 or bfloat16 (default: fp16 on GPU, fp32 on CPU).")]


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
) -> None:
    """Generate images (PNG + metadata JSON each), optionally with edits applied."""
    from conceptedit.edits import Edit
    from conceptedit.eval.prompts import read_prompt_csv
    from conceptedit.generation import generate, generation_settings
    from conceptedit.loading import load_pipeline, model_id

    rows = [(p, seed, i) for i, p in enumerate(prompt or [])]
    if prompts_csv is not None:
        rows += [(r.prompt, r.evaluation_seed, r.case_number) for r in read_prompt_csv(prompts_csv, default_seed=seed)]
    if not rows:
        raise ConceptEditError("nothing to generate: pass --prompt or --prompts-csv")
    edits = [Edit.load(p) for p in (edit or [])]
    pipe = load_pipeline(model, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    handles = [e.apply(pipe) for e in edits]
    settings = generation_settings(pipe, num_inference_steps=steps, guidance_scale=guidance)
    images = generate(
        pipe,
        [r[0] for r in rows],
        [r[1] for r in rows],
        batch_size=batch_size,
        negative_prompt=negative_prompt,
        progress=True,
        **settings,
    )
    out.mkdir(parents=True, exist_ok=True)
    for (text, row_seed, case), image in zip(rows, images, strict=True):
        stem = f"{case:04d}_seed{row_seed}"
        image.save(out / f"{stem}.png")
        meta: dict[str, Any] = {
            "prompt": text,
            "seed": row_seed,
            "case_number": case,
            "model": model_id(pipe),
            "negative_prompt": negative_prompt,
            "settings": settings,
            "edits": [
                {"path": str(p), "plugin": e.manifest.plugin, "targets": e.manifest.targets}
                for p, e in zip(edit or [], edits, strict=True)
            ],
        }
        (out / f"{stem}.json").write_text(json.dumps(meta, indent=2))
    for handle in reversed(handles):
        handle.remove()
    typer.echo(f"wrote {len(images)} images to {out}")


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
) -> None:
    """Fit an erase plugin on a model and write the edit artifact folder."""
    from tqdm.auto import tqdm

    from conceptedit.loading import load_pipeline
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin
    from conceptedit.toolkit import parse_overrides

    plugin_cls = get_plugin(method)
    overrides = parse_overrides(set_ or [])
    plugin_cls(overrides)  # validate the config before loading the model
    request = Request(targets=concept, preserve=preserve or [], images=image or [])
    pipe = load_pipeline(model, device=device, dtype=dtype)
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
