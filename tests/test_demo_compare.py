# ruff: noqa: F811  (pytest fixtures imported from test_demo)
"""The Compare tab's engine on a tiny pipeline: fits are cached, a failing fit shows its error while
the other methods go on, every column uses the same prompts and seeds, and the exports (PNG, CSV,
JSON) hold the table. A fake label judge (a colour classifier) stands in for a world's probe."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from test_demo import fake_plugins, model  # noqa: F401  (fixtures)

from conceptedit.demo import engine
from conceptedit.errors import ConceptEditError
from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.verdicts import Rate

FAST = {"steps": 2, "guidance": 3.0}


class FakeJudge(engine.LabelJudge):
    """Rows of every role; "detects" the target when an image's mean red exceeds a threshold taken
    from the original model's images, so the original shows it and an edit that changes images may not."""

    def __init__(self, threshold: float | None = None) -> None:
        super().__init__("fake-set", "fake-metric", per_role=2)
        self.threshold = threshold
        self.scored: list[tuple[str, list[int]]] = []

    def rows(self, targets: list[str]) -> list[PromptRow]:
        roles = ["target", "target", "target_paraphrase", "target_paraphrase", "in_domain", "cross_domain"]
        return [
            PromptRow(f"{role} {i} {targets[0]}", 100 + i, i, role, f"thing:{targets[0]}", {"thing": targets[0]})
            for i, role in enumerate(roles)
        ]

    def unavailable(self):
        return None

    def score(self, rows, images, label):
        self.scored.append((label, [r.evaluation_seed for r in rows]))
        red = [float(np.asarray(im)[..., 0].mean()) for im in images]
        if self.threshold is None:
            self.threshold = min(red) - 1e-6  # the original shows the target everywhere
        hits = [v >= self.threshold for v in red]
        rates = {}
        for role, bucket in engine.scoring.BUCKET_OF_ROLE.items():
            mine = [h for h, r in zip(hits, rows, strict=True) if r.role == role]
            if role in ("in_domain", "cross_domain"):
                rates[bucket] = Rate(len(mine), len(mine))  # retained perfectly
            else:
                rates[bucket] = Rate(sum(mine), len(mine))
        return engine.Score(rates=rates)


def _run(model, cache, methods, judge=None, **kwargs):
    judge = judge if judge is not None else FakeJudge()
    args = {"prompts": "a red cat\na blue dog", "seeds": "0, 1", **FAST, **kwargs}
    return engine.compare_methods(model, cache, "cat", methods, preserve="dog", judge=judge, **args)


def test_columns_share_prompts_and_seeds_and_match_plain_generation(model):
    from conceptedit.generation import generate

    cache = engine.CompareCache()
    judge = FakeJudge()
    result = _run(model, cache, ["negative-prompt", "uce"], judge=judge)
    assert [c.label for c in result.columns] == ["original", "negative-prompt", "uce"]
    assert all(c.ok and len(c.images) == 4 for c in result.columns)
    prompts, seeds = ["a red cat"] * 2 + ["a blue dog"] * 2, [0, 1, 0, 1]
    settings = result.settings
    plain = generate(model.pipe, prompts, seeds, **settings)
    for got, want in zip(result.original.images, plain, strict=True):
        assert np.array_equal(np.asarray(got), np.asarray(want))
    for column in result.methods:
        with column.edit.apply(model.pipe):
            want = generate(model.pipe, prompts, seeds, **settings)
        assert all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(column.images, want, strict=True))
        assert not np.array_equal(np.asarray(column.images[0]), np.asarray(result.original.images[0]))
    # every column was scored on the same rows and seeds
    assert len({tuple(seeds) for _, seeds in judge.scored}) == 1 and len(judge.scored) == 3
    from conceptedit.edits import applied_edits

    assert applied_edits(model.pipe) == []


