"""The stack section of the Erase tab: the table of edits in the order they apply, and remove,
save and load."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import engine
from ..engine import DemoModel, StackEntry
from .common import HEAVY, error, ok, run_action, stack_outputs


def stack_section(model: DemoModel, stack: gr.State) -> tuple[gr.Markdown, gr.Dropdown]:
    """Build the section and wire its buttons; return the table and the dropdown (a fit updates them)."""
    gr.Markdown("### 3 · Stack of edits\nApplied in order, top row first; each was fitted on the original model.")
    stack_view = gr.Markdown(engine.stack_table([]), elem_id="stack-table")
    with gr.Row(equal_height=True):
        stack_pick = gr.Dropdown(choices=[], label="Edit", scale=2, min_width=180, elem_id="stack-pick")
        remove_button = gr.Button("Remove", scale=1, min_width=90, elem_id="stack-remove")
        save_path = gr.Textbox(
            label="Save the chosen edit to folder", placeholder="runs/my-edit", scale=2, min_width=180
        )
        save_button = gr.Button("Save", scale=1, min_width=90, elem_id="stack-save")
        load_path = gr.Textbox(label="Load an edit folder", placeholder="runs/my-edit", scale=2, min_width=180)
        load_button = gr.Button("Load", scale=1, min_width=90, elem_id="stack-load")
    stack_message = gr.Markdown(elem_id="stack-message")

    def remove(stack_value: list[StackEntry], entry_id: str | None) -> list[Any]:
        new_stack, message = run_action("remove", engine.remove, stack_value, entry_id)
        if message:
            return [*stack_outputs(stack_value, entry_id), error(message)]
        return [*stack_outputs(new_stack), ok(f"removed edit #{entry_id}; generate again to see the effect")]

    def save(stack_value: list[StackEntry], entry_id: str | None, folder: str) -> list[Any]:
        path, message = run_action("save", engine.save_entry, stack_value, entry_id, folder)
        if message:
            return [*stack_outputs(stack_value, entry_id), error(message)]
        return [*stack_outputs(stack_value, entry_id), ok(f"saved edit #{entry_id} to `{path}`")]

    def load(stack_value: list[StackEntry], folder: str) -> list[Any]:
        edit, message = run_action("load", engine.load_entry, model, folder)
        if message:
            return [*stack_outputs(stack_value), error(message)]
        new_stack = engine.push(stack_value, edit, f"loaded from `{folder.strip()}`")
        return [*stack_outputs(new_stack, str(new_stack[-1].id)), ok(f"loaded {new_stack[-1].label}")]

    outputs = [stack, stack_view, stack_pick, stack_message]
    remove_button.click(remove, [stack, stack_pick], outputs, concurrency_limit=None, api_visibility="private")
    save_button.click(save, [stack, stack_pick, save_path], outputs, concurrency_id=HEAVY, api_name="save")
    load_button.click(load, [stack, load_path], outputs, concurrency_id=HEAVY, api_name="load")
    return stack_view, stack_pick
