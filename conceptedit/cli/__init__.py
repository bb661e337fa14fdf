"""The ``conceptedit`` command line: a thin layer over the public API.

Sub-command groups live in their own modules (``shapes``, ``sae``, ``eval`` …) with a
``register(app)`` function and are found here, so each feature owns its commands. User errors
(:class:`ConceptEditError`) exit with one line, no traceback.
"""

from __future__ import annotations

import sys

import typer

from conceptedit.errors import ConceptEditError

app = typer.Typer(
    name="conceptedit",
    help="Erase and edit concepts in text-to-image diffusion models, and prove what happened.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _attach_subcommands() -> None:
    """Import every module of this package; those with ``register(app)`` add their commands."""
    import importlib
    import pkgutil

    from conceptedit.cli import core  # noqa: F401  (registers plugins/generate/erase)

    for info in pkgutil.iter_modules(__path__):
        if info.name == "core":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(app)


def main() -> None:
    _attach_subcommands()
    try:
        app()
    except ConceptEditError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
