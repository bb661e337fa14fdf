"""``conceptedit edit-image``: run an ``edit`` plugin (default ``colan``) on one image file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conceptedit.toolkit import DEFAULT_MODEL, parse_overrides


def edit_image_command(
    image: Annotated[Path, typer.Argument(help="Source image (RGB, the model's resolution).")],
    source_prompt: Annotated[str, typer.Option("--source-prompt", "-p", help="What the image shows.")],
    edit: Annotated[str, typer.Option("--edit", "-e", help="'SRC -> TGT' (colan; 'SRC -> ' removes).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the edited PNG (must not exist).")],
    plugin_name: Annotated[str, typer.Option("--plugin", help="An edit plugin.")] = "colan",
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in name, diffusers folder, file or hub id.")
    ] = DEFAULT_MODEL,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
    option: Annotated[list[str] | None, typer.Option("--set", help="Plugin settings as KEY=VALUE.")] = None,
) -> None:
    """Edit a concept inside an image; prints the source prompt's concept weights when the plugin gives them."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from conceptedit.errors import ConceptEditError
    from conceptedit.loading import load_pipeline
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    plugin = get_plugin(plugin_name)(parse_overrides(option))
    if plugin.kind != "edit":
        raise ConceptEditError(f"plugin {plugin_name!r} is a {plugin.kind!r} plugin, not an image edit")
    if out.exists():
        raise ConceptEditError(f"{str(out)!r} exists; choose a new --out (nothing is overwritten)")
    try:
        with Image.open(image) as im:
            arr = np.array(im)  # the plugin checks mode and size
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise ConceptEditError(f"cannot read image {str(image)!r}: {e}") from None
    pipe = load_pipeline(model, device=device)
    pipe.set_progress_bar_config(disable=True)
    extra = {"image": arr, "source_prompt": source_prompt, "target_prompt": edit}
    result = plugin.fit(pipe, Request(targets=[edit], extra=extra))
    img = result["image"] if isinstance(result, dict) else result
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(img)).save(out)
    typer.echo(f"wrote {out}")
    weights = result.get("weights", {}) if isinstance(result, dict) else {}
    for name, w in sorted(weights.items(), key=lambda x: -abs(x[1])):
        typer.echo(f"  {name:<12} {w:+.3f}")


def register(app: typer.Typer) -> None:
    app.command("edit-image")(edit_image_command)
