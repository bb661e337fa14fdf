"""The Gradio page. Everything on it is generated from the plugin registry: a plugin that registers
gets its tab entry, its summary and a config form built from its ``Config`` dataclass, with no
change here. The work happens in :mod:`conceptedit.demo.engine`; this module only wires components.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable
from typing import Any

import gradio as gr

from conceptedit.errors import ConceptEditError

from . import engine
from .engine import DemoModel, StackEntry
from .forms import FieldSpec, form_fields

log = logging.getLogger("conceptedit.demo")

HEAVY = "model"  # concurrency id shared by every event that runs the pipeline

CSS = """
.ce-gallery img { image-rendering: pixelated; }
#ce-header p { margin: 0.2em 0; }
"""

INTRO = """# conceptedit demo
Erase a concept from a text-to-image model, then look at the same prompts and seeds on the original
and the edited model side by side. Edits stack, can be removed one by one, saved as folders and
loaded again. {model}
"""


# -- helpers ---------------------------------------------------------------------------------------
def _ok(message: str) -> str:
    return f"✓ {message}"


def _error(message: str) -> str:
    return f"**Error:** {message}"


def _run(action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """Call ``fn``; a user error (or a plugin's crash) becomes a warning toast and an error message."""
    try:
        return fn(*args, **kwargs), None
    except ConceptEditError as exc:
        message = str(exc)
    except Exception as exc:  # a plugin bug must not take the app down
        log.error("%s failed:\n%s", action, traceback.format_exc())
        message = f"{action} failed: {type(exc).__name__}: {exc}"
    gr.Warning(message)
    return None, message


def _progress(progress: gr.Progress) -> engine.Progress:
    def report(fraction: float, message: str) -> None:
        progress(min(max(float(fraction), 0.0), 1.0), desc=message)

    return report


def _float_step(default: Any) -> float:
    """Arrow-key step of a float field: a tenth of its default's order of magnitude (1e-6 for 5e-5)."""
    if not isinstance(default, (int, float)) or default == 0:
        return 0.1
    return 10.0 ** (math.floor(math.log10(abs(default))) - 1)


def _widget(spec: FieldSpec, elem_prefix: str) -> gr.components.Component:
    common = {"label": spec.label, "info": spec.help or None, "elem_id": f"{elem_prefix}-{spec.name}"}
    if spec.widget == "checkbox":
        return gr.Checkbox(value=bool(spec.default), **common)
    if spec.widget == "number":
        if spec.integer:
            return gr.Number(value=spec.default, precision=0, step=1, **common)
        return gr.Number(value=spec.default, step=_float_step(spec.default), **common)
    if spec.widget == "dropdown":
        choices = [(str(c), c) for c in spec.choices]
        return gr.Dropdown(choices=choices, value=spec.default, **common)
    placeholder = {"list": "comma-separated values", "json": "JSON"}.get(spec.widget)
    if spec.optional:
        placeholder = (placeholder + "; " if placeholder else "") + "empty: none"
    return gr.Textbox(value=spec.default, placeholder=placeholder, **common)


class ConfigForms:
    """One group of widgets per plugin of a kind; only the selected plugin's group is visible."""

    def __init__(self, names: list[str], selected: str | None, tab: str) -> None:
        self.specs: dict[str, list[FieldSpec]] = {}
        self.groups: dict[str, Any] = {}
        self.components: list[gr.components.Component] = []
        self.slices: dict[str, tuple[int, int]] = {}
        for name in names:
            if not engine.usable(name):
                continue
            specs = form_fields(engine.get_plugin(name).Config)
            with gr.Group(visible=name == selected) as group:
                if not specs:
                    gr.Markdown("This plugin has no settings.", padding=True)
                start = len(self.components)
                for spec in specs:
                    self.components.append(_widget(spec, f"{tab}-{name}"))
            self.specs[name] = specs
            self.groups[name] = group
            self.slices[name] = (start, len(self.components))

    def values(self, name: str, widget_values: tuple[Any, ...]) -> dict[str, Any]:
        if name not in self.slices:
            return {}
        start, end = self.slices[name]
        return {spec.name: value for spec, value in zip(self.specs[name], widget_values[start:end], strict=True)}

    def visibility(self, name: str | None) -> list[Any]:
        return [gr.update(visible=n == name) for n in self.groups]


def _plugin_picker(
    kind: str, include_broken: bool, tab: str, settings_open: bool = True
) -> tuple[gr.Dropdown, gr.Markdown, ConfigForms]:
    choices = engine.plugin_choices(kind, include_broken=include_broken)
    first = next((value for _, value in choices if engine.usable(value)), None)
    dropdown = gr.Dropdown(choices=choices, value=first, label="Method", elem_id=f"{tab}-plugin")
    info = gr.Markdown(engine.describe_plugin(first), elem_id=f"{tab}-plugin-info")
    with gr.Accordion("Settings (defaults: the paper's)", open=settings_open):
        forms = ConfigForms([value for _, value in choices], first, tab)
    return dropdown, info, forms


def _wire_picker(dropdown: gr.Dropdown, info: gr.Markdown, forms: ConfigForms, button: gr.Button) -> None:
    def on_select(name: str | None) -> list[Any]:
        return [
            engine.describe_plugin(name),
            gr.update(interactive=engine.usable(name)),
            *forms.visibility(name),
        ]

    dropdown.change(
        on_select, [dropdown], [info, button, *forms.groups.values()], concurrency_limit=None, api_visibility="private"
    )


def _stack_outputs(stack: list[StackEntry], selected: str | None = None) -> list[Any]:
    choices = engine.stack_choices(stack)
    values = [v for _, v in choices]
    value = selected if selected in values else (values[-1] if values else None)
    return [stack, engine.stack_table(stack), gr.update(choices=choices, value=value)]


# -- the page --------------------------------------------------------------------------------------
def build_app(model: DemoModel, concurrency_limit: int = 1) -> gr.Blocks:
    """The demo page on ``model``; fits and generations run through the queue, ``concurrency_limit`` at once."""
    settings = model.settings
    # Generated images are cached as files; files older than an hour are deleted every half hour.
    with gr.Blocks(title="conceptedit demo", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO.format(model=model.describe()), elem_id="ce-header")
        stack = gr.State([])
        with gr.Tabs():
            with gr.Tab("Erase", id="erase"):
                compare_prompts = _erase_tab(model, stack, settings)
            with gr.Tab("Inspect", id="inspect"):
                _inspect_tab(model, stack, compare_prompts)
            if engine.plugins_of("edit"):
                with gr.Tab("Edit an image", id="edit"):
                    _edit_tab(model)
            if engine.plugins_of("analyze"):
                with gr.Tab("Analyze", id="analyze"):
                    _analyze_tab(model, stack)
    demo.queue(default_concurrency_limit=concurrency_limit)
    return demo


def _erase_tab(model: DemoModel, stack: gr.State, settings: dict[str, Any]) -> gr.Textbox:
    auto_prompts = gr.State("")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### 1 · Fit an erasure")
            dropdown, info, forms = _plugin_picker("erase", include_broken=True, tab="erase", settings_open=False)
            targets = gr.Textbox(
                label="Concept(s) to erase",
                placeholder="comma-separated, e.g. zorblax (a character of the built-in shapes model)",
                elem_id="erase-targets",
            )
            preserve = gr.Textbox(
                label="Concepts to preserve (optional)",
                placeholder="comma-separated, e.g. quimbo, star",
                elem_id="erase-preserve",
            )
            with gr.Accordion("Images of the concept (few-shot methods; optional)", open=False):
                images = gr.File(
                    file_count="multiple", file_types=["image"], label="Images", elem_id="erase-images", height=120
                )
            fit_button = gr.Button(
                "Fit", variant="primary", interactive=engine.usable(dropdown.value), elem_id="erase-fit"
            )
            fit_message = gr.Markdown(elem_id="erase-fit-message")
        with gr.Column(scale=3, min_width=420):
            gr.Markdown("### 2 · Compare: same prompts and seeds, original model vs. with the stack of edits")
            with gr.Row():
                prompts = gr.Textbox(
                    label="Prompts (one per line)",
                    placeholder="filled in from the concepts when you fit; edit freely",
                    lines=4,
                    scale=3,
                    elem_id="compare-prompts",
                )
                with gr.Column(scale=1, min_width=160):
                    seeds = gr.Textbox(value="0, 1", label="Seeds", elem_id="compare-seeds")
                    with gr.Row():
                        steps = gr.Number(
                            value=settings.get("num_inference_steps"), precision=0, label="Steps", min_width=70
                        )
                        guidance = gr.Number(value=settings.get("guidance_scale"), label="Guidance", min_width=70)
            compare_button = gr.Button("Generate", variant="primary", elem_id="compare-run")
            compare_message = gr.Markdown(elem_id="compare-message")
            with gr.Row():
                original = gr.Gallery(
                    label="Original model",
                    columns=2,
                    format="png",
                    object_fit="contain",
                    height=None,
                    elem_id="gallery-original",
                    elem_classes=["ce-gallery"],
                )
                edited = gr.Gallery(
                    label="With the stack of edits",
                    columns=2,
                    format="png",
                    object_fit="contain",
                    height=None,
                    elem_id="gallery-edited",
                    elem_classes=["ce-gallery"],
                )
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

    _wire_picker(dropdown, info, forms, fit_button)
    fitted = gr.State(False)

    def fit(
        stack_value: list[StackEntry],
        name: str,
        target_text: str,
        preserve_text: str,
        prompt_text: str,
        last_auto: str,
        image_files: list[Any] | None,
        *widget_values: Any,
        progress: gr.Progress = gr.Progress(),
    ) -> list[Any]:
        values = forms.values(name, widget_values)
        paths = [getattr(f, "name", f) for f in image_files or []]
        edit, error = _run(
            "fit",
            engine.fit_erase,
            model,
            name,
            values,
            target_text,
            preserve_text,
            progress=_progress(progress),
            images=paths,
        )
        if error:
            return [*_stack_outputs(stack_value), _error(error), gr.skip(), gr.skip(), False]
        new_stack = engine.push(stack_value, edit, "fitted")
        entry = new_stack[-1]
        prompt_update: Any = gr.skip()
        if not prompt_text.strip() or prompt_text == last_auto:
            suggestion = "\n".join(engine.default_prompts(target_text, preserve_text))
            prompt_update, last_auto = suggestion, suggestion
        message = _ok(f"fitted {entry.label} and added it to the stack")
        return [*_stack_outputs(new_stack, str(entry.id)), message, prompt_update, last_auto, True]

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
        result, error = _run(
            "generation",
            engine.compare,
            model,
            stack_value,
            prompt_text,
            seed_text,
            steps_value,
            guidance_value,
            progress=_progress(progress),
        )
        if error:
            return [gr.skip(), gr.skip(), _error(error)]
        shown = [[(engine.for_display(img), text) for img, text in side] for side in (result.original, result.edited)]
        used = result.settings
        summary = result.note or _ok(
            f"{len(result.original)} image(s) per side; edits: {', '.join(e.label for e in stack_value)}; "
            f"{used.get('num_inference_steps', '?')} steps, guidance {used.get('guidance_scale', '?')}"
        )
        columns = min(max(len(engine.parse_seeds(seed_text)), 1), engine.MAX_SEEDS)  # one row per prompt
        return [gr.update(value=side, columns=columns) for side in shown] + [summary]

    compare_inputs = [stack, prompts, targets, preserve, seeds, steps, guidance]
    compare_outputs = [original, edited, compare_message]
    fit_event = fit_button.click(
        fit,
        [stack, dropdown, targets, preserve, prompts, auto_prompts, images, *forms.components],
        [stack, stack_view, stack_pick, fit_message, prompts, auto_prompts, fitted],
        concurrency_id=HEAVY,
        api_name="fit",
    )

    def compare_after_fit(ok: bool, *args: Any, progress: gr.Progress = gr.Progress()) -> list[Any]:
        if not ok:
            return [gr.skip(), gr.skip(), gr.skip()]
        return run_compare(*args, progress=progress)

    fit_event.then(
        compare_after_fit,
        [fitted, *compare_inputs],
        compare_outputs,
        concurrency_id=HEAVY,
        api_visibility="private",
    )
    compare_button.click(run_compare, compare_inputs, compare_outputs, concurrency_id=HEAVY, api_name="compare")

    def remove(stack_value: list[StackEntry], entry_id: str | None) -> list[Any]:
        new_stack, error = _run("remove", engine.remove, stack_value, entry_id)
        if error:
            return [*_stack_outputs(stack_value, entry_id), _error(error)]
        return [*_stack_outputs(new_stack), _ok(f"removed edit #{entry_id}; generate again to see the effect")]

    def save(stack_value: list[StackEntry], entry_id: str | None, folder: str) -> list[Any]:
        path, error = _run("save", engine.save_entry, stack_value, entry_id, folder)
        if error:
            return [*_stack_outputs(stack_value, entry_id), _error(error)]
        return [*_stack_outputs(stack_value, entry_id), _ok(f"saved edit #{entry_id} to `{path}`")]

    def load(stack_value: list[StackEntry], folder: str) -> list[Any]:
        edit, error = _run("load", engine.load_entry, model, folder)
        if error:
            return [*_stack_outputs(stack_value), _error(error)]
        new_stack = engine.push(stack_value, edit, f"loaded from `{folder.strip()}`")
        return [*_stack_outputs(new_stack, str(new_stack[-1].id)), _ok(f"loaded {new_stack[-1].label}")]

    stack_outputs = [stack, stack_view, stack_pick, stack_message]
    remove_button.click(remove, [stack, stack_pick], stack_outputs, concurrency_limit=None, api_visibility="private")
    save_button.click(save, [stack, stack_pick, save_path], stack_outputs, concurrency_id=HEAVY, api_name="save")
    load_button.click(load, [stack, load_path], stack_outputs, concurrency_id=HEAVY, api_name="load")
    return prompts


def _inspect_tab(model: DemoModel, stack: gr.State, compare_prompts: gr.Textbox) -> None:
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

        result, error = _run(
            "inspection", engine.inspect_stack, model, stack_value, prompt_text.strip() or fallback, int(n or 10)
        )
        if error:
            return [_error(error), gr.skip(), gr.skip()]
        return [
            result.message,
            gr.update(value=pd.DataFrame(result.decisions), visible=bool(result.decisions)),
            gr.update(value=pd.DataFrame(result.features), visible=bool(result.features)),
        ]

    button.click(run, [stack, prompts, compare_prompts, top_n], [message, decisions, features], concurrency_id=HEAVY)


def _edit_tab(model: DemoModel) -> None:
    gr.Markdown(
        "### Edit one image\nUpload an image (or leave it empty to generate the source prompt), say what it "
        "shows and what it should show."
    )
    with gr.Row():
        with gr.Column(scale=2):
            dropdown, info, forms = _plugin_picker("edit", include_broken=False, tab="edit")
            image = gr.Image(label="Image (optional)", type="pil", sources=["upload", "clipboard"])
            source = gr.Textbox(label="Source prompt (what the image shows)", elem_id="edit-source")
            target = gr.Textbox(label="Target prompt (what it should show)", elem_id="edit-target")
            concepts = gr.Textbox(label="Concept(s) to edit (optional; default: the target prompt)")
            seed = gr.Number(value=0, precision=0, label="Seed")
            button = gr.Button("Edit", variant="primary", interactive=engine.usable(dropdown.value), elem_id="edit-run")
        with gr.Column(scale=3):
            message = gr.Markdown(elem_id="edit-message")
            gallery = gr.Gallery(
                label="Source → edited",
                columns=2,
                format="png",
                height="auto",
                elem_id="gallery-edit",
                elem_classes=["ce-gallery"],
            )
    _wire_picker(dropdown, info, forms, button)

    def run(
        name: str,
        img: Any,
        src: str,
        tgt: str,
        concept_text: str,
        seed_value: Any,
        *widget_values: Any,
        progress: gr.Progress = gr.Progress(),
    ) -> list[Any]:
        values = forms.values(name, widget_values)
        result, error = _run(
            "image edit",
            engine.edit_image,
            model,
            name,
            values,
            img,
            src,
            tgt,
            concept_text,
            seed_value,
            progress=_progress(progress),
        )
        if error:
            return [_error(error), gr.skip()]
        source_image, outputs = result
        shown = [(engine.for_display(source_image), f"source: {src}")]
        shown += [(engine.for_display(o), f"edited: {tgt}") for o in outputs]
        return [_ok(f"edited with {name}"), shown]

    button.click(
        run,
        [dropdown, image, source, target, concepts, seed, *forms.components],
        [message, gallery],
        concurrency_id=HEAVY,
        api_name="edit_image",
    )


def _analyze_tab(model: DemoModel, stack: gr.State) -> None:
    gr.Markdown("### Analyze the model\nA report of tables and figures (e.g. where an erasure leaks).")
    with gr.Row():
        with gr.Column(scale=2):
            dropdown, info, forms = _plugin_picker("analyze", include_broken=False, tab="analyze")
            targets = gr.Textbox(label="Concept(s)", elem_id="analyze-targets")
            preserve = gr.Textbox(label="Concepts to preserve (optional)")
            with_stack = gr.Checkbox(value=True, label="Analyze the model with the stack of edits applied")
            button = gr.Button(
                "Analyze", variant="primary", interactive=engine.usable(dropdown.value), elem_id="analyze-run"
            )
        with gr.Column(scale=3):
            report = gr.Markdown("_No report yet._", elem_id="analyze-report")
            figures = gr.Gallery(label="Figures", columns=2, height="auto", elem_id="gallery-analyze")
    _wire_picker(dropdown, info, forms, button)

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
        result, error = _run(
            "analysis",
            engine.analyze,
            model,
            stack_value,
            name,
            values,
            target_text,
            preserve_text,
            use_stack,
            progress=_progress(progress),
        )
        if error:
            return [_error(error), gr.skip()]
        return [engine.report_markdown(result), engine.report_figures(result)]

    button.click(
        run,
        [stack, dropdown, targets, preserve, with_stack, *forms.components],
        [report, figures],
        concurrency_id=HEAVY,
        api_name="analyze",
    )
