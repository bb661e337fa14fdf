"""The plugin registry: in-tree plugins register with ``@register_plugin``; third-party packages
through the entry-point group ``conceptedit.plugins``. A plugin that fails to import is listed as
broken with its error and never breaks the others. Duplicate names raise."""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import pkgutil
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from conceptedit.errors import BrokenPluginError, UnknownPluginError
from conceptedit.plugin import PLUGIN_KINDS, Plugin

ENTRY_POINT_GROUP = "conceptedit.plugins"

_PLUGINS: dict[str, type[Plugin]] = {}
_BROKEN: dict[str, str] = {}  # name (module or entry point) -> error
_discovered = False


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    summary: str
    paper: str
    families: tuple[str, ...]
    artifact_kind: str
    status: str  # "ok" | "broken"
    error: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register_plugin(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: check the declaration and add the plugin to the registry."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise TypeError("@register_plugin decorates subclasses of conceptedit.Plugin")
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a name")
    if cls.kind not in PLUGIN_KINDS:
        raise TypeError(f"{cls.name}: kind must be one of {PLUGIN_KINDS}, got {cls.kind!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.name}: Config must be a dataclass")
    existing = _PLUGINS.get(cls.name)
    if existing is not None and existing is not cls:
        if (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"plugin name {cls.name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
    _PLUGINS[cls.name] = cls
    return cls


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _import_in_tree() -> None:
    import conceptedit.plugins as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package.__name__}.{module.name}")
        except Exception as exc:  # a broken plugin must not break the registry
            _BROKEN[module.name] = _short_error(exc)


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if isinstance(loaded, type) and issubclass(loaded, Plugin):
                register_plugin(loaded)
        except Exception as exc:
            _BROKEN[ep.name] = _short_error(exc)


def discover(refresh: bool = False) -> None:
    """Import in-tree plugins and entry points once (again with ``refresh``)."""
    global _discovered
    if _discovered and not refresh:
        return
    _discovered = True
    _import_in_tree()
    _load_entry_points()


def _info(cls: type[Plugin]) -> PluginInfo:
    return PluginInfo(
        name=cls.name,
        kind=cls.kind,
        summary=cls.summary,
        paper=cls.paper,
        families=tuple(cls.families),
        artifact_kind=cls.artifact_kind,
        status="ok",
        source=cls.__module__,
    )


def list_plugins(pattern: str = "*", kind: str | None = None, include_broken: bool = True) -> list[PluginInfo]:
    """Registered plugins matching a glob ``pattern`` (and ``kind``), broken ones last."""
    discover()
    infos = [_info(cls) for name, cls in sorted(_PLUGINS.items()) if fnmatch.fnmatch(name, pattern)]
    if kind:
        infos = [i for i in infos if i.kind == kind]
    if include_broken and kind is None:
        infos += [
            PluginInfo(
                name=n, kind="?", summary="", paper="", families=(), artifact_kind="", status="broken", error=err
            )
            for n, err in sorted(_BROKEN.items())
            if fnmatch.fnmatch(n, pattern) and n not in _PLUGINS
        ]
    return infos


def get_plugin(name: str) -> type[Plugin]:
    """The plugin class registered as ``name``; unknown names list what exists."""
    discover()
    if name in _PLUGINS:
        return _PLUGINS[name]
    if name in _BROKEN:
        raise BrokenPluginError(f"plugin {name!r} failed to import: {_BROKEN[name]}")
    known = ", ".join(sorted(_PLUGINS)) or "none"
    raise UnknownPluginError(f"unknown plugin {name!r}; available: {known}")
