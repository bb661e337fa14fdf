"""report.html judges edits: the verdict table comes first, an unchanged erased-concept rate is
coloured as a failure, every rate carries n and a Wilson interval, the plot has a chance line and
the grids (all edits on the same prompts; base vs edited) carry column labels."""

from __future__ import annotations

import re
from types import SimpleNamespace

from PIL import Image

from conceptedit.eval.report import compare_grid, write_report
from conceptedit.eval.store import ImageRow

ROLES = [
    ("target", "a picture of zorblax", {"character": "zorblax"}),
    ("target", "zorblax on a card", {"character": "zorblax"}),
    ("target_paraphrase", "an image of zorblax", {"character": "zorblax"}),
    ("in_domain", "a picture of quimbo", {"character": "quimbo"}),
    ("in_domain", "a picture of fizzle", {"character": "fizzle"}),
    ("cross_domain", "a red square", {"shape": "square"}),
]


def _rows(tmp_path, edits):
    rows = []
    for edit in ["base", *edits]:
        for case, (role, prompt, labels) in enumerate(ROLES):
            path = tmp_path / f"{edit}_{case}.png"
            Image.new("RGB", (8, 8), (40 * case, 100 if edit == "base" else 200, 0)).save(path)
            rows.append(
                ImageRow("m", edit, "erasure", case, 0, prompt, role, "character:zorblax", labels, "", str(path), {})
            )
    return rows


def _metrics(erased, paraphrase, in_domain, cross):
    def m(value, n, better):
        return {"value": value, "details": {"n": n}, "higher_is_better": better, "unavailable": None}

    return {
        "probe.erased_accuracy": m(erased, 2, False),
        "probe.erased_accuracy_paraphrase": m(paraphrase, 1, False),
        "probe.in_domain_retain": m(in_domain, 2, True),
        "probe.cross_domain_retain": m(cross, 1, True),
    }


def test_report_puts_verdicts_first_and_colours_no_change_as_failure(tmp_path):
    edits = ["keeps-it", "erases-it"]
    results = {
        "name": "t",
        "n_images": 18,
        "unavailable": {},
        "groups": [
            {"model": "m", "edit": "base", "prompt_set": "erasure", "metrics": _metrics(1.0, 1.0, 1.0, 1.0)},
            {"model": "m", "edit": "keeps-it", "prompt_set": "erasure", "metrics": _metrics(1.0, 1.0, 1.0, 1.0)},
            {"model": "m", "edit": "erases-it", "prompt_set": "erasure", "metrics": _metrics(0.0, 0.0, 1.0, 1.0)},
        ],
    }
    cfg = SimpleNamespace(name="t", models=["m"], grid_cases=4)
    report = write_report(tmp_path, cfg, results, _rows(tmp_path, edits)).read_text()
    assert report.index("<h2>Verdicts") < report.index("<h2>Edited vs base")
    verdicts = re.findall(r"<td>(keeps-it|erases-it)</td><td>erasure</td><td class='v-(\w+)'>", report)
    assert verdicts == [("keeps-it", "failed"), ("erases-it", "erased")]
    # chance: zorblax and its two in-domain neighbours -> 1/3
    assert "<td>0.333</td>" in report
    # the unchanged erased-concept rate (1.0 -> 1.0) is red, the erased one green, the retained one green
    row = re.search(
        r"<tr class='(\w*)'><td>m</td><td>keeps-it</td><td>erasure</td><td>probe.erased_accuracy</td>", report
    )
    assert row and row.group(1) == "bad"
    row = re.search(
        r"<tr class='(\w*)'><td>m</td><td>erases-it</td><td>erasure</td><td>probe.erased_accuracy</td>", report
    )
    assert row and row.group(1) == "good"
    # every rate with its interval and n
    assert "1.00 [0.34, 1.00] n=2" in report and "0.00 [0.00, 0.66] n=2" in report
    assert "dashed: chance" in report and (tmp_path / "probe.png").is_file()
    assert "compare_m_erasure.png" in report and (tmp_path / "compare_m_erasure.png").is_file()


def test_compare_grid_has_a_column_per_edit_on_the_same_cases(tmp_path):
    rows = _rows(tmp_path, ["a", "b"])
    path = compare_grid(rows, "m", "erasure", tmp_path / "g.png", count=4)
    with Image.open(path) as grid:
        assert grid.width >= 3 * 160 and grid.height >= 4 * 160  # base + two edits, four cases, large thumbnails
        # the header row holds the column labels (dark text pixels on white)
        header = grid.crop((0, 0, grid.width, 18)).convert("L")
        assert header.getextrema()[0] < 128
    assert compare_grid(rows, "m", "other", tmp_path / "none.png", count=4) is None
