"""The functions behind the Gradio demo, without a browser: config forms ↔ dataclasses, fit and
compare on a tiny pipeline, the stack of edits (save, load, remove), inspection, the edit and
analyze tabs (with fake plugins registered only here), and the error messages the UI shows."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from PIL import Image

from conceptedit import registry
from conceptedit.config import config_fields
from conceptedit.demo import engine
from conceptedit.demo.forms import config_from_values, config_values, form_fields
from conceptedit.edits import NegativePromptEdit, PromptDecision, applied_edits
from conceptedit.errors import (
    ArtifactError,
    ConceptEditError,
    ConfigError,
    ModelMismatchError,
    RequestError,
    UnsupportedModelError,
)
from conceptedit.plugin import AnalysisPlugin, ImageEditPlugin, Plugin, Report

ROOT = Path(__file__).resolve().parents[1]


# -- config forms ----------------------------------------------------------------------------------
@dataclass
class EveryType:
    flag: bool = field(default=True, metadata={"help": "a switch"})
    steps: int = field(default=20, metadata={"help": "how many"})
    lr: float = 1e-5
    mode: Literal["xattn", "full", "selfattn"] = field(default="xattn", metadata={"help": "which layers"})
    name: str = "a name"
    words: list[str] = field(default_factory=lambda: ["a", "b c"])
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None
    note: str | None = None
    extra: dict[str, float] = field(default_factory=lambda: {"x": 1.5})


def test_form_fields_map_types_to_widgets_with_defaults_and_help():
    specs = {s.name: s for s in form_fields(EveryType)}
    widgets = {name: s.widget for name, s in specs.items()}
    assert widgets == {
        "flag": "checkbox",
        "steps": "number",
        "lr": "number",
        "mode": "dropdown",
        "name": "textbox",
        "words": "list",
        "sizes": "list",
        "limit": "number",
        "note": "textbox",
        "extra": "json",
    }
    assert specs["steps"].integer and not specs["lr"].integer
    assert specs["mode"].choices == ("xattn", "full", "selfattn") and specs["mode"].help == "which layers"
    assert specs["flag"].help == "a switch"
    assert specs["words"].default == "a, b c" and specs["sizes"].default == "1, 2"
    assert specs["limit"].optional and specs["limit"].default is None
    assert specs["extra"].default == '{"x": 1.5}'


def test_config_form_round_trip():
    config = EveryType(flag=False, steps=7, mode="full", words=["x"], sizes=(3,), limit=4, note="n", extra={})
    assert config_from_values(EveryType, config_values(config)) == config
    assert config_from_values(EveryType, config_values(EveryType())) == EveryType()


def test_widget_values_are_converted_like_a_browser_sends_them():
    values = config_values(EveryType())
    values.update(steps=12.0, lr="0.5", words="one, two ,three", sizes="4,5", limit=None, note="  ")
    config = config_from_values(EveryType, values)
    assert config.steps == 12 and isinstance(config.steps, int)
    assert config.lr == 0.5 and config.words == ["one", "two", "three"] and config.sizes == (4, 5)
    assert config.limit is None and config.note is None


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("steps", 2.5, "steps"),
        ("steps", None, "steps"),
        ("mode", "sideways", "mode"),
        ("flag", "maybe", "flag"),
        ("extra", "{not json", "extra"),
        ("lr", "fast", "lr"),
    ],
)
def test_bad_config_values_name_the_field(key, value, expected):
    values = config_values(EveryType())
    values[key] = value
    with pytest.raises(ConfigError, match=expected):
        config_from_values(EveryType, values)


def test_every_registered_plugin_config_round_trips_through_its_form():
    infos = [i for i in registry.list_plugins() if i.status == "ok"]
    assert infos, "no plugins registered"
    for info in infos:
        config_cls = registry.get_plugin(info.name).Config
        default = config_cls()
        assert config_from_values(config_cls, config_values(default)) == default, info.name
        assert [s.name for s in form_fields(config_cls)] == list(config_fields(config_cls))


# -- fake plugins, registered for one test at a time ----------------------------------------------
@dataclass
class FakeEditConfig:
    strength: float = field(default=0.5, metadata={"help": "how far to move towards the target"})


class FakeImageEdit(ImageEditPlugin):
    name = "fake-image-edit"
    Config = FakeEditConfig
    summary = "Fake image edit for the demo tests."
    paper = "Nobody, 2026"

    def edit_image(self, pipe, image, source_prompt, target_prompt, *, seed=0, progress=lambda f, m: None):
        progress(0.5, "editing")
        array = np.asarray(image).astype(np.float32)
        return Image.fromarray((255 - array * self.config.strength).clip(0, 255).astype(np.uint8))


@dataclass
class FakeAnalysisConfig:
    rows: int = 2


class FakeAnalysis(AnalysisPlugin):
    name = "fake-analysis"
    Config = FakeAnalysisConfig
    summary = "Fake analysis for the demo tests."

    def fit(self, pipe, request, progress=lambda f, m: None):
        figure = Path(request.extra.get("figure_dir", "/nonexistent")) / "figure.png"
        return Report(
            title=f"Leaks of {request.targets[0]}",
            summary=f"{len(applied_edits(pipe))} edit(s) applied during the analysis",
            tables={"scores": [{"prompt": f"p{i}", "score": i / 2} for i in range(self.config.rows)]},
            figures={"a figure": figure},
        )


@dataclass
class NoConfig:
    pass


class CrashingErase(Plugin):
    name = "fake-crash"
    kind = "erase"
    Config = NoConfig

    def fit(self, pipe, request, progress=lambda f, m: None):
        raise RuntimeError("the optimiser diverged")


class ClassifyingEdit(NegativePromptEdit):
    """A runtime edit that also classifies prompts and explains them (as ItD and SAE edits will)."""

    edit_type = "demo_test_classifying"

    def classify(self, prompts: list[str]) -> list[PromptDecision]:
        return [PromptDecision(p, float(len(p)), 10.0, len(p) > 10) for p in prompts]

    def explain(self, prompt: str, top_n: int = 10) -> list[dict[str, Any]]:
        return [{"feature": i, "activation": 1.0 / (i + 1), "label": f"f{i}"} for i in range(top_n)]


@pytest.fixture
def fake_plugins(monkeypatch):
    registry.discover()
    for cls in (FakeImageEdit, FakeAnalysis, CrashingErase):
        monkeypatch.setitem(registry._PLUGINS, cls.name, cls)
    monkeypatch.setitem(registry._BROKEN, "fake_broken", "ImportError: No module named 'missing_dep' (x.py:1)")
    yield


# -- fit, compare, stack ----------------------------------------------------------------------------
@pytest.fixture
def model(tiny_pipe):
    return engine.DemoModel(tiny_pipe, "tiny")


def _fit(model, target="cat", preserve=""):
    return engine.fit_erase(model, "negative-prompt", {"mode": "append", "separator": ", "}, target, preserve)


def test_fit_and_compare_on_the_same_pipeline(model):
    fractions = []
    edit = engine.fit_erase(model, "negative-prompt", {}, "cat", "dog", progress=lambda f, m: fractions.append((f, m)))
    assert edit.manifest.targets == ["cat"] and edit.manifest.preserve == ["dog"]
    assert fractions[0][0] == 0.0 and fractions[-1][0] == 1.0
    stack = engine.push([], edit, "fitted")
    ticks = []
    result = engine.compare(model, stack, "a red cat\na blue dog", "0, 1", progress=lambda f, m: ticks.append(f))
    assert [c for _, c in result.original] == [c for _, c in result.edited]
    assert [c for _, c in result.original][0] == "seed 0 · a red cat" and len(result.original) == 4
    assert ticks and ticks[-1] == pytest.approx(1.0)
    first_original = np.asarray(result.original[0][0])
    assert not np.array_equal(first_original, np.asarray(result.edited[0][0])), "the edit changed nothing"
    assert applied_edits(model.pipe) == [], "the edits must be removed after generating"
    # the galleries are exactly the model without and with the stack at the same prompts and seeds
    from conceptedit.generation import generate

    prompts, seeds = ["a red cat"] * 2 + ["a blue dog"] * 2, [0, 1, 0, 1]
    plain = generate(model.pipe, prompts, seeds, **result.settings)
    with edit.apply(model.pipe):
        expected = generate(model.pipe, prompts, seeds, **result.settings)
    for (got, _), want in zip(result.edited, expected, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want)), "edited gallery is not the stack at these seeds"
    for (got, _), want in zip(result.original, plain, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want)), "original gallery is not the model at these seeds"
    again = engine.compare(model, [], "a red cat", "0")
    assert np.array_equal(first_original, np.asarray(again.original[0][0])), "the pipeline was not restored"
    assert again.edited == [] and "empty" in again.note


def test_settings_and_display(model):
    result = engine.compare(model, [], ["a cat"], [3], steps=1, guidance=1.0)
    assert result.settings["num_inference_steps"] == 1 and result.settings["guidance_scale"] == 1.0
    image = result.original[0][0]
    shown = engine.for_display(image)
    assert min(shown.size) >= engine.DISPLAY_MIN_SIDE and shown.width % image.width == 0
    with pytest.raises(RequestError, match="steps"):
        engine.compare(model, [], "a cat", "0", steps=0)


def test_save_load_stack_and_remove(model, tmp_path):
    first = engine.push([], _fit(model, "cat"), "fitted")
    stack = engine.push(first, _fit(model, "dog"), "fitted")
    assert [e.edit.manifest.targets for e in stack] == [["cat"], ["dog"]]
    table = engine.stack_table(stack)
    assert "| 1 |" in table and "| 2 |" in table and "dog" in table and "| defaults |" in table
    replaced = engine.fit_erase(model, "negative-prompt", {"mode": "replace"}, "cow")
    assert "| mode=replace |" in engine.stack_table(engine.push([], replaced, "fitted"))
    saved = engine.save_entry(stack, stack[0].id, str(tmp_path / "no-cat"))
    assert (saved / "manifest.json").is_file() and "no-cat" in engine.stack_table(stack)
    engine.save_entry(stack, stack[0].id, str(tmp_path / "no-cat"))  # an artifact folder may be replaced
    loaded = engine.load_entry(model, str(saved))
    stack = engine.push(stack, loaded, f"loaded from {saved}")
    assert [label for label, _ in engine.stack_choices(stack)][-1].endswith("negative-prompt: cat")
    stack = engine.remove(stack, str(stack[1].id))  # remove from the middle
    assert [e.edit.manifest.targets for e in stack] == [["cat"], ["cat"]]
    result = engine.compare(model, stack, "a cat", "0")
    assert len(result.edited) == 1 and applied_edits(model.pipe) == []
    with pytest.raises(ConceptEditError, match="not in the stack"):
        engine.remove(stack, "999999")
    with pytest.raises(ConceptEditError, match="choose an edit"):
        engine.save_entry(stack, None, str(tmp_path / "x"))


def test_save_refuses_to_replace_a_folder_that_is_not_an_edit(model, tmp_path):
    stack = engine.push([], _fit(model), "fitted")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(ArtifactError, match="not an edit artifact"):
        engine.save_entry(stack, stack[0].id, str(precious))
    assert (precious / "thesis.txt").read_text() == "do not delete"
    with pytest.raises(ConceptEditError, match="give a folder"):
        engine.save_entry(stack, stack[0].id, "  ")


def test_load_errors_are_clear(model, tmp_path, other_tiny_model_dir):
    with pytest.raises(ArtifactError, match="does not exist"):
        engine.load_entry(model, str(tmp_path / "missing"))
    with pytest.raises(ArtifactError, match="not an edit artifact"):
        engine.load_entry(model, str(tmp_path))
    other = engine.DemoModel.load(str(other_tiny_model_dir), device="cpu")
    stack = engine.push([], _fit(other), "fitted")
    folder = engine.save_entry(stack, stack[0].id, str(tmp_path / "other"))
    with pytest.raises(ModelMismatchError, match="made for base model"):
        engine.load_entry(model, str(folder))


def test_user_errors_are_concept_edit_errors(model):
    with pytest.raises(RequestError, match="no target concept"):
        engine.fit_erase(model, "negative-prompt", {}, " , ")
    with pytest.raises(RequestError, match="both targets and preserved"):
        engine.fit_erase(model, "negative-prompt", {}, "cat", "cat")
    with pytest.raises(ConfigError, match="mode"):
        engine.fit_erase(model, "negative-prompt", {"mode": "sideways"}, "cat")
    with pytest.raises(ConceptEditError, match="unknown plugin"):
        engine.fit_erase(model, "no-such-method", {}, "cat")
    with pytest.raises(RequestError, match="no prompts"):
        engine.compare(model, [], "\n \n")
    with pytest.raises(RequestError, match="seeds"):
        engine.compare(model, [], "a cat", "one, two")
    with pytest.raises(RequestError, match="not found"):
        engine.fit_erase(model, "negative-prompt", {}, "cat", images=["/nonexistent/cat.png"])
    sd3 = type("StableDiffusion3Pipeline", (), {"unet": None})()  # negative-prompt supports SDXL, not SD3
    with pytest.raises(UnsupportedModelError, match="sd3"):
        engine.fit_erase(engine.DemoModel(sd3), "negative-prompt", {}, "cat")


def test_ui_turns_errors_into_messages_and_keeps_running(fake_plugins, model):
    from conceptedit.demo.ui import run_action as _run

    with pytest.warns(UserWarning, match="no target concept"):
        result, message = _run("fit", engine.fit_erase, model, "negative-prompt", {}, "")
    assert result is None and message.startswith("no target concept")
    with pytest.warns(UserWarning, match="diverged"):
        result, message = _run("fit", engine.fit_erase, model, "fake-crash", {}, "cat")
    assert message == "fit failed: RuntimeError: the optimiser diverged"
    value, message = _run("fit", _fit, model)
    assert message is None and value.manifest.plugin == "negative-prompt"


def test_text_inputs_and_default_prompts():
    assert engine.parse_concepts("van gogh, zorblax\n monet ") == ["van gogh", "zorblax", "monet"]
    assert engine.parse_seeds("0, 1 2") == [0, 1, 2] and engine.parse_seeds("") == [0] and engine.parse_seeds(5) == [5]
    assert engine.parse_prompts("a  cat\n\n a dog ") == ["a cat", "a dog"]
    with pytest.raises(RequestError, match="at most"):
        engine.parse_prompts("\n".join(f"p{i}" for i in range(20)))
    prompts = engine.default_prompts("zorblax", "quimbo")
    assert prompts == ["a picture of zorblax", "a drawing of zorblax", "a picture of quimbo"]
    assert engine.default_prompts("") == []


# -- registry-driven UI: plugin listing, broken plugins, inspect/edit/analyze tabs -----------------
def test_plugin_listing_shows_broken_plugins_disabled(fake_plugins):
    choices = dict((value, label) for label, value in engine.plugin_choices("erase", include_broken=True))
    assert "negative-prompt" in choices and "fake-crash" in choices
    assert "broken" in choices["fake_broken"] and not engine.usable("fake_broken")
    assert "missing_dep" in engine.describe_plugin("fake_broken")
    assert "Safe Latent Diffusion" in engine.describe_plugin("negative-prompt")
    assert [v for _, v in engine.plugin_choices("edit")] == ["colan", "fake-image-edit"]  # sorted by name
    assert [v for _, v in engine.plugin_choices("analyze")] == ["blindspots", "fake-analysis"]


def test_inspect_without_and_with_inspectable_edits(model):
    stack = engine.push([], _fit(model), "fitted")
    result = engine.inspect_stack(model, stack, "a cat")
    assert not result.decisions and "None of the edits" in result.message
    assert "empty" in engine.inspect_stack(model, [], "a cat").message
    edit = _fit(model)
    special = ClassifyingEdit(edit.manifest)
    stack = engine.push(stack, special, "fitted")
    result = engine.inspect_stack(model, stack, "a cat\na much longer prompt", top_n=3)
    assert [(d["prompt"], d["fired"]) for d in result.decisions] == [("a cat", "no"), ("a much longer prompt", "yes")]
    assert result.decisions[1]["score"] == 20.0 and result.decisions[1]["threshold"] == 10.0
    assert len(result.features) == 6 and result.features[0]["label"] == "f0" and result.features[2]["rank"] == 3
    assert "1 of 2" in result.message and applied_edits(model.pipe) == []


def test_edit_tab_logic(fake_plugins, model):
    given = Image.new("RGB", (16, 16), (10, 20, 30))
    source, outputs = engine.edit_image(model, "fake-image-edit", {"strength": 1.0}, given, "a cat", "a dog")
    assert source.size == (16, 16) and np.asarray(outputs[0])[0, 0].tolist() == [245, 235, 225]
    source, outputs = engine.edit_image(model, "fake-image-edit", {}, None, "a cat", "a dog", seed=3)
    assert source.size == (16, 16) and len(outputs) == 1  # generated from the source prompt
    with pytest.raises(RequestError, match="target prompt"):
        engine.edit_image(model, "fake-image-edit", {}, given, "a cat", " ")
    with pytest.raises(ConfigError, match="strength"):
        engine.edit_image(model, "fake-image-edit", {"strength": "lots"}, given, "a cat", "a dog")


def test_analyze_tab_logic(fake_plugins, model, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "figure.png")
    stack = engine.push([], _fit(model), "fitted")
    report = engine.analyze(model, stack, "fake-analysis", {"rows": 3}, "cat", with_stack=True)
    assert report.summary.startswith("1 edit(s)") and applied_edits(model.pipe) == []
    text = engine.report_markdown(report)
    assert "### Leaks of cat" in text and "| prompt | score |" in text and "| p2 | 1 |" in text
    assert engine.report_figures(report) == []  # the figure path does not exist
    report.figures = {"a figure": tmp_path / "figure.png"}
    assert engine.report_figures(report) == [(str(tmp_path / "figure.png"), "a figure")]
    assert engine.analyze(model, stack, "fake-analysis", {}, "cat", with_stack=False).summary.startswith("0 edit")


def test_app_tabs_follow_the_registry(fake_plugins, model):
    import gradio as gr

    from conceptedit.demo.ui import build_app

    def tab_labels(demo):
        return [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]

    demo = build_app(model)
    assert tab_labels(demo) == ["Compare", "Erase", "Inspect", "Edit an image", "Analyze"]
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"edit-fake-image-edit-strength", "analyze-fake-analysis-rows", "erase-negative-prompt-mode"} <= ids
    # Everything that runs the model shares one queue slot (default concurrency limit 1).
    heavy = {fn.api_name: fn for fn in demo.fns.values() if fn.concurrency_id == "model"}
    assert {"fit", "compare", "compare_methods", "save", "load", "edit_image", "analyze"} <= set(heavy)
    assert all(fn.concurrency_limit == "default" for fn in heavy.values())
    assert demo._queue.default_concurrency_limit == 1


def test_edit_and_analyze_tabs_appear_only_with_such_plugins(model):
    import gradio as gr

    from conceptedit.demo.ui import build_app

    demo = build_app(model)
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    expected = ["Compare", "Erase", "Inspect"]
    expected += ["Edit an image"] if engine.plugins_of("edit") else []
    expected += ["Analyze"] if engine.plugins_of("analyze") else []
    assert labels == expected


# -- entry points ------------------------------------------------------------------------------------
def test_app_py_and_cli_have_help():
    out = subprocess.run([sys.executable, str(ROOT / "app.py"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--model" in out.stdout and "--port" in out.stdout and "--host" in out.stdout
    from typer.testing import CliRunner

    from conceptedit.cli import _attach_subcommands, app

    _attach_subcommands()
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "--model" in result.output and "--port" in result.output


def test_app_py_reports_a_bad_model_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--model", str(tmp_path / "nope.safetensors")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: model path")
