"""The core imports nothing from the shapes world (docs/architecture.md, "Import rules").

Every module of the installed ``conceptedit`` package (including ``plugins/``, ``pipelines/`` and
``datasets/``, mapped under it) is read with ``ast``, without importing it. The shapes world —
``conceptedit.datasets.shapes*``, ``conceptedit.pipelines.shapes*`` and its CLI, ``conceptedit.cli.shapes``
— registers itself through the registries' entry points (``registry.BUILT_IN_ENTRY_POINTS``); any other
module that imports it, at the top or inside a function, fails this test.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from collections.abc import Iterator
from pathlib import Path

ROOTS = ("conceptedit", "conceptedit.plugins", "conceptedit.pipelines", "conceptedit.datasets")
SHAPES_WORLD = ("conceptedit.datasets.shapes", "conceptedit.pipelines.shapes", "conceptedit.cli.shapes")
# Modules allowed to import the shapes world although they are not part of it, each with its reason.
EXCEPTIONS: dict[str, str] = {}


def _in_shapes_world(module: str) -> bool:
    # "conceptedit.pipelines.shapes" also covers shapes_train, shapes_clip … (prefix without a dot)
    return module.startswith(SHAPES_WORLD)


def _package_modules(name: str, paths: list[str]) -> Iterator[tuple[str, Path]]:
    yield name, Path(paths[0]) / "__init__.py"
    for info in pkgutil.iter_modules(paths):
        full = f"{name}.{info.name}"
        folder = Path(info.module_finder.path) / info.name  # type: ignore[attr-defined]
        if info.ispkg:
            yield from _package_modules(full, [str(folder)])
        else:
            yield full, folder.with_suffix(".py")


def conceptedit_modules() -> dict[str, Path]:
    """Module name → source file of every module of the package, found without importing them."""
    out: dict[str, Path] = {}
    for root in ROOTS:
        spec = importlib.util.find_spec(root)
        assert spec is not None and spec.submodule_search_locations, root
        for name, path in _package_modules(root, list(spec.submodule_search_locations)):
            out.setdefault(name, path)
    return out


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name an ``import`` statement in the file may load (``from a import b`` gives both
    ``a`` and ``a.b``: b may be a submodule); relative imports are resolved against ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def shapes_imports(modules: dict[str, Path]) -> dict[str, list[str]]:
    """Core module → the shapes-world modules it imports (empty when the rule holds)."""
    found: dict[str, list[str]] = {}
    for module, path in sorted(modules.items()):
        if _in_shapes_world(module) or module in EXCEPTIONS:
            continue
        hits = sorted(n for n in imported_names(module, path) if _in_shapes_world(n))
        if hits:
            found[module] = hits
    return found


def test_the_walk_sees_the_whole_package():
    modules = conceptedit_modules()
    expected = ["conceptedit.eval.runner", "conceptedit.eval.metrics.base", "conceptedit.plugins.uce"]
    expected += ["conceptedit.demo.ui.common", "conceptedit.datasets.shapes.probe", "conceptedit.pipelines.shapes"]
    assert not [name for name in expected if name not in modules]
    assert all(path.is_file() for path in modules.values())
    # the shapes world's own imports are seen, so a core module doing the same would be too
    assert "conceptedit.datasets.shapes.probe" in imported_names(
        "conceptedit.cli.shapes", modules["conceptedit.cli.shapes"]
    )
    assert "conceptedit.datasets.shapes.world" in imported_names(
        "conceptedit.datasets.shapes.captions", modules["conceptedit.datasets.shapes.captions"]
    )


def test_relative_and_submodule_imports_are_resolved(tmp_path: Path):
    source = tmp_path / "runner.py"
    source.write_text("from ..datasets import shapes\nfrom conceptedit.pipelines import shapes_train as t\n")
    names = imported_names("conceptedit.eval.runner", source)
    assert "conceptedit.datasets.shapes" in names
    assert "conceptedit.pipelines.shapes_train" in names
    assert shapes_imports({"conceptedit.eval.runner": source}) == {
        "conceptedit.eval.runner": ["conceptedit.datasets.shapes", "conceptedit.pipelines.shapes_train"]
    }


def test_the_core_imports_nothing_from_the_shapes_world():
    found = shapes_imports(conceptedit_modules())
    assert not found, "core modules import the shapes world (register through an entry point instead): " + "; ".join(
        f"{module} imports {', '.join(names)}" for module, names in found.items()
    )


def test_exceptions_are_still_needed():
    modules = conceptedit_modules()
    for module in EXCEPTIONS:
        assert module in modules, f"{module} is gone: remove it from EXCEPTIONS"
        assert any(_in_shapes_world(n) for n in imported_names(module, modules[module])), module
