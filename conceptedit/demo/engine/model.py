"""The one pipeline every tab and every user shares: its lock, its generation settings, and
applying a stack of edits for one request (always removed afterwards, so between requests the
pipeline is the original model)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from conceptedit.toolkit import DEFAULT_MODEL

if TYPE_CHECKING:
    from .stack import StackEntry


class DemoModel:
    """The one loaded pipeline, its lock and a short description for the page header."""

    def __init__(self, pipe: Any, source: str = "") -> None:
        self.pipe = pipe
        self.source = source
        self.lock = threading.RLock()
        with contextlib.suppress(Exception):
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(cls, source: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None) -> DemoModel:
        from conceptedit.loading import load_pipeline

        return cls(load_pipeline(source, device=device, dtype=dtype), source)

    @property
    def settings(self) -> dict[str, Any]:
        from conceptedit.generation import generation_settings

        return generation_settings(self.pipe)

    def describe(self) -> str:
        from conceptedit.families import detect_family
        from conceptedit.loading import model_id

        device = getattr(self.pipe, "device", "?")
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items()) or "diffusers defaults"
        return f"model `{model_id(self.pipe)}` ({detect_family(self.pipe)}) on {device} · generation: {settings}"


@contextlib.contextmanager
def applied(model: DemoModel, stack: Sequence[StackEntry]) -> Iterator[list[Any]]:
    """Apply the stack's edits in order for the duration of the block; always removes them."""
    handles: list[Any] = []
    try:
        for entry in stack:
            handles.append(entry.edit.apply(model.pipe))
        yield handles
    finally:
        for handle in reversed(handles):
            handle.remove()
