"""``conceptedit eval CONFIG.yaml`` (or a built-in config name) and ``conceptedit eval compare A B``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from conceptedit.errors import ConceptEditError


def eval_command(
    config: Annotated[str, typer.Argument(help="YAML config, a built-in name (see --list), or 'compare'.")] = "",
    others: Annotated[list[str] | None, typer.Argument(help="With 'compare': the two run folders A B.")] = None,
    output: Annotated[str | None, typer.Option(help="Override the config's output folder.")] = None,
    list_builtin: Annotated[bool, typer.Option("--list", help="List the built-in configs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Batch erasure evaluation: seeded, batched, cached, resumable; `accelerate launch -m conceptedit eval`
    splits it across processes."""
    from conceptedit.eval.config import builtin_configs, load_config

    if list_builtin:
        typer.echo("\n".join(builtin_configs()))
        return
    if config == "compare":
        if not others or len(others) != 2:
            raise ConceptEditError("usage: conceptedit eval compare RUN_A RUN_B")
        from conceptedit.eval.report import compare_runs

        rows = compare_runs(others[0], others[1])
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("model", "edit", "prompt set", "metric", "A", "B", "B - A")
        for r in rows:
            cells = [r["a"], r["b"], r["delta"]]
            table.add_row(r["model"], r["edit"], r["prompt_set"], r["metric"],
                          *["–" if v is None else f"{v:.4g}" for v in cells])  # fmt: skip
        Console().print(table)
        return
    if not config:
        raise ConceptEditError("give a config file or built-in name (`conceptedit eval --list`)")
    if others:
        raise ConceptEditError(f"unexpected arguments {others}; only 'compare' takes two run folders")
    from conceptedit.eval.runner import evaluate

    cfg = load_config(config)
    if output:
        cfg.output = output
    results = evaluate(cfg)
    if results is None:  # a non-main process of a distributed run
        return
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        from conceptedit.eval.report import comparison_rows

        for r in comparison_rows(results):
            before = "–" if r["base"] is None else f"{r['base']:.3f}"
            after = "–" if r["edited"] is None else f"{r['edited']:.3f}"
            typer.echo(f"{r['edit']:<24} {r['prompt_set']:<28} {r['metric']:<36} {before} -> {after}")
        for name, reason in results["unavailable"].items():
            typer.echo(f"unavailable: {name}: {reason}")
        typer.echo(f"report: {cfg.output_dir / 'report.html'}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
