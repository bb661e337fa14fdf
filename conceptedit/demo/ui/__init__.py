"""The Gradio page. Everything on it is generated from the plugin registry: a plugin that registers
gets its tab entry, its summary and a config form built from its ``Config`` dataclass, with no
change here. The work happens in :mod:`conceptedit.demo.engine`; these modules only wire components:
:mod:`.common` (the run-wrapper, messages, plugin picker and forms), one module per tab —
:mod:`.comparison` (the first tab, opened on a ready example), :mod:`.erase` (+ :mod:`.stack`),
:mod:`.inspection`, :mod:`.image_edit`, :mod:`.analysis`.
"""

from __future__ import annotations

import gradio as gr

from .. import engine
from ..engine import DemoModel
from .analysis import analyze_tab
from .common import run_action
from .comparison import compare_tab
from .erase import erase_tab
from .image_edit import edit_tab
from .inspection import inspect_tab

CSS = """
.ce-gallery img { image-rendering: pixelated; }
#ce-header p { margin: 0.2em 0; }
"""

INTRO = """# conceptedit demo
Erase a concept from a text-to-image model, then look at the same prompts and seeds on the original
and the edited model side by side. **Compare** runs several methods at once (a ready example: press
Compare); **Erase** fits one method with your settings, and its edits stack, can be removed one by
one, saved as folders and loaded again. {model}
"""


def build_app(model: DemoModel, concurrency_limit: int = 1) -> gr.Blocks:
    """The demo page on ``model``; fits and generations run through the queue, ``concurrency_limit`` at once."""
    settings = model.settings
    # Generated images are cached as files; files older than an hour are deleted every half hour.
    with gr.Blocks(title="conceptedit demo", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO.format(model=model.describe()), elem_id="ce-header")
        stack = gr.State([])
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare_tab(model, settings)
            with gr.Tab("Erase", id="erase"):
                compare_prompts = erase_tab(model, stack, settings)
            with gr.Tab("Inspect", id="inspect"):
                inspect_tab(model, stack, compare_prompts)
            if engine.plugins_of("edit"):
                with gr.Tab("Edit an image", id="edit"):
                    edit_tab(model)
            if engine.plugins_of("analyze"):
                with gr.Tab("Analyze", id="analyze"):
                    analyze_tab(model, stack)
    demo.queue(default_concurrency_limit=concurrency_limit)
    return demo


__all__ = ["CSS", "build_app", "run_action"]
