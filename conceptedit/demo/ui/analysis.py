"""The Analyze tab (shown when an ``analyze`` plugin is installed): a report of tables and figures."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import engine
from ..engine import DemoModel, StackEntry
from .common import HEAVY, failed, plugin_picker, run_action, wire_picker


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

    def run(
        stack_value: list[StackEntry],
        name: str,
        target_text: str,
        preserve_text: str,
        use_stack: bool,
        *widget_values: Any,
        progress: gr.Progress = gr.Progress(),
    ) -> list[Any]:
        values = forms.values(name, widget_values)
        result, error = run_action(
            "analysis",
            engine.analyze,
            model,
            stack_value,
            name,
            values,
            target_text,
            preserve_text,
            use_stack,
            progress=progress,
        )
        if error:
            return failed(error, 2)
        return [engine.report_markdown(result), engine.report_figures(result)]

    button.click(
        run,
        [stack, dropdown, targets, preserve, with_stack, *forms.components],
        [report, figures],
        concurrency_id=HEAVY,
        api_name="analyze",
    )
