"""Other packages plug into every registry through entry points, one mechanism for all
(``conceptedit.registry.Registry.discover``): plugins, metrics, SAE architectures, built-in models,
prompt sets, the paraphrase attack's word lists, blindspots' image sets, Geom-Erasing's detectors and
eval's image-edit case sets.
``importlib.metadata.entry_points`` is replaced by a fake that declares a third-party package's
entries; a broken entry is recorded with its error and breaks nothing else."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conceptedit import registry
from conceptedit.detectors import DETECTORS, get_detector
from conceptedit.errors import BrokenPluginError, ConfigError, ModelLoadError
from conceptedit.eval.image_edits import CASE_SETS, case_set
from conceptedit.eval.metrics import METRICS, create_metric
from conceptedit.eval.prompts import BUILTIN_PROMPT_SETS, builtin_prompt_set
from conceptedit.loading import BUILTIN_MODELS, builtin_model_dir
from conceptedit.plugins.blindspots import IMAGE_SETS
from conceptedit.plugins.colan import STIMULI, stimuli_for
from conceptedit.plugins.paraphrase import WORD_LISTS, WordList, find_word_list
from conceptedit.sae import SAE_ARCHITECTURES, create_sae

MODULE = "fake_ce_third_party"
DECLARED = {
    "conceptedit.plugins": {"fake-ep-plugin": f"{MODULE}:FakePlugin", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.metrics": {"fake_ep_metric": f"{MODULE}:FakeMetric", "fake_ep_broken": "no_such_module_xyz:X"},
    "conceptedit.sae_architectures": {"fake-ep-sae": f"{MODULE}:FakeSAE", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.models": {"fake-ep-model": f"{MODULE}:model_dir", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.prompt_sets": {"fake-ep-set": f"{MODULE}:prompt_set", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.word_lists": {"fake-ep-words": f"{MODULE}:word_list", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.image_sets": {"fake-ep-images": f"{MODULE}:image_set", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.stimuli": {"fake-ep-stimuli": f"{MODULE}:stimuli", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.detectors": {"fake-ep-detector": f"{MODULE}:FakeDetector", "fake-ep-broken": "no_such_module_xyz:X"},
    "conceptedit.image_edit_cases": {"fake-ep-cases": f"{MODULE}:FakeCases", "fake-ep-broken": "no_such_module_xyz:X"},
}
TABLES = {
    "conceptedit.plugins": registry._PLUGINS,
    "conceptedit.metrics": METRICS,
    "conceptedit.sae_architectures": SAE_ARCHITECTURES,
    "conceptedit.models": BUILTIN_MODELS,
    "conceptedit.prompt_sets": BUILTIN_PROMPT_SETS,
    "conceptedit.word_lists": WORD_LISTS,
    "conceptedit.image_sets": IMAGE_SETS,
    "conceptedit.stimuli": STIMULI,
    "conceptedit.detectors": DETECTORS,
    "conceptedit.image_edit_cases": CASE_SETS,
}


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    (tmp_path / f"{MODULE}.py").write_text(
        textwrap.dedent(
            f"""
            from dataclasses import dataclass

            from conceptedit.eval.metrics import Metric, MetricResult
            from conceptedit.eval.prompts import PromptRow
            from conceptedit.plugin import Plugin
            from conceptedit.plugins.paraphrase import WordList
            from conceptedit.sae.topk import TopKSAE


            @dataclass
            class Cfg:
                strength: float = 1.0


            class FakePlugin(Plugin):
                name = "fake-ep-plugin"
                kind = "analyze"
                Config = Cfg


            class FakeMetric(Metric):
                name = "fake_ep_metric"

                def compute(self, group):
                    return {{self.name: MetricResult(1.0)}}


            class FakeSAE(TopKSAE):
                pass


            def model_dir():
                return {str(model)!r}


            def word_list(concept):
                return WordList(concept, aliases=("zee",)) if concept == "zorblax" else None


            def image_set(n, seed):
                return [], [], []


            class FakeDetector:
                concepts = ("stamp",)

                def detect(self, images):
                    return []


            class FakeCases:
                families = ("shape",)


            def stimuli():
                return {{"zorblax": ["a zorblax", "zorblax again"]}}


            def prompt_set(targets, per_role, seed):
                return [PromptRow(f"a picture of {{t}}", seed, i) for i, t in enumerate(targets)]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        group = selection.get("group")
        if group in DECLARED:
            return [importlib.metadata.EntryPoint(n, v, group) for n, v in DECLARED[group].items()]
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    for table in TABLES.values():
        table.discover(refresh=True)
    yield model
    for group, table in TABLES.items():
        for name in DECLARED[group]:
            dict.pop(table, name, None)
            table.broken.pop(name, None)
    sys.modules.pop(MODULE, None)


