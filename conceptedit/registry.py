"""The registries: one shape for all of them, and the plugin registry built on it.

Plugins, edit types, SAE architectures and metrics are each a :class:`Registry`: a name → object
table filled by a decorator in-tree (or an entry point from another package); registering a
different object under a taken name raises the same :class:`DuplicateNameError` everywhere.

Plugins register with ``@register_plugin``, third-party packages through the entry-point group
``conceptedit.plugins``. A plugin that fails to import is listed as broken with its error and never
breaks the others. Edit types are looked up here (:func:`get_edit_type`) because an edit type is
defined by the plugin that makes it: a miss imports the plugins first. This module imports nothing
of conceptedit but its errors at import time, so ``edits`` and ``plugin`` can both depend on it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import pkgutil
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conceptedit.errors import ArtifactError, BrokenPluginError, DuplicateNameError, UnknownPluginError

if TYPE_CHECKING:
    from conceptedit.edits.base import Edit
    from conceptedit.plugin import Plugin

T = TypeVar("T")

ENTRY_POINT_GROUP = "conceptedit.plugins"


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class Registry(dict[str, T], Generic[T]):
    """A name → object table with the behaviour every conceptedit registry shares.

    Read it like a dict; add with :meth:`register`. Registering the same object again (or a class
    with the same module and qualified name, as when a module is imported twice) is a no-op; a
    different object under a taken name raises :class:`DuplicateNameError` naming both.
    """

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, name: str, obj: T) -> T:
        existing = self.get(name)
        if existing is not None and existing is not obj and _where(existing) != _where(obj):
            raise DuplicateNameError(f"{self.what} name {name!r} is already registered by {_where(existing)}")
        self[name] = obj
        return obj


_PLUGINS: Registry[type[Plugin]] = Registry("plugin")
_BROKEN: dict[str, str] = {}  # name (module or entry point) -> error
EDIT_TYPES: Registry[type[Edit]] = Registry("edit type")
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
    from conceptedit.plugin import PLUGIN_KINDS, Plugin

    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise TypeError("@register_plugin decorates subclasses of conceptedit.Plugin")
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a name")
    if cls.kind not in PLUGIN_KINDS:
        raise TypeError(f"{cls.name}: kind must be one of {PLUGIN_KINDS}, got {cls.kind!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.name}: Config must be a dataclass")
    return _PLUGINS.register(cls.name, cls)


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
    from conceptedit.plugin import Plugin

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


def get_edit_type(name: str, plugin: str = "") -> type[Edit]:
    """The Edit class registered as ``name``, importing the plugins first if it is not known yet."""
    cls = EDIT_TYPES.get(name)
    if cls is None:
        discover()
        cls = EDIT_TYPES.get(name)
    if cls is None:
        raise ArtifactError(f"edit type {name!r} is unknown; install the plugin that made it ({plugin!r})")
    return cls
