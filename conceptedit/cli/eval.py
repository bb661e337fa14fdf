"""``conceptedit eval run CONFIG`` (also ``conceptedit eval CONFIG``) and ``conceptedit eval compare A B``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from conceptedit.errors import ConceptEditError


class RunByDefault(TyperGroup):
    """``conceptedit eval CONFIG …`` means ``conceptedit eval run CONFIG …``: anything that is not a
    sub-command name or the group's ``--help`` goes to ``run`` (so ``eval --list`` works too)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=RunByDefault,
    help="Batch erasure evaluation: `eval run CONFIG` (or just `eval CONFIG`) and `eval compare RUN_A RUN_B`.",
    no_args_is_help=True,
)


@eval_app.command("run")
def run_command(
    config: Annotated[str, typer.Argument(help="YAML config or a built-in name (see --list).")] = "",
    output: Annotated[str | None, typer.Option(help="Override the config's output folder.")] = None,
    list_builtin: Annotated[bool, typer.Option("--list", help="List the built-in configs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Run a config: seeded, batched, cached, resumable; `accelerate launch -m conceptedit eval CONFIG`
    splits it across processes."""
    from conceptedit.eval.config import builtin_configs, load_config

    if list_builtin:
        typer.echo("\n".join(builtin_configs()))
        return
    if not config:
        raise ConceptEditError("give a config file or built-in name (`conceptedit eval --list`)")
    from conceptedit.eval.runner import evaluate

    cfg = load_config(config)
    if output:
        cfg.output = output
    results = evaluate(cfg)
    if results is None:  # a non-main process of a distributed run
        return
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    from conceptedit.eval.report import comparison_rows

    for r in comparison_rows(results):
        before = "–" if r["base"] is None else f"{r['base']:.3f}"
        after = "–" if r["edited"] is None else f"{r['edited']:.3f}"
        typer.echo(f"{r['edit']:<24} {r['prompt_set']:<28} {r['metric']:<36} {before} -> {after}")
    if results.get("image_edits"):
        from conceptedit.eval.image_edits import image_edit_lines

        for run in results["image_edits"]:
            typer.echo("\n".join(image_edit_lines(run, ("all",))))
    for name, reason in results["unavailable"].items():
        typer.echo(f"unavailable: {name}: {reason}")
    typer.echo(f"report: {cfg.output_dir / 'report.html'}")


@eval_app.command("compare")
def compare_command(
    run_a: Annotated[str, typer.Argument(help="Output folder of the first run.")],
    run_b: Annotated[str, typer.Argument(help="Output folder of the second run.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Diff two runs: every (model, edit, prompt set, metric) with A, B and B − A."""
    from conceptedit.eval.report import compare_runs

    rows: list[dict[str, Any]] = compare_runs(run_a, run_b)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "edit", "prompt set", "metric", "A", "B", "B - A")
    for r in rows:
        cells = ["–" if v is None else f"{v:.4g}" for v in (r["a"], r["b"], r["delta"])]
        table.add_row(r["model"], r["edit"], r["prompt_set"], r["metric"], *cells)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
