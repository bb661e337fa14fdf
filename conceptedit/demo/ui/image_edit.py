"""The Edit-an-image tab (shown when an ``edit`` plugin is installed): one image under an instruction."""

from __future__ import annotations

from typing import Any

import gradio as gr

from conceptedit.toolkit import Progress

from .. import engine
from ..engine import DemoModel
from .common import HEAVY, gallery, ok, plugin_handler, plugin_picker, wire_picker


def edit_tab(model: DemoModel) -> None:
    gr.Markdown(
        "### Edit one image\nUpload an image (or leave it empty to generate the source prompt), say what it "
        "shows and what it should show. Plugins that decompose the prompt (colan: edits written `SRC -> TGT`) "
        "show the concept weights beside the result."
    )
    with gr.Row():
        with gr.Column(scale=2):
            dropdown, info, forms = plugin_picker("edit", include_broken=False, tab="edit")
            image = gr.Image(label="Image (optional)", type="pil", sources=["upload", "clipboard"])
            source = gr.Textbox(label="Source prompt (what the image shows)", elem_id="edit-source")
            target = gr.Textbox(label="Target prompt (what it should show)", elem_id="edit-target")
            concepts = gr.Textbox(label="Concept(s) to edit (optional; default: the target prompt)")
            seed = gr.Number(value=0, precision=0, label="Seed")
            button = gr.Button("Edit", variant="primary", interactive=engine.usable(dropdown.value), elem_id="edit-run")
        with gr.Column(scale=3):
            message = gr.Markdown(elem_id="edit-message")
            shown = gallery("Source → edited", "gallery-edit")
            weights = gr.Dataframe(
                headers=["concept", "weight", ""],
                label="Concept weights: the decomposition of the source prompt (plugins that return one, e.g. colan)",
                interactive=False,
                elem_id="edit-weights",
            )
    wire_picker(dropdown, info, forms, button)

    def call(name: str, values: dict[str, Any], *inputs: Any, progress: Progress) -> Any:
        return engine.edit_image_with_weights(model, name, values, *inputs, progress=progress)

    def render(result: Any, name: str, _img: Any, src: str, tgt: str, *_rest: Any) -> list[Any]:
        source_image, outputs, rows = result
        images = [(engine.for_display(source_image), f"source: {src}")]
        images += [(engine.for_display(o), f"edited: {tgt}") for o in outputs]
        return [ok(f"edited with {name}"), images, rows]

    button.click(
        plugin_handler("image edit", forms, call, render, outputs=3),
        [dropdown, image, source, target, concepts, seed, *forms.components],
        [message, shown, weights],
        concurrency_id=HEAVY,
        api_name="edit_image",
    )
