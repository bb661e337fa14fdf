from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from conceptedit import registry
from conceptedit.config import config_from_dict
from conceptedit.errors import BrokenPluginError, ConfigError, RequestError, UnknownPluginError
from conceptedit.plugin import Plugin, Request
from conceptedit.registry import get_plugin, list_plugins, register_plugin


def test_negative_prompt_is_registered_with_its_declaration():
    info = {i.name: i for i in list_plugins()}["negative-prompt"]
    assert info.status == "ok" and info.kind == "erase" and info.artifact_kind == "runtime"
    assert "sd1" in info.families and info.summary and info.paper


def test_unknown_plugin_lists_the_available_ones():
    with pytest.raises(UnknownPluginError, match="available: .*negative-prompt"):
        get_plugin("no-such-method")


def test_duplicate_name_raises():
    @dataclass
    class Cfg:
        x: int = 1

    class First(Plugin):
        name = "dup-test"
        Config = Cfg

    class Second(Plugin):
        name = "dup-test"
        Config = Cfg

    register_plugin(First)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_plugin(Second)
    finally:
        registry._PLUGINS.pop("dup-test", None)


def test_unknown_config_key_names_valid_keys():
    plugin_cls = get_plugin("negative-prompt")
    with pytest.raises(ConfigError, match="valid keys: mode, separator"):
        plugin_cls({"modee": "append"})


def test_config_values_are_converted_and_checked():
    @dataclass
    class Cfg:
        lr: float = 1e-5
        steps: int = 10
        flag: bool = False
        layers: list[int] | None = None

    cfg = config_from_dict(Cfg, {"lr": "3e-4", "steps": "7", "flag": "true", "layers": "1,2"})
    assert (cfg.lr, cfg.steps, cfg.flag, cfg.layers) == (3e-4, 7, True, [1, 2])
    with pytest.raises(ConfigError, match="expects int"):
        config_from_dict(Cfg, {"steps": "many"})
    with pytest.raises(ConfigError, match="must be one of"):
        get_plugin("negative-prompt")({"mode": "sideways"})


def test_request_validation():
    with pytest.raises(RequestError, match="no target concept"):
        Request(targets=[])
    with pytest.raises(RequestError, match="empty concept"):
        Request(targets=["  "])
    with pytest.raises(RequestError, match="both targets and preserved"):
        Request(targets=["cat"], preserve=["cat"])
    with pytest.raises(RequestError, match="not found"):
        Request(targets=["cat"], images=["/no/such/image.png"])
    assert Request(targets=["  van   gogh "]).targets == ["van gogh"]


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An installed-looking distribution with two entry points: a good plugin and a broken one."""
    (tmp_path / "fake_ce_plugin.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from conceptedit.plugin import Plugin

            @dataclass
            class Cfg:
                strength: float = 1.0

            class FakePlugin(Plugin):
                name = "fake-third-party"
                kind = "analyze"
                Config = Cfg
                summary = "a plugin from another package"
            """
        )
    )
    (tmp_path / "fake_ce_broken.py").write_text("import a_module_that_does_not_exist\n")
    dist = tmp_path / "fake_ce_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ce-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[conceptedit.plugins]\nfake-third-party = fake_ce_plugin:FakePlugin\nfake-broken = fake_ce_broken:Plugin\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    registry._PLUGINS.pop("fake-third-party", None)
    registry._BROKEN.pop("fake-broken", None)
    for mod in ("fake_ce_plugin", "fake_ce_broken"):
        sys.modules.pop(mod, None)


def test_entry_point_plugins_are_discovered_and_broken_ones_listed(fake_distribution):
    registry.discover(refresh=True)
    infos = {i.name: i for i in list_plugins()}
    assert infos["fake-third-party"].status == "ok"
    assert infos["fake-third-party"].kind == "analyze"
    assert infos["fake-broken"].status == "broken"
    assert "a_module_that_does_not_exist" in infos["fake-broken"].error
    assert infos["negative-prompt"].status == "ok"  # others unaffected
    with pytest.raises(BrokenPluginError, match="failed to import"):
        get_plugin("fake-broken")


def test_broken_in_tree_module_does_not_break_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import conceptedit.plugins as package

    # the broken module lives in a temporary folder added to the package's path, never in the installed package
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    bad = tmp_path / "zz_broken_for_test.py"
    bad.write_text("raise RuntimeError('boom at import')\n")
    try:
        registry.discover(refresh=True)
        infos = {i.name: i for i in list_plugins()}
        assert infos["zz_broken_for_test"].status == "broken"
        assert "boom at import" in infos["zz_broken_for_test"].error
        assert infos["negative-prompt"].status == "ok"
    finally:
        registry._BROKEN.pop("zz_broken_for_test", None)
        sys.modules.pop("conceptedit.plugins.zz_broken_for_test", None)


def test_duplicate_name_is_one_error_in_every_registry():
    from conceptedit.edits.base import EDIT_TYPES
    from conceptedit.errors import DuplicateNameError
    from conceptedit.eval.metrics import METRICS
    from conceptedit.sae import SAE_ARCHITECTURES

    class Other:
        pass

    for table in (registry._PLUGINS, EDIT_TYPES, METRICS, SAE_ARCHITECTURES):
        name = next(iter(table))
        before = table[name]
        with pytest.raises(DuplicateNameError, match=f"{table.what} name {name!r} is already registered by"):
            table.register(name, Other)
        assert table[name] is before


def test_edits_import_without_the_plugin_layer():
    # edits -> registry must not lead back to plugin -> edits (the old import cycle)
    import subprocess

    code = "import sys, conceptedit.edits; print('conceptedit.plugin' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
