"""The Analyze tab's work: run an ``analyze`` plugin (optionally with the stack applied) and
render its report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conceptedit.errors import ConceptEditError
from conceptedit.plugin import Report, Request
from conceptedit.toolkit import Progress, no_progress

from .inputs import parse_concepts
from .model import DemoModel, applied
from .plugins import make_plugin
from .stack import StackEntry
from .tables import markdown_table


def analyze(
    model: DemoModel,
    stack: Sequence[StackEntry],
    name: str,
    values: dict[str, Any],
    targets: str | Sequence[str],
    preserve: str | Sequence[str] | None = None,
    with_stack: bool = True,
    progress: Progress = no_progress,
) -> Report:
    plugin = make_plugin(name, values)
    request = Request(targets=parse_concepts(targets), preserve=parse_concepts(preserve))
    with model.lock, applied(model, stack if with_stack else []):
        report = plugin.fit(model.pipe, request, progress=progress)
    if not isinstance(report, Report):
        raise ConceptEditError(f"plugin {name!r} returned {type(report).__name__}, not a report")
    return report


def report_markdown(report: Report) -> str:
    parts = [f"### {report.title}"]
    if report.summary:
        parts.append(report.summary)
    for table_name, rows in report.tables.items():
        parts.append(f"**{table_name}**\n\n{markdown_table(rows)}")
    return "\n\n".join(parts)


def report_figures(report: Report) -> list[tuple[str, str]]:
    return [(str(path), caption) for caption, path in report.figures.items() if Path(path).is_file()]
