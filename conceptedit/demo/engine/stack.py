"""The stack of edits of one browser session: push, remove, the table shown, save and load.
Entries are applied in order; each was fitted on (or checked against) the original model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptedit.edits import Edit
from conceptedit.errors import ArtifactError, ConceptEditError
from conceptedit.registry import get_plugin

from .model import DemoModel
from .tables import cell

_ids = itertools.count(1)


@dataclass
class StackEntry:
    edit: Edit
    origin: str  # "fitted" or "loaded from <path>"
    id: int = field(default_factory=lambda: next(_ids))
    saved_to: str = ""

    @property
    def label(self) -> str:
        m = self.edit.manifest
        return f"#{self.id} {m.plugin}: {', '.join(m.targets)}"


def push(stack: list[StackEntry], edit: Edit, origin: str) -> list[StackEntry]:
    return [*stack, StackEntry(edit, origin)]


def remove(stack: list[StackEntry], entry_id: int | str | None) -> list[StackEntry]:
    entry = find(stack, entry_id)
    return [e for e in stack if e is not entry]


def find(stack: list[StackEntry], entry_id: int | str | None) -> StackEntry:
    if entry_id in (None, ""):
        raise ConceptEditError("choose an edit of the stack first")
    for entry in stack:
        if str(entry.id) == str(entry_id):
            return entry
    raise ConceptEditError(f"edit #{entry_id} is not in the stack (any more)")


def stack_choices(stack: list[StackEntry]) -> list[tuple[str, str]]:
    return [(e.label, str(e.id)) for e in stack]


def changed_settings(edit: Edit) -> dict[str, Any]:
    """The config values of an edit that differ from its plugin's defaults."""
    from conceptedit.config import config_to_dict

    try:
        defaults = config_to_dict(get_plugin(edit.manifest.plugin).Config())
    except Exception:  # plugin not installed (a loaded edit) or no defaults: show everything
        defaults = {}
    return {k: v for k, v in edit.manifest.config.items() if k not in defaults or defaults[k] != v}


def stack_table(stack: list[StackEntry]) -> str:
    """Markdown table of the stack, in the order the edits are applied."""
    if not stack:
        return "_No edits yet: fit one above, or load a saved edit folder._"
    header = "| order | edit | plugin | targets | preserved | settings | artifact | from |"
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for order, e in enumerate(stack, 1):
        m = e.edit.manifest
        origin = e.origin + (f"; saved to `{e.saved_to}`" if e.saved_to else "")
        settings = ", ".join(f"{k}={cell(v)}" for k, v in changed_settings(e.edit).items()) or "defaults"
        rows.append(
            f"| {order} | #{e.id} | {m.plugin} | {', '.join(m.targets)} | {', '.join(m.preserve) or '—'} "
            f"| {settings} | {m.artifact_kind} | {origin} |"
        )
    return "\n".join(rows)


def save_entry(stack: list[StackEntry], entry_id: int | str | None, folder: str) -> Path:
    entry = find(stack, entry_id)
    if not folder or not str(folder).strip():
        raise ConceptEditError("give a folder to save the edit to, e.g. runs/no-zorblax")
    path = Path(str(folder).strip()).expanduser()
    try:  # Edit.save refuses a folder or file that is not an earlier edit artifact (nothing is lost)
        saved = entry.edit.save(path)
    except OSError as exc:
        raise ArtifactError(f"could not save to {path}: {exc}") from exc
    entry.saved_to = str(saved)
    return saved


def load_entry(model: DemoModel, folder: str) -> Edit:
    """Read an edit folder and check it fits the loaded model (before it joins the stack)."""
    if not folder or not str(folder).strip():
        raise ConceptEditError("give the folder of a saved edit (it holds manifest.json)")
    path = Path(str(folder).strip()).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    edit = Edit.load(path)
    with model.lock:
        edit.check_compatible(model.pipe)
    return edit