def test_every_registry_loads_its_entry_point_group(third_party: Path):
    for group, table in TABLES.items():
        assert table.group == group
        assert not {"fake-ep-broken", "fake_ep_broken"} & set(table), table.what
    assert registry.get_plugin("fake-ep-plugin").__module__ == MODULE
    assert type(create_metric("fake_ep_metric")).__module__ == MODULE
    sae = create_sae("fake-ep-sae", d_in=4, width=8, k=2)
    assert type(sae).__module__ == MODULE and sae.architecture == "fake-ep-sae"
    assert builtin_model_dir("fake-ep-model") == third_party
    rows = builtin_prompt_set("fake-ep-set")(["zorblax"], 1, 7)
    assert [(r.prompt, r.evaluation_seed) for r in rows] == [("a picture of zorblax", 7)]
    assert find_word_list("fake-ep-words", "zorblax") == WordList("zorblax", aliases=("zee",))
    assert IMAGE_SETS["fake-ep-images"](1, 0) == ([], [], [])
    assert stimuli_for("fake-ep-stimuli") == {"zorblax": ["a zorblax", "zorblax again"]}
    assert type(get_detector("fake-ep-detector")).__module__ == MODULE
    assert type(case_set("fake-ep-cases")).__module__ == MODULE
    # the built-ins are still there: the shapes world registers through the same groups
    assert "probe" in METRICS and "shapes" in BUILTIN_MODELS and "shapes-erasure" in BUILTIN_PROMPT_SETS
    assert "topk" in SAE_ARCHITECTURES and "negative-prompt" in registry._PLUGINS and "shapes" in WORD_LISTS
    assert "shapes" in IMAGE_SETS and "shapes" in STIMULI and "shapes" in DETECTORS and "shapes" in CASE_SETS


def test_a_broken_entry_point_is_reported_by_name(third_party: Path):
    for table in TABLES.values():
        broken = table.broken.get("fake-ep-broken") or table.broken.get("fake_ep_broken")
        assert broken and "no_such_module_xyz" in broken, table.what
    with pytest.raises(BrokenPluginError, match="no_such_module_xyz"):
        registry.get_plugin("fake-ep-broken")
    with pytest.raises(ConfigError, match="metric 'fake_ep_broken' failed to load: .*no_such_module_xyz"):
        create_metric("fake_ep_broken")
    with pytest.raises(ConfigError, match="failed to load: .*no_such_module_xyz"):
        builtin_prompt_set("fake-ep-broken")
    with pytest.raises(ConfigError, match="case set 'fake-ep-broken' failed to load: .*no_such_module_xyz"):
        case_set("fake-ep-broken")
    with pytest.raises(ModelLoadError, match="not available in this install: .*no_such_module_xyz"):
        builtin_model_dir("fake-ep-broken")


def test_an_entry_point_to_the_wrong_kind_of_object_is_broken(monkeypatch: pytest.MonkeyPatch):
    # a metric entry point naming another metric's class, an SAE entry point naming a plugin
    wrong = {
        "conceptedit.metrics": {"not_pixels": "conceptedit.eval.metrics:PixelDistance"},
        "conceptedit.sae_architectures": {"not-an-sae": "conceptedit.eval.metrics:PixelDistance"},
    }
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        group = selection.get("group")
        return (
            [importlib.metadata.EntryPoint(n, v, group) for n, v in wrong[group].items()]
            if group in wrong
            else (real(**selection))
        )

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    try:
        METRICS.discover(refresh=True)
        SAE_ARCHITECTURES.discover(refresh=True)
        assert "points at metric 'pixel_distance'" in METRICS.broken["not_pixels"]
        assert "SAE subclass" in SAE_ARCHITECTURES.broken["not-an-sae"]
        assert "not_pixels" not in METRICS and "not-an-sae" not in SAE_ARCHITECTURES
    finally:
        METRICS.broken.pop("not_pixels", None)
        SAE_ARCHITECTURES.broken.pop("not-an-sae", None)


def test_built_in_entry_points_name_only_what_exists():
    for group, declared in registry.BUILT_IN_ENTRY_POINTS.items():
        assert group in TABLES, group
        for name, value in declared.items():
            assert importlib.metadata.EntryPoint(name, value, group).load() is not None
            assert name in TABLES[group] and name not in TABLES[group].broken
