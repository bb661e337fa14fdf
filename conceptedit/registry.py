"""The registries: one shape for all of them, and the plugin registry built on it.

Plugins, edit types, SAE architectures and metrics are each a :class:`Registry`: a name → object
table filled by a decorator in-tree (or an entry point from another package); registering a
different object under a taken name raises the same :class:`DuplicateNameError` everywhere.

Every registry with an entry-point ``group`` finds other packages' entries the same way
(:meth:`Registry.discover`, run on first read): ``conceptedit.plugins``, ``conceptedit.metrics``,
``conceptedit.sae_architectures``, ``conceptedit.models``, ``conceptedit.prompt_sets`` (and the
paraphrase attack's ``conceptedit.word_lists``). An entry that
fails to load is recorded in the table's ``broken`` with its error and never breaks the others. The
built-in shapes world registers through the same entry points (:data:`BUILT_IN_ENTRY_POINTS`), so
the core never imports it.

Plugins register with ``@register_plugin``. Edit types are looked up here (:func:`get_edit_type`)
because an edit type is defined by the plugin that makes it: a miss imports the plugins first. This
module imports nothing of conceptedit but its errors at import time, so ``edits`` and ``plugin`` can
both depend on it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.metadata
import pkgutil
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from conceptedit.errors import ArtifactError, BrokenPluginError, DuplicateNameError, UnknownPluginError

if TYPE_CHECKING:
    from conceptedit.edits.base import Edit
    from conceptedit.plugin import Plugin

T = TypeVar("T")

ENTRY_POINT_GROUP = "conceptedit.plugins"

# The entry points of what ships in this distribution outside the core: the shapes world (model,
# prompt sets, probe metric, word list). Declared here, in the format of ``[project.entry-points]``, rather
# than in pyproject.toml, so that a checkout works without reinstalling (an editable install's
# entry-point metadata is only rewritten by ``pip install``). They load exactly like another
# package's entry points; this table is the only place the core names a shapes-world module.
BUILT_IN_ENTRY_POINTS: dict[str, dict[str, str]] = {
    "conceptedit.models": {"shapes": "conceptedit.pipelines.shapes:model_dir"},
    "conceptedit.prompt_sets": {"shapes-erasure": "conceptedit.datasets.shapes.prompt_sets:erasure_prompt_set"},
    "conceptedit.metrics": {"probe": "conceptedit.datasets.shapes.probe_metric:ProbeAccuracy"},
    "conceptedit.word_lists": {"shapes": "conceptedit.datasets.shapes.word_list:word_list"},  # paraphrase attack
    "conceptedit.image_sets": {"shapes": "conceptedit.datasets.shapes_images:real_images"},  # blindspots
    "conceptedit.stimuli": {"shapes": "conceptedit.datasets.shapes.stimuli:shapes_stimuli"},  # colan
    "conceptedit.detectors": {"shapes": "conceptedit.datasets.shapes.detector:ShapesMarkDetector"},  # geom-erasing
    "conceptedit.image_edit_cases": {"shapes": "conceptedit.datasets.shapes.edit_cases:ShapesCaseSet"},  # eval
}


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def entry_points_of(group: str) -> list[importlib.metadata.EntryPoint]:
    """The built-in entries of ``group`` (:data:`BUILT_IN_ENTRY_POINTS`), then installed packages' ones."""
    declared = BUILT_IN_ENTRY_POINTS.get(group, {})
    built_in = [importlib.metadata.EntryPoint(name, value, group) for name, value in declared.items()]
    return built_in + list(importlib.metadata.entry_points(group=group))


class Registry(dict[str, T], Generic[T]):
    """A name → object table with the behaviour every conceptedit registry shares.

    Read it like a dict; add with :meth:`register`. Registering the same object again (or a class
    with the same module and qualified name, as when a module is imported twice) is a no-op; a
    different object under a taken name raises :class:`DuplicateNameError` naming both.

    With an entry-point ``group``, the first read (``in``, ``[]``, iteration, ``get`` …) runs
    :meth:`discover`: ``in_tree`` (an import hook for modules that register by decorator) and then
    every entry point of the group, each passed to ``load(name, object)`` (default: register the
    object under the entry point's name). An entry that fails is kept in :attr:`broken`.
    """

    def __init__(
        self,
        what: str,
        group: str | None = None,
        load: Callable[[str, Any], Any] | None = None,
        in_tree: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.what = what
        self.group = group
        self.broken: dict[str, str] = {}  # entry point (or in-tree module) name -> its error
        self._load = load
        self._in_tree = in_tree
        self._discovered = False

    def register(self, name: str, obj: T) -> T:
        existing = dict.get(self, name)
        if existing is not None and existing is not obj and _where(existing) != _where(obj):
            raise DuplicateNameError(f"{self.what} name {name!r} is already registered by {_where(existing)}")
        self[name] = obj
        return obj

    def discover(self, refresh: bool = False) -> None:
        """Import in-tree entries and load the group's entry points once (again with ``refresh``)."""
        if self._discovered and not refresh:
            return
        self._discovered = True
        if self._in_tree is not None:
            self._in_tree()
        if self.group is None:
            return
        for ep in entry_points_of(self.group):
            try:
                obj = ep.load()
                if self._load is not None:
                    self._load(ep.name, obj)
                else:
                    self.register(ep.name, obj)
            except Exception as exc:  # another package's bug must not break the registry
                self.broken[ep.name] = _short_error(exc)

    def missing(self, name: str) -> str:
        """Why ``name`` is not here: its entry failed to load (with the error), or what is available."""
        self.discover()
        if name in self.broken:
            return f"{self.what} {name!r} failed to load: {self.broken[name]}"
        return f"unknown {self.what} {name!r}; available: {', '.join(sorted(self)) or 'none'}"

    # reads see other packages' entries: each runs discover() first (a no-op after the first time)
    def __contains__(self, name: object) -> bool:
        self.discover()
        return dict.__contains__(self, name)

    def __getitem__(self, name: str) -> T:
        self.discover()
        return dict.__getitem__(self, name)

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self.discover()
        return dict.__len__(self)

    def get(self, name: str, default: Any = None) -> Any:
        self.discover()
        return dict.get(self, name, default)

    def keys(self) -> Any:
        self.discover()
        return dict.keys(self)

    def values(self) -> Any:
        self.discover()
        return dict.values(self)

    def items(self) -> Any:
        self.discover()
        return dict.items(self)


EDIT_TYPES: Registry[type[Edit]] = Registry("edit type")


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


def _import_in_tree() -> None:
    import conceptedit.plugins as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{package.__name__}.{module.name}")
        except Exception as exc:  # a broken plugin must not break the registry
            _BROKEN[module.name] = _short_error(exc)


def _plugin_from_entry_point(name: str, obj: Any) -> None:
    register_plugin(obj)  # checks it is a Plugin subclass with a name, kind and Config


_PLUGINS: Registry[type[Plugin]] = Registry(
    "plugin", group=ENTRY_POINT_GROUP, load=_plugin_from_entry_point, in_tree=_import_in_tree
)
_BROKEN = _PLUGINS.broken  # name (in-tree module or entry point) -> error


def discover(refresh: bool = False) -> None:
    """Import in-tree plugins and entry points once (again with ``refresh``)."""
    _PLUGINS.discover(refresh)


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
