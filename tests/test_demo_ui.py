"""The Gradio wiring of the demo, without a browser: every handler that reports progress is given
Gradio's tracker (Gradio injects one only into a positional parameter; a keyword-only ``progress``
after ``*args`` is silently left without a bar)."""

from __future__ import annotations

import inspect

import pytest

gr = pytest.importorskip("gradio")

from gradio.helpers import special_args  # noqa: E402
from test_demo import fake_plugins, model  # noqa: E402, F401  (fixtures)

from conceptedit.demo.ui import build_app  # noqa: E402


def test_every_handler_that_reports_progress_gets_a_tracker(fake_plugins, model):  # noqa: F811
    demo = build_app(model)
    with_progress = []
    for block_fn in demo.fns.values():
        params = inspect.signature(block_fn.fn).parameters.values()
        if any(isinstance(p.default, gr.Progress) for p in params):
            _, progress_index, _, _ = special_args(block_fn.fn, [])
            assert progress_index is not None, f"{block_fn.name}: progress is not injected"
            with_progress.append(block_fn.name)
    assert len(with_progress) >= 5, with_progress  # fit, compare (twice: after fit and on its own), edit, analyze
