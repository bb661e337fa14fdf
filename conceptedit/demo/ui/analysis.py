"""The Analyze tab (shown when an ``analyze`` plugin is installed): a report of tables and figures."""

from __future__ import annotations

from typing import Any

import gradio as gr

from conceptedit.plugin import Report
from conceptedit.toolkit import Progress

from .. import engine
from ..engine import DemoModel, StackEntry
from .common import HEAVY, plugin_handler, plugin_picker, wire_picker


def analyze_tab(model: DemoModel, stack: gr.State) -> None:
    gr.Markdown("### Analyze the model\nA report of tables and figures (e.g. where an erasure leaks).")
    with gr.Row():
        with gr.Column(scale=2):
            dropdown, info, forms = plugin_picker("analyze", include_broken=False, tab="analyze")
            targets = gr.Textbox(label="Concept(s)", elem_id="analyze-targets")
            preserve = gr.Textbox(label="Concepts to preserve (optional)")
            with_stack = gr.Checkbox(value=True, label="Analyze the model with the stack of edits applied")
            button = gr.Button(
                "Analyze", variant="primary", interactive=engine.usable(dropdown.value), elem_id="analyze-run"
            )
        with gr.Column(scale=3):
            report = gr.Markdown("_No report yet._", elem_id="analyze-report")
            figures = gr.Gallery(label="Figures", columns=2, height="auto", elem_id="gallery-analyze")
    wire_picker(dropdown, info, forms, button)

    def call(
        name: str, values: dict[str, Any], stack_value: list[StackEntry], *texts: Any, progress: Progress
    ) -> Report:
        return engine.analyze(model, stack_value, name, values, *texts, progress=progress)

    def render(result: Report, *_inputs: Any) -> list[Any]:
        return [engine.report_markdown(result), engine.report_figures(result)]

    button.click(
        plugin_handler("analysis", forms, call, render, outputs=2),
        [dropdown, stack, targets, preserve, with_stack, *forms.components],
        [report, figures],
        concurrency_id=HEAVY,
        api_name="analyze",
    )
