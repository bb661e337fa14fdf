"""``conceptedit demo``: serve the Gradio demo (same options as ``python app.py``)."""

from __future__ import annotations

from typing import Annotated

import typer

from conceptedit.toolkit import DEFAULT_MODEL


def demo_command(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in name, diffusers folder, .safetensors file or hub id.")
    ] = DEFAULT_MODEL,
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: GRADIO_SERVER_PORT, else 7860).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: best available).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, float16 or bfloat16.")] = None,
) -> None:
    """Start the Gradio demo: fit erasures, compare original and edited images, stack and save edits."""
    from conceptedit.demo import serve

    serve(model, host, port, device, dtype)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
