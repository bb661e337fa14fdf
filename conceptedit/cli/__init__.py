"""The ``conceptedit`` command line: a thin layer over the public API.

Sub-command groups live in their own modules (``shapes``, ``sae`` …) and are attached here, so
each feature owns its commands. User errors (:class:`ConceptEditError`) exit with one line, no
traceback.
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
    from conceptedit.cli import core  # noqa: F401  (registers plugins/generate/erase)

    for module_name in ("shapes", "sae"):
        try:
            module = __import__(f"conceptedit.cli.{module_name}", fromlist=["app"])
        except ModuleNotFoundError as exc:
            if exc.name == f"conceptedit.cli.{module_name}":
                continue
            raise
        if hasattr(module, "register"):
            module.register(app)


def main() -> None:
    _attach_subcommands()
    try:
        app()
    except ConceptEditError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
