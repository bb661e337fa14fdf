"""The Inspect tab: per-prompt decisions of prompt-classifier edits and the strongest SAE features."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import engine
from ..engine import DemoModel, StackEntry
from .common import HEAVY, failed, run_action


def inspect_tab(model: DemoModel, stack: gr.State, compare_prompts: gr.Textbox) -> None:
    gr.Markdown(
        "### Inspect the edits on the stack\nFor edits that decide per prompt whether to intervene (prompt "
        "classifiers such as ItD): the decision and its score. For SAE-based edits: the strongest features of "
        "each prompt. Empty prompts: the prompts of the Erase tab."
    )
    with gr.Row():
        prompts = gr.Textbox(label="Prompts (one per line)", lines=4, scale=3, elem_id="inspect-prompts")
        with gr.Column(scale=1):
            top_n = gr.Number(value=10, precision=0, label="Top features per prompt", minimum=1, maximum=100)
            button = gr.Button("Inspect", variant="primary", elem_id="inspect-run")
    message = gr.Markdown("_Nothing inspected yet._", elem_id="inspect-message")
    decisions = gr.Dataframe(label="Prompt decisions", visible=False, interactive=False)
    features = gr.Dataframe(label="Top features", visible=False, interactive=False)

    def run(stack_value: list[StackEntry], prompt_text: str, fallback: str, n: Any) -> list[Any]:
        import pandas as pd

        result, error = run_action(
            "inspection", engine.inspect_stack, model, stack_value, prompt_text.strip() or fallback, int(n or 10)
        )
        if error:
            return failed(error, 3)
        return [
            result.message,
            gr.update(value=pd.DataFrame(result.decisions), visible=bool(result.decisions)),
            gr.update(value=pd.DataFrame(result.features), visible=bool(result.features)),
        ]

    button.click(run, [stack, prompts, compare_prompts, top_n], [message, decisions, features], concurrency_id=HEAVY)
