"""The Erase tab: (1) fit an erasure, (2) compare the same prompts and seeds on the original model
and with the stack of edits; the stack itself is :mod:`.stack`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import engine
from ..engine import DemoModel, StackEntry
from .common import HEAVY, failed, gallery, ok, plugin_picker, run_action, stack_outputs, wire_picker


class FitColumn:
    """Method, settings, concepts, optional images, the Fit button and its message."""

    def __init__(self) -> None:
        gr.Markdown("### 1 · Fit an erasure")
        self.dropdown, info, self.forms = plugin_picker(
            "erase", include_broken=True, tab="erase", settings_open=False, preferred=engine.FAST_METHODS
        )
        self.targets = gr.Textbox(
            label="Concept(s) to erase",
            placeholder="comma-separated, e.g. zorblax (a character of the built-in shapes model)",
            elem_id="erase-targets",
        )
        self.preserve = gr.Textbox(
            label="Concepts to preserve (optional)",
            placeholder="comma-separated, e.g. quimbo, star",
            elem_id="erase-preserve",
        )
        with gr.Accordion("Images of the concept (few-shot methods; optional)", open=False):
            self.images = gr.File(
                file_count="multiple", file_types=["image"], label="Images", elem_id="erase-images", height=120
            )
        self.button = gr.Button(
            "Fit", variant="primary", interactive=engine.usable(self.dropdown.value), elem_id="erase-fit"
        )
        self.message = gr.Markdown(elem_id="erase-fit-message")
        wire_picker(self.dropdown, info, self.forms, self.button)


class CompareColumn:
    """Prompts, seeds, steps, guidance, the Generate button and the two galleries."""

    def __init__(self, settings: dict[str, Any]) -> None:
        gr.Markdown("### 2 · Compare: same prompts and seeds, original model vs. with the stack of edits")
        with gr.Row():
            self.prompts = gr.Textbox(
                label="Prompts (one per line)",
                placeholder="filled in from the concepts when you fit; edit freely",
                lines=4,
                scale=3,
                elem_id="compare-prompts",
            )
            with gr.Column(scale=1, min_width=160):
                self.seeds = gr.Textbox(value="0, 1", label="Seeds", elem_id="compare-seeds")
                with gr.Row():
                    self.steps = gr.Number(
                        value=settings.get("num_inference_steps"), precision=0, label="Steps", min_width=70
                    )
                    self.guidance = gr.Number(value=settings.get("guidance_scale"), label="Guidance", min_width=70)
        self.button = gr.Button("Generate", variant="primary", elem_id="compare-run")
        self.message = gr.Markdown(elem_id="compare-message")
        with gr.Row():
            self.original = gallery("Original model", "gallery-original", object_fit="contain", height=None)
            self.edited = gallery("With the stack of edits", "gallery-edited", object_fit="contain", height=None)


def erase_tab(model: DemoModel, stack: gr.State, settings: dict[str, Any]) -> gr.Textbox:
    """Build the tab's two columns and wire Fit (then Generate) and Generate; return the prompts box
    (the Inspect tab falls back to it)."""
    from .stack import stack_section

    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            fit_col = FitColumn()
        with gr.Column(scale=3, min_width=420):
            cmp_col = CompareColumn(settings)
    stack_view, stack_pick = stack_section(model, stack)
    _wire(model, stack, fit_col, cmp_col, stack_view, stack_pick)
    return cmp_col.prompts


def _wire(
    model: DemoModel,
    stack: gr.State,
    fit_col: FitColumn,
    cmp_col: CompareColumn,
    stack_view: gr.Markdown,
    stack_pick: gr.Dropdown,
) -> None:
    forms = fit_col.forms
    auto_prompts = gr.State("")  # the last suggested prompts: replaced on the next fit unless edited
    fitted = gr.State(False)

    def fit(
        stack_value: list[StackEntry],
        name: str,
        target_text: str,
        preserve_text: str,
        prompt_text: str,
        last_auto: str,
        image_files: list[Any] | None,
        progress: gr.Progress = gr.Progress(),  # positional: Gradio injects a tracker only there
        *widget_values: Any,
    ) -> list[Any]:
        values = forms.values(name, widget_values)
        paths = [getattr(f, "name", f) for f in image_files or []]
        edit, message = run_action(
            "fit", engine.fit_erase, model, name, values, target_text, preserve_text, progress=progress, images=paths
        )
        if message:
            return [*stack_outputs(stack_value), *failed(message, 3), False]
        new_stack = engine.push(stack_value, edit, "fitted")
        entry = new_stack[-1]
        prompt_update: Any = gr.skip()
        if not prompt_text.strip() or prompt_text == last_auto:
            suggestion = "\n".join(engine.default_prompts(target_text, preserve_text))
            prompt_update, last_auto = suggestion, suggestion
        done = ok(f"fitted {entry.label} and added it to the stack")
        return [*stack_outputs(new_stack, str(entry.id)), done, prompt_update, last_auto, True]

    def run_compare(
        stack_value: list[StackEntry],
        prompt_text: str,
        target_text: str,
        preserve_text: str,
        seed_text: str,
        steps_value: Any,
        guidance_value: Any,
        progress: gr.Progress = gr.Progress(),
    ) -> list[Any]:
        if not prompt_text.strip():
            prompt_text = "\n".join(engine.default_prompts(target_text, preserve_text))
        result, message = run_action(
            "generation",
            engine.compare,
            model,
            stack_value,
            prompt_text,
            seed_text,
            steps_value,
            guidance_value,
            progress=progress,
        )
        if message:
            return [gr.skip(), gr.skip(), failed(message, 1)[0]]
        shown = [[(engine.for_display(img), text) for img, text in side] for side in (result.original, result.edited)]
        used = result.settings
        summary = result.note or ok(
            f"{len(result.original)} image(s) per side; edits: {', '.join(e.label for e in stack_value)}; "
            f"{used.get('num_inference_steps', '?')} steps, guidance {used.get('guidance_scale', '?')}"
        )
        columns = min(max(len(engine.parse_seeds(seed_text)), 1), engine.MAX_SEEDS)  # one row per prompt
        return [gr.update(value=side, columns=columns) for side in shown] + [summary]

    compare_inputs = [
        stack,
        cmp_col.prompts,
        fit_col.targets,
        fit_col.preserve,
        cmp_col.seeds,
        cmp_col.steps,
        cmp_col.guidance,
    ]
    compare_outputs = [cmp_col.original, cmp_col.edited, cmp_col.message]
    fit_event = fit_col.button.click(
        fit,
        [stack, fit_col.dropdown, fit_col.targets, fit_col.preserve, cmp_col.prompts, auto_prompts, fit_col.images]
        + forms.components,
        [stack, stack_view, stack_pick, fit_col.message, cmp_col.prompts, auto_prompts, fitted],
        concurrency_id=HEAVY,
        api_name="fit",
    )

    def compare_after_fit(ok_: bool, progress: gr.Progress = gr.Progress(), *args: Any) -> list[Any]:
        if not ok_:
            return [gr.skip(), gr.skip(), gr.skip()]
        return run_compare(*args, progress=progress)

    fit_event.then(
        compare_after_fit, [fitted, *compare_inputs], compare_outputs, concurrency_id=HEAVY, api_visibility="private"
    )
    cmp_col.button.click(run_compare, compare_inputs, compare_outputs, concurrency_id=HEAVY, api_name="compare")
