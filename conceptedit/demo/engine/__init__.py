"""The functions behind the demo's UI, without Gradio, one module per tab or concern:

- :mod:`.model`: the one shared pipeline (``DemoModel``) and ``applied`` (a stack for one request);
- :mod:`.plugins`: registered plugins of a kind, their descriptions, instances from form values;
- :mod:`.inputs`: concepts, prompts and seeds read strictly, prompts suggested after a fit;
- :mod:`.stack`: the per-session stack of edits (push, remove, table, save, load);
- :mod:`.erase`, :mod:`.inspection`, :mod:`.image_edit`, :mod:`.analysis`: each tab's work;
- :mod:`.comparison` (+ :mod:`.scoring`, :mod:`.comparison_export`, :mod:`.example`): the Compare
  tab — several methods side by side, scored and judged, the ready example a new page opens with;
- :mod:`.tables`: Markdown tables.

One pipeline serves every tab and every user: edits are applied through their handles for the
duration of one request and removed afterwards (``DemoModel.lock`` keeps requests from
interleaving), so between requests the pipeline is always the original model. Every user error is a
:class:`ConceptEditError` whose message the UI shows as is. This package's namespace re-exports
them all, so the UI and the tests use ``engine.<name>``.
"""

from __future__ import annotations

from conceptedit.registry import PluginInfo, get_plugin
from conceptedit.toolkit import Progress

from .analysis import analyze, report_figures, report_markdown
from .comparison import Column, CompareCache, MethodComparison, compare_methods, parse_methods, prepare_column
from .comparison_export import export, grid_image, table_csv, table_json, table_markdown, table_rows
from .erase import DISPLAY_MIN_SIDE, MAX_STEPS, Comparison, compare, fit_erase, for_display
from .example import FAST_METHODS, Example, first_example
from .image_edit import concept_weights, edit_image, edit_image_with_weights
from .inputs import (
    MAX_PROMPTS,
    MAX_SEEDS,
    PROMPT_TEMPLATES,
    default_prompts,
    parse_concepts,
    parse_prompts,
    parse_seeds,
)
from .inspection import Inspection, inspect_stack
from .model import DemoModel, applied
from .plugins import broken_plugins, describe_plugin, make_plugin, plugin_choices, plugin_info, plugins_of, usable
from .scoring import ClipJudge, LabelJudge, Score, judge_for, model_world, rule_text
from .stack import StackEntry, changed_settings, find, load_entry, push, remove, save_entry, stack_choices, stack_table
from .tables import markdown_table

__all__ = [
    "FAST_METHODS",
    "ClipJudge",
    "Column",
    "CompareCache",
    "Example",
    "LabelJudge",
    "MethodComparison",
    "Score",
    "compare_methods",
    "export",
    "first_example",
    "grid_image",
    "judge_for",
    "model_world",
    "parse_methods",
    "prepare_column",
    "rule_text",
    "table_csv",
    "table_json",
    "table_markdown",
    "table_rows",
    "DISPLAY_MIN_SIDE",
    "MAX_PROMPTS",
    "MAX_SEEDS",
    "MAX_STEPS",
    "PROMPT_TEMPLATES",
    "Comparison",
    "DemoModel",
    "Inspection",
    "PluginInfo",
    "Progress",
    "StackEntry",
    "analyze",
    "applied",
    "broken_plugins",
    "changed_settings",
    "compare",
    "default_prompts",
    "describe_plugin",
    "edit_image",
    "edit_image_with_weights",
    "concept_weights",
    "find",
    "fit_erase",
    "for_display",
    "get_plugin",
    "inspect_stack",
    "load_entry",
    "make_plugin",
    "markdown_table",
    "parse_concepts",
    "parse_prompts",
    "parse_seeds",
    "plugin_choices",
    "plugin_info",
    "plugins_of",
    "push",
    "remove",
    "report_figures",
    "report_markdown",
    "save_entry",
    "stack_choices",
    "stack_table",
    "usable",
]
