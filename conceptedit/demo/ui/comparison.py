"""The Compare tab: one concept, several methods (or saved edit folders) side by side — one column
per method plus the original, a row per prompt, the same seeds everywhere — a scored table with a
one-word verdict per method, and the grid (PNG) and table (CSV, JSON) to download. It opens with
the ready example of :func:`engine.first_example`, so pressing **Compare** is a newcomer's first
success."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from .. import engine
from ..engine import CompareCache, DemoModel, MethodComparison
from .common import HEAVY, failed, ok, run_action

INTRO = """### Compare methods
Erase one concept with several methods at once. Each column is the model with **one** edit (the
first is the original model), every row a prompt, the same seeds in every column. Fits are cached:
adding a method only fits and generates the new column. Settings are each method's defaults
(fit with other settings in the **Erase** tab, save the edit, and add its folder here)."""


def gallery_items(result: MethodComparison) -> list[tuple[Any, str]]:
    """Row-major cells (a row per prompt and seed, a column per working method, the original first)."""
    columns = [c for c in result.columns if c.ok]
    items = []
    for i, caption in enumerate(result.cell_captions()):
        for column in columns:
            items.append((engine.for_display(column.images[i]), f"{column.label} · {caption}"))
    return items


def compare_tab(model: DemoModel, settings: dict[str, Any]) -> None:
    example = engine.first_example(model)
    cache = CompareCache()
    gr.Markdown(INTRO)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            targets = gr.Textbox(
                value=example.targets,
                label="Concept to erase",
                elem_id="cmp-targets",
                placeholder="e.g. zorblax (a character of the built-in shapes model)",
            )
            preserve = gr.Textbox(
                value=example.preserve, label="Concepts to preserve (optional)", elem_id="cmp-preserve"
            )
            choices = [value for _, value in engine.plugin_choices("erase")]
            methods = gr.CheckboxGroup(
                choices=choices,
                value=list(example.methods),
                label="Methods",
                info="UCE and negative-prompt take seconds on CPU; ESD, few-shot unlearning and ItD take minutes",
                elem_id="cmp-methods",
            )
            folders = gr.Textbox(
                label="Saved edit folders (optional, one per line)",
                lines=1,
                placeholder="runs/no-zorblax",
                elem_id="cmp-folders",
            )
            prompts = gr.Textbox(
                value=example.prompts,
                label="Grid prompts (one per line)",
                lines=5,
                placeholder="empty: target, paraphrase, a neighbour, unrelated prompts",
                elem_id="cmp-prompts",
            )
            with gr.Row():
                seeds = gr.Textbox(value=example.seeds, label="Seeds", min_width=80, elem_id="cmp-seeds")
                steps = gr.Number(value=settings.get("num_inference_steps"), precision=0, label="Steps", min_width=70)
                guidance = gr.Number(value=settings.get("guidance_scale"), label="Guidance", min_width=70)
            score = gr.Checkbox(value=True, label="Score every column (more images, slower)", elem_id="cmp-score")
            button = gr.Button("Compare", variant="primary", elem_id="cmp-run")
        with gr.Column(scale=3, min_width=420):
            message = gr.Markdown(elem_id="cmp-message")
            header = gr.Markdown(elem_id="cmp-header")
            grid = gr.Gallery(
                label="Same prompts and seeds: original and one column per method",
                columns=3,
                format="png",
                height="auto",
                object_fit="contain",
                elem_id="cmp-gallery",
                elem_classes=["ce-gallery"],
            )
            table = gr.Markdown(elem_id="cmp-table")
            files = gr.File(label="Download: grid (PNG), table (CSV, JSON)", file_count="multiple", elem_id="cmp-files")

    def outputs(result: MethodComparison, started: float, scoring: bool) -> list[Any]:
        shown = [c for c in result.columns if c.ok]
        errors = [f"**{c.label}** failed: {c.error}" for c in result.columns if c.error]
        seconds = time.perf_counter() - started
        done = f"{len(result.methods) - len(errors)} of {len(result.methods)} method(s) in {seconds:.1f} s"
        state = "scoring every column …" if scoring else ("scored" if result.score_rows else "not scored")
        summary = ok(f"{done}; {len(result.prompts)} prompt(s) × {len(result.seeds)} seed(s); {state}")
        head = "Columns, left to right: " + " · ".join(f"**{c.label}**" for c in shown)
        paths = engine.export(result, tempfile.mkdtemp(prefix="conceptedit-compare-"))
        table_text = "_Scoring: the same prompts and seeds in every column …_" if scoring else None
        return [
            "\n\n".join([summary, *errors]),
            head,
            gr.update(value=gallery_items(result), columns=len(shown)),
            table_text or engine.table_markdown(result),
            [str(p) for p in paths],
        ]

    def run(
        target_text: str,
        preserve_text: str,
        method_names: list[str],
        folder_text: str,
        prompt_text: str,
        seed_text: str,
        steps_value: Any,
        guidance_value: Any,
        score_value: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[list[Any]]:
        """Two steps: the grid first (fits and a few images), then the scored table (cached fits and
        grid images; only the scoring images are generated)."""
        started = time.perf_counter()

        def call(score: bool, **kwargs: Any) -> MethodComparison:
            names = engine.parse_methods(method_names, folder_text)
            return engine.compare_methods(
                model,
                cache,
                target_text,
                names,
                preserve_text,
                prompt_text,
                seed_text,
                steps_value,
                guidance_value,
                score=score,
                **kwargs,
            )

        result, error = run_action("comparison", call, False, progress=progress)
        if error:
            yield failed(error, 5)
            return
        yield outputs(result, started, scoring=score_value)
        if not score_value:
            return
        result, error = run_action("scoring", call, True, progress=progress)
        if error:
            yield failed(error, 5)
            return
        yield outputs(result, started, scoring=False)

    button.click(
        run,
        [targets, preserve, methods, folders, prompts, seeds, steps, guidance, score],
        [message, header, grid, table, files],
        concurrency_id=HEAVY,
        api_name="compare_methods",
    )
