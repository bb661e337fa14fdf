"""What the page offers: the registered plugins of a kind, their descriptions, and an instance
configured from form values."""

from __future__ import annotations

from typing import Any

from conceptedit.errors import ConceptEditError
from conceptedit.plugin import Plugin
from conceptedit.registry import PluginInfo, get_plugin, list_plugins

from ..forms import config_from_values


def plugins_of(kind: str) -> list[PluginInfo]:
    """Working plugins of ``kind``, by name."""
    return list_plugins(kind=kind)


def broken_plugins() -> list[PluginInfo]:
    """Plugins that failed to import (their kind is unknown); the Erase tab lists them, disabled."""
    return [i for i in list_plugins() if i.status != "ok"]


def plugin_choices(kind: str, include_broken: bool = False) -> list[tuple[str, str]]:
    """(label, name) pairs for a dropdown; broken plugins are labelled as such."""
    choices = [(info.name, info.name) for info in plugins_of(kind)]
    if include_broken:
        choices += [(f"{info.name} — broken, cannot be used", info.name) for info in broken_plugins()]
    return choices


def plugin_info(name: str) -> PluginInfo | None:
    return next((i for i in list_plugins() if i.name == name), None)


def describe_plugin(name: str | None) -> str:
    """Markdown: the plugin's summary and paper, or its import error if it is broken."""
    if not name:
        return "No plugin selected."
    info = plugin_info(name)
    if info is None:
        return f"Unknown plugin `{name}`."
    if info.status != "ok":
        return f"**`{name}` is broken and cannot be used.** It failed to import:\n\n```\n{info.error}\n```"
    lines = [f"**{info.summary or info.name}**"]
    if info.paper:
        lines.append(f"Paper: {info.paper}")
    lines.append(f"Kind: {info.kind} · produces: {info.artifact_kind} · model families: {', '.join(info.families)}")
    return "\n\n".join(lines)


def usable(name: str | None) -> bool:
    info = plugin_info(name) if name else None
    return info is not None and info.status == "ok"


def make_plugin(name: str, values: dict[str, Any]) -> Plugin:
    """An instance of plugin ``name`` configured from form values (strictly validated)."""
    if not name:
        raise ConceptEditError("choose a plugin first")
    cls = get_plugin(name)
    return cls(config_from_values(cls.Config, values))