def test_fits_and_images_are_cached(model, monkeypatch):
    cache = engine.CompareCache()
    first = _run(model, cache, ["negative-prompt"])
    assert cache.fits == 1 and not first.methods[0].cached
    calls = []
    real = engine.comparison._generate
    monkeypatch.setattr(engine.comparison, "_generate", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    # adding a method fits and generates only the new column
    more = _run(model, cache, ["negative-prompt", "uce"])
    assert cache.fits == 2 and [c.cached for c in more.methods] == [True, False]
    assert len(calls) == 2 and all(len(c) for c in calls)  # uce's grid and its scored rows, nothing else
    again = _run(model, cache, ["negative-prompt", "uce"])
    assert cache.fits == 2 and all(c.cached for c in again.methods) and len(calls) == 2
    assert again.methods[1].fit_seconds == more.methods[1].fit_seconds > 0  # the table keeps the real fit time
    assert engine.table_rows(again)[2]["status"] == "fitted (cached)"
    for a, b in zip(more.columns, again.columns, strict=True):
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images, strict=True))
    assert all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(first.original.images, again.original.images, strict=True)
    )


def test_a_failing_fit_shows_its_error_and_the_others_go_on(fake_plugins, model):  # noqa: F811
    cache = engine.CompareCache()
    result = _run(model, cache, ["fake-crash", "negative-prompt", "no-such-plugin"])
    crash, good, unknown = result.methods
    assert "the optimiser diverged" in crash.error and crash.images == [] and crash.verdict is None
    assert "no-such-plugin" in unknown.error
    assert good.ok and len(good.images) == 4 and good.verdict is not None
    rows = engine.table_rows(result)
    assert rows[1]["status"].startswith("error: RuntimeError: the optimiser diverged")
    assert rows[2]["status"] == "fitted"
    grid = engine.grid_image(result)
    assert grid.width == engine.comparison_export.LABEL_WIDTH + 2 * (engine.comparison_export.GRID_CELL + 4)


def test_exports_hold_the_table_and_the_grid(model, tmp_path):
    cache = engine.CompareCache()
    result = _run(model, cache, ["negative-prompt", "uce"])
    paths = engine.export(result, tmp_path / "out")
    assert [p.name for p in paths] == ["compare.png", "compare.csv", "compare.json"]
    with Image.open(paths[0]) as grid:
        assert grid.size == engine.grid_image(result).size
        assert grid.height >= 4 * engine.comparison_export.GRID_CELL
    table = list(csv.DictReader(io.StringIO(paths[1].read_text())))
    assert [r["method"] for r in table] == ["original", "negative-prompt", "uce"]
    assert table[0]["status"] == "original" and table[0]["verdict"] == ""
    assert "n=2" in table[1]["erased (target)"] and "[" in table[1]["erased (target)"]
    assert table[1]["verdict"] in {"erased", "partial", "failed", "damaging"}
    data = json.loads(paths[2].read_text())
    assert data["targets"] == ["cat"] and data["preserve"] == ["dog"] and data["seeds"] == [0, 1]
    assert data["chance"] == pytest.approx(0.5)  # one member of the family: a detector
    assert [c["method"] for c in data["columns"]] == ["original", "negative-prompt", "uce"]
    target = data["columns"][0]["scores"]["erased_accuracy"]
    assert target["n"] == 2 and target["value"] == 1.0 and 0 <= target["ci_low"] <= target["ci_high"] <= 1
    assert data["columns"][1]["verdict"]["word"] == table[1]["verdict"]
    assert data["columns"][2]["config"] is not None and len(data["score_prompts"]) == 6
    assert "**erased**" in engine.table_markdown(result) and "chance level 0.50" in engine.table_markdown(result)


def test_bad_input_is_a_one_line_error(model):
    cache = engine.CompareCache()
    with pytest.raises(ConceptEditError, match="concept"):
        engine.compare_methods(model, cache, "", ["uce"], judge=FakeJudge())
    with pytest.raises(ConceptEditError, match="at least one method"):
        engine.compare_methods(model, cache, "cat", [], judge=FakeJudge())
    with pytest.raises(ConceptEditError, match="at most"):
        engine.parse_methods([f"m{i}" for i in range(engine.comparison.MAX_METHODS + 1)])


