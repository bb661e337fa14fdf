"""``conceptedit analyze blindspots``: run an ``analyze`` plugin and write its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conceptedit.toolkit import DEFAULT_MODEL, parse_overrides

analyze_app = typer.Typer(
    name="analyze", help="Analyses of a model (reports of tables and figures).", no_args_is_help=True
)


@analyze_app.command("blindspots")
def blindspots_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in name, diffusers folder, file or hub id.")
    ] = DEFAULT_MODEL,
    images: Annotated[
        list[Path] | None, typer.Option("--images", help="Real images (files or a folder, sorted).")
    ] = None,
    captions: Annotated[
        Path | None, typer.Option("--captions", help="One caption per image (.txt lines or prompt CSV).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.html, report.json, SAE store and image cache.")
    ] = Path("runs/blindspots"),
    features: Annotated[str, typer.Option(help="auto, clip, clip:FOLDER, dinov2 or dinov2:NAME_OR_FOLDER.")] = "auto",
    n_images: Annotated[int, typer.Option(help="Real images drawn from the model's world when no --images.")] = 512,
    fdr: Annotated[float, typer.Option(help="False-discovery rate across concepts.")] = 0.05,
    edit: Annotated[list[Path] | None, typer.Option("--edit", help="Edit folder(s) applied before generating.")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
    option: Annotated[list[str] | None, typer.Option("--set", help="Other plugin settings as KEY=VALUE.")] = None,
) -> None:
    """Concepts of real images (RA-SAE on image features) that the model under-produces (suppressed) or
    over-produces (exaggerated) for the same captions, with intervals and FDR control."""
    from conceptedit.errors import RequestError
    from conceptedit.loading import load_pipeline
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    if (images is None) != (captions is None):
        raise RequestError("--images and --captions go together: one caption per real image")
    values = {"features": features, "n_images": n_images, "fdr": fdr, "out": str(out), **parse_overrides(option)}
    plugin = get_plugin("blindspots")(values)
    extra = {}
    if captions is not None:
        from conceptedit.plugins.blindspots import read_captions

        extra["captions"] = read_captions(captions)
        from conceptedit.plugins.blindspots import check_user_images

        check_user_images(list(images or []), extra["captions"])  # before the model loads
    request = Request(targets=["all concepts"], images=list(images or []), extra=extra)
    pipe = load_pipeline(model, device=device)
    pipe.set_progress_bar_config(disable=True)
    if edit:
        from conceptedit.edits import Edit

        for folder in edit:
            Edit.load(folder).apply(pipe)
    report = plugin.fit(pipe, request)
    typer.echo(report.summary)
    for row in report.tables["concepts"][:20]:
        typer.echo("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def register(app: typer.Typer) -> None:
    """Attach the ``analyze`` sub-app to the main CLI."""
    app.add_typer(analyze_app, name="analyze")
