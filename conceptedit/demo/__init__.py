"""The Gradio demo: ``python app.py`` or ``conceptedit demo`` (options: ``--model``, ``--host``, ``--port``).

- :mod:`conceptedit.demo.forms`: a plugin's ``Config`` dataclass ↔ form widgets (no Gradio import);
- :mod:`conceptedit.demo.engine`: the functions behind the UI (fit, compare, stack, inspect, edit,
  analyze), testable without a browser;
- :mod:`conceptedit.demo.ui`: the Gradio page, generated from the plugin registry.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from conceptedit.toolkit import DEFAULT_MODEL

DEFAULT_HOST = "127.0.0.1"


def create_app(model: str | Any = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None, **kwargs: Any):
    """The demo's ``gr.Blocks`` on ``model`` (a load_pipeline source, or a loaded pipeline)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        from conceptedit.errors import ConceptEditError

        raise ConceptEditError(f"the demo needs Gradio ({exc}): pip install 'conceptedit[demo]'") from exc
    from .engine import DemoModel
    from .ui import build_app

    demo_model = DemoModel.load(model, device=device, dtype=dtype) if isinstance(model, str) else DemoModel(model)
    return build_app(demo_model, **kwargs)


def serve(
    model: str = DEFAULT_MODEL,
    host: str | None = None,
    port: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> None:
    """Load ``model`` and serve the demo until interrupted. ``port`` defaults to Gradio's
    (``GRADIO_SERVER_PORT``, else 7860); ``host`` to ``GRADIO_SERVER_NAME``, else 127.0.0.1."""
    from .ui import CSS

    print(f"loading {model} …", flush=True)
    demo = create_app(model, device=device, dtype=dtype)
    demo.launch(
        server_name=host or os.environ.get("GRADIO_SERVER_NAME") or DEFAULT_HOST,
        server_port=port,
        ssr_mode=False,
        share=False,
        css=CSS,
        footer_links=["settings"],
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--model", "-m", default=DEFAULT_MODEL, help="built-in name, diffusers folder, .safetensors file or hub id"
    )
    parser.add_argument("--host", default=None, help=f"interface to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT, else 7860)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python app.py [--model M] [--host H] [--port P]``."""
    from conceptedit.errors import ConceptEditError

    parser = add_arguments(argparse.ArgumentParser(prog="app.py", description="The conceptedit Gradio demo."))
    args = parser.parse_args(argv)
    try:
        serve(args.model, args.host, args.port, args.device, args.dtype)
    except ConceptEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


__all__ = ["create_app", "serve", "main"]
