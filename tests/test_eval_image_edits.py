"""``conceptedit eval``'s ``image_edits:`` section: config errors, the metrics on known edits, a tiny run."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from conceptedit.errors import ConfigError
from conceptedit.eval import image_edits
from conceptedit.eval.config import ImageEditSpec, parse_config
from conceptedit.plugin import ImageEditPlugin


def _cfg(entry: dict, **top) -> dict:
    return {"name": "ie", "models": ["shapes"], "image_edits": [entry], **top}


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "a", "plugin": "nope"}, "unknown plugin|nope"),
        ({"name": "a", "plugin": "uce"}, "kind 'erase', not an image edit"),
        ({"name": "a", "plugin": "colan", "baselines": ["swapp"]}, r"unknown baseline.*swapp.*'swap', 'direction'"),
        ({"name": "a", "plugin": "colan", "families": ["shpe"]}, r"unknown famil.*shpe.*case set 'shapes'"),
        ({"name": "a", "plugin": "colan", "cases": "cifar"}, "unknown image-edit case set .cifar.; registered: shapes"),
        ({"name": "a", "plugin": "colan", "instruction": "say"}, "instruction must be one of edit, target_prompt"),
        ({"name": "a", "plugin": "colan", "n": 0}, "n"),
        ({"name": "a", "plugin": "colan", "config": {"guidance": -1}}, "guidance must be >= 0"),
        ({"name": "a", "plugin": "colan", "sedd": 1}, "unknown config key.*sedd"),
        ({"plugin": "colan"}, "name"),
    ],
)
def test_image_edit_config_errors_are_one_line(entry, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_config(_cfg(entry))
    assert "\n" not in str(err.value) and "image_edits[0]" in str(err.value)


def test_a_config_needs_prompt_sets_or_image_edits():
    with pytest.raises(ConfigError, match="image_edits"):
        parse_config({"name": "ie", "models": ["shapes"]})
    cfg = parse_config(_cfg({"name": "a", "plugin": "colan", "baselines": ["swap"], "n": 2}))
    assert cfg.image_edits == [ImageEditSpec("a", "colan", baselines=["swap"], n=2)] and not cfg.prompt_sets
    with pytest.raises(ConfigError, match="image edit names must be unique"):
        parse_config({**_cfg({"name": "a", "plugin": "colan"}), "image_edits": [{"name": "a", "plugin": "colan"}] * 2})


@dataclass
class _NoConfig:
    pass


class _Identity(ImageEditPlugin):
    """Returns the source image: no edit at all (no colan backbone)."""

    name = "test-identity"
    Config = _NoConfig

    def edit_image(self, pipe, image, source_prompt, target_prompt, *, seed=0, progress=None):
        self.instructions = [*getattr(self, "instructions", []), target_prompt]
        return {"image": image}


class _Oracle(_Identity):
    """Returns the render of the target labels (same drawing stream): a perfect edit."""

    name = "test-oracle"
    cases: dict = {}

    def edit_image(self, pipe, image, source_prompt, target_prompt, *, seed=0, progress=None):
        from conceptedit.datasets.shapes import render_labels
        from conceptedit.pipelines.shapes import model_images

        c = self.cases[source_prompt]
        return {"image": model_images(render_labels(c.target_labels, c.extra["seed"], c.extra["index"])[None])[0]}


@pytest.fixture
def fake_plugins(monkeypatch):
    import conceptedit.registry as registry

    real = registry.get_plugin
    fakes = {"test-identity": _Identity, "test-oracle": _Oracle}
    monkeypatch.setattr(registry, "get_plugin", lambda name: fakes[name] if name in fakes else real(name))


def test_no_edit_and_a_perfect_edit_score_as_they_should(fake_plugins):
    """The metrics on two known answers (no diffusion): the identity edits nothing but keeps everything;
    the oracle (the rendered target) succeeds, keeps the other families and the background."""
    from conceptedit.datasets.shapes.edit_cases import make_cases

    spec = ImageEditSpec("a", "test-identity", n=12, seed=5)
    none = image_edits.evaluate_spec(None, spec)["arms"]["plugin"]["all"]
    n = none["success"]["n"]
    assert n >= 8 and none["success"]["k"] == 0 and none["consistent"]["k"] == n
    assert none["psnr_bg"]["mean"] > 100 and none["clip_tok_bg"]["mean"] == pytest.approx(0, abs=1e-6)
    res = image_edits.evaluate_spec(None, spec)["arms"]["plugin"]
    assert res["colour"]["iou"]["mean"] > 0.8  # the unchanged shape's silhouette on its own background
    _Oracle.cases = {c.prompt: c for c in make_cases(12, 5)}
    res = image_edits.evaluate_spec(None, ImageEditSpec("b", "test-oracle", n=12, seed=5))
    perfect = res["arms"]["plugin"]
    assert perfect["all"]["success"]["k"] >= 0.75 * n and perfect["all"]["consistent"]["k"] >= 0.75 * n
    assert perfect["shape"]["psnr_bg"]["mean"] > 30 and perfect["colour"]["psnr_bg"]["mean"] > 30
    assert perfect["colour"]["iou"]["mean"] > 0.8
    assert set(res["arms"]) == {"plugin"} and "edit_s" in res["timing"]


def test_instruction_and_baselines_need_the_backbone(fake_plugins):
    with pytest.raises(ConfigError, match="need a plugin with colan's backbone.*test-identity"):
        parse_config(_cfg({"name": "a", "plugin": "test-identity", "baselines": ["swap"]}))
    plugin = _Identity()
    case = type(
        "C", (), {"image": np.zeros((2, 2, 3), np.uint8), "prompt": "p", "edit": "a -> b", "target_prompt": "t"}
    )
    for instruction, expected in (("edit", "a -> b"), ("target_prompt", "t")):
        image_edits.run_one_by_one(None, plugin, [case], instruction)
        assert plugin.instructions[-1] == expected


def test_eval_runs_image_edits_end_to_end(tmp_path, monkeypatch):
    """A tiny run on the shapes model: three arms scored, report and CLI lines, and the second run is
    served from the cache."""
    from typer.testing import CliRunner

    from conceptedit.cli import _attach_subcommands, app
    from conceptedit.eval.runner import evaluate

    entry = {"name": "colan-tiny", "plugin": "colan", "config": {"steps": 3}, "n": 4, "seed": 3,
             "families": ["colour", "background"], "baselines": ["swap", "direction"]}  # fmt: skip
    cfg = parse_config(_cfg(entry, output=str(tmp_path / "out")))
    results = evaluate(cfg, progress=False)
    (run,) = results["image_edits"]
    assert set(run["arms"]) == {"plugin", "swap", "direction"} and run["model"] == "shapes"
    for arm in run["arms"].values():
        rates = arm["all"]
        assert rates["success"]["n"] == run["n"] >= 2 and 0 <= rates["both"]["k"] <= rates["success"]["k"]
        assert arm["colour"]["success"]["n"] + arm["background"]["success"]["n"] == run["n"]
        assert arm["all"]["iou"]["n"] == run["n"] and arm["background"]["psnr_bg"]["n"] == 0
    assert run["source_weight"]["median"] > 0 and run["timing"]["decomposition_s"]["n"] == run["n"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["image_edits"][0]["n"] == run["n"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Image edits</h2>" in report and f"<img src='{run['grid']}'>" in report
    from PIL import Image

    with Image.open(tmp_path / "out" / run["grid"]) as grid:  # source + 3 arms, 3 cases at most per family
        assert grid.size[0] == 150 + 96 * 4 and grid.size[1] >= 16 + 96 * 2

    def boom(*a, **k):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(image_edits, "evaluate_spec", boom)
    _attach_subcommands()
    (tmp_path / "c.yaml").write_text(json.dumps(_cfg(entry, output=str(tmp_path / "out"))))
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    assert "== colan-tiny (colan, shapes" in result.output and "direction success" in result.output