def test_model_without_a_world_is_judged_by_clip_and_says_so(model):
    judge = engine.judge_for(model)
    assert isinstance(judge, engine.ClipJudge)
    result = engine.compare_methods(model, engine.CompareCache(), "cat", ["negative-prompt"], prompts="a cat", **FAST)
    assert len(result.methods[0].images) == 1
    if judge.unavailable():  # no CLIP shipped or cached: nothing is generated for scoring, the table says why
        assert result.unscored and result.score_rows == [] and result.methods[0].verdict is None
        assert "Not scored" in engine.table_markdown(result)
    else:
        assert result.score_rows and result.methods[0].verdict is not None
    example = engine.first_example(model)
    assert example.methods == ("uce", "negative-prompt") and example.targets == ""


def test_the_shapes_model_is_judged_by_its_probe_on_its_prompt_set():
    """The built-in model names its world: the judge is that world's prompt set and probe. Scored
    here on drawn images (no generation): the world's own zorblax everywhere shows the concept,
    blank images do not — so the rates, the chance level and the verdict work end to end."""
    from conceptedit.datasets.shapes import render

    shapes = engine.DemoModel(object(), "shapes")
    judge = engine.judge_for(shapes)
    assert isinstance(judge, engine.LabelJudge) and judge.unavailable() is None
    rows = judge.rows(["zorblax"])
    assert {r.role for r in rows} == {"target", "target_paraphrase", "in_domain", "cross_domain"}
    drawn = [s.pil() for s in render(600, seed=0) if s.labels["character"] == "zorblax"]
    assert drawn, "the world draws zorblax"
    shown = [drawn[i % len(drawn)] for i in range(len(rows))]
    blank = [Image.new("RGB", shown[0].size, "white") for _ in rows]
    base, edited = judge.score(rows, shown, "original"), judge.score(rows, blank, "blank")
    per_role = engine.scoring.DEMO_PER_ROLE
    assert base.rates["erased_accuracy"].n == per_role and base.rates["erased_accuracy"].value >= 0.75
    assert edited.rates["erased_accuracy"].value <= 0.25
    chance = judge.chance(rows)
    assert 0.1 <= chance <= 0.34  # one of the world's few characters
    assert judge.verdict(base, edited, chance).word == "erased"
    assert judge.verdict(base, base, chance).word == "failed"
    example = engine.first_example(shapes)
    assert example.targets == "zorblax" and "zorblax" in example.prompts


def test_the_page_opens_on_compare_with_the_fast_methods_preselected(model):
    pytest.importorskip("gradio")
    from conceptedit.demo.ui import build_app

    demo = build_app(model)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert by_id["cmp-methods"].value == ["uce", "negative-prompt"]
    assert by_id["erase-plugin"].value == "uce"  # the Erase tab too starts on the fast method
    assert by_id["cmp-seeds"].value == "0"


def test_a_model_that_ships_a_clip_is_scored_by_clip_score_and_never_called_erased(tmp_path_factory, tiny_model_dir):
    import shutil

    from test_eval_clip_metrics import save_tiny_clip

    from conceptedit.loading import load_pipeline

    folder = tmp_path_factory.mktemp("with_clip") / "model"
    shutil.copytree(tiny_model_dir, folder)
    save_tiny_clip(folder / "clip")
    settings = json.loads((folder / "conceptedit.json").read_text())
    (folder / "conceptedit.json").write_text(json.dumps({**settings, "files": {"clip": "clip"}}))
    clip_model = engine.DemoModel(load_pipeline(str(folder), device="cpu"), str(folder))
    result = engine.compare_methods(
        clip_model, engine.CompareCache(), "cat", ["negative-prompt"], preserve="dog", prompts="a cat", **FAST
    )
    assert isinstance(result.judge, engine.ClipJudge) and not result.unscored
    base = result.original.score.means
    assert set(base) == {"target", "target_paraphrase", "in_domain", "cross_domain"} and base["target"][3] == 2
    assert all(0 <= m <= 100 and lo <= m <= hi for m, lo, hi, _ in base.values())
    assert result.methods[0].verdict.word in {"partial", "failed", "damaging"}
    record = engine.table_json(result)["columns"][1]["scores"]
    assert record["clip_target"]["n"] == 2 and "CLIP" in engine.table_markdown(result)
