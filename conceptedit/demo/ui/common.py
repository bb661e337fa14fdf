"""What every tab of the page shares: the run-wrapper that turns an engine call into a result or
a message, messages, Gradio's progress as a conceptedit :data:`Progress`, the plugin picker with one
config form per plugin, galleries, and the stack's outputs."""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable
from typing import Any

import gradio as gr

from conceptedit.errors import ConceptEditError
from conceptedit.toolkit import Progress

from .. import engine
from ..engine import StackEntry
from ..forms import FieldSpec, form_fields

log = logging.getLogger("conceptedit.demo")

HEAVY = "model"  # concurrency id shared by every event that runs the pipeline


def ok(message: str) -> str:
    return f"✓ {message}"


def error(message: str) -> str:
    return f"**Error:** {message}"


def gradio_progress(progress: gr.Progress) -> Progress:
    def report(fraction: float, message: str) -> None:
        progress(min(max(float(fraction), 0.0), 1.0), desc=message)

    return report


def run_action(
    action: str, fn: Callable[..., Any], *args: Any, progress: gr.Progress | None = None, **kwargs: Any
) -> tuple[Any, str | None]:
    """Call ``fn`` for a tab: ``(result, None)``, or ``(None, message)`` when it fails. A user error
    (or a plugin's crash, logged with its traceback) also shows as a warning toast, so the page
    keeps working. ``progress`` (Gradio's) reaches ``fn`` as a conceptedit progress callback."""
    if progress is not None:
        kwargs["progress"] = gradio_progress(progress)
    try:
        return fn(*args, **kwargs), None
    except ConceptEditError as exc:
        message = str(exc)
    except Exception as exc:  # a plugin bug must not take the app down
        log.error("%s failed:\n%s", action, traceback.format_exc())
        message = f"{action} failed: {type(exc).__name__}: {exc}"
    gr.Warning(message)
    return None, message


def plugin_handler(
    action: str,
    forms: ConfigForms,
    call: Callable[..., Any],
    render: Callable[..., list[Any]],
    outputs: int,
) -> Callable[..., list[Any]]:
    """The handler of a plugin tab's run button, whose inputs are ``[dropdown, *inputs, *forms.components]``:
    ``call(name, form_values, *inputs, progress=…)`` runs through :func:`run_action`; on success
    ``render(result, name, *inputs)`` gives the ``outputs`` values, else the message and the rest unchanged."""

    # Gradio injects a progress tracker only into a positional parameter, hence before *args.
    def handler(name: str, progress: gr.Progress = gr.Progress(), *args: Any) -> list[Any]:
        inputs, widget_values = args[: len(args) - len(forms.components)], args[len(args) - len(forms.components) :]
        result, message = run_action(action, call, name, forms.values(name, widget_values), *inputs, progress=progress)
        return failed(message, outputs) if message else render(result, name, *inputs)

    return handler


def failed(message: str, outputs: int) -> list[Any]:
    """The outputs of a handler whose action failed: the error message, the other outputs unchanged."""
    return [error(message), *[gr.skip()] * (outputs - 1)]


def gallery(label: str, elem_id: str, **kwargs: Any) -> gr.Gallery:
    """A gallery of model outputs (small images stay sharp: pixelated scaling)."""
    options = {"columns": 2, "format": "png", "height": "auto", **kwargs}
    return gr.Gallery(label=label, elem_id=elem_id, elem_classes=["ce-gallery"], **options)


# -- plugin picker and config forms ----------------------------------------------------------------
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


def plugin_picker(
    kind: str, include_broken: bool, tab: str, settings_open: bool = True, preferred: tuple[str, ...] = ()
) -> tuple[gr.Dropdown, gr.Markdown, ConfigForms]:
    """The method dropdown, its description and its settings form (defaults: the paper's); selected:
    the first usable of ``preferred`` (e.g. a fast method), else the first usable plugin."""
    choices = engine.plugin_choices(kind, include_broken=include_broken)
    usable = [value for _, value in choices if engine.usable(value)]
    first = next((name for name in (*preferred, *usable) if name in usable), None)
    dropdown = gr.Dropdown(choices=choices, value=first, label="Method", elem_id=f"{tab}-plugin")
    info = gr.Markdown(engine.describe_plugin(first), elem_id=f"{tab}-plugin-info")
    with gr.Accordion("Settings (defaults: the paper's)", open=settings_open):
        forms = ConfigForms([value for _, value in choices], first, tab)
    return dropdown, info, forms


def wire_picker(dropdown: gr.Dropdown, info: gr.Markdown, forms: ConfigForms, button: gr.Button) -> None:
    """Choosing a method shows its description and form; the run button works only for usable ones."""

    def on_select(name: str | None) -> list[Any]:
        return [
            engine.describe_plugin(name),
            gr.update(interactive=engine.usable(name)),
            *forms.visibility(name),
        ]

    dropdown.change(
        on_select, [dropdown], [info, button, *forms.groups.values()], concurrency_limit=None, api_visibility="private"
    )


def stack_outputs(stack: list[StackEntry], selected: str | None = None) -> list[Any]:
    """(state, table, dropdown) after the stack changed; the dropdown keeps ``selected`` if it is still there."""
    choices = engine.stack_choices(stack)
    values = [v for _, v in choices]
    value = selected if selected in values else (values[-1] if values else None)
    return [stack, engine.stack_table(stack), gr.update(choices=choices, value=value)]
