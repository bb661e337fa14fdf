"""Work accounting of the batch evaluation: a resumed run generates and scores only the rows that are not
finished, and processes of a distributed run split the rows between them (disjoint and complete).

Results alone cannot show either: redoing a finished row, or every process doing every row, gives the same
tables (the store keeps the first copy of a row), only more work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_eval import write_config

import conceptedit.generation as generation
from conceptedit.eval import runner
from conceptedit.eval.config import load_config
from conceptedit.eval.metrics import PixelDistance
from conceptedit.eval.runner import evaluate
from conceptedit.eval.store import ResultStore

ALL_ROWS = 12  # (base + 1 edit) x 3 prompts x 2 seeds


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Records the prompts every generate() call makes and the rows every score_images() call scores."""
    calls: dict[str, list] = {"generated": [], "scored": []}
    real_generate, real_score = generation.generate, PixelDistance.score_images

    def generate(pipe, prompts, seeds=0, **kwargs):
        calls["generated"] += list(
            zip(prompts, seeds if not isinstance(seeds, int) else [seeds] * len(prompts), strict=True)
        )
        return real_generate(pipe, prompts, seeds, **kwargs)

    def score_images(self, rows, images):
        calls["scored"] += [r.key for r in rows]
        return real_score(self, rows, images)

    monkeypatch.setattr(generation, "generate", generate)
    monkeypatch.setattr(PixelDistance, "score_images", score_images)
    return calls


def stored_rows(output: Path) -> list:
    store = ResultStore(output / "results.sqlite")
    try:
        return list(store.rows())
    finally:
        store.close()


def row_keys(output: Path) -> list[tuple]:
    return [r.key for r in stored_rows(output)]


def test_resume_generates_and_scores_only_unfinished_rows(tmp_path, tiny_model_dir, counted):
    path = write_config(tmp_path, tiny_model_dir, "r")
    first = evaluate(path, progress=False)
    assert first["n_images"] == ALL_ROWS and len(counted["scored"]) == ALL_ROWS
    rows = stored_rows(tmp_path / "r")
    keys = [r.key for r in rows]

    # everything finished: a rerun does no work at all, and gives the same results
    counted["generated"].clear(), counted["scored"].clear()
    again = evaluate(path, progress=False)
    assert counted["generated"] == [] and counted["scored"] == []
    assert [g["metrics"] for g in again["groups"]] == [g["metrics"] for g in first["groups"]]

    # three rows lost (as after a crash), with their cached images: exactly those three are redone
    lost = [keys[1], keys[6], keys[11]]
    for i in (1, 6, 11):
        Path(rows[i].image_path).unlink()
    with sqlite3.connect(tmp_path / "r" / "results.sqlite") as conn:
        conn.executemany(
            "DELETE FROM images WHERE model=? AND edit=? AND prompt_set=? AND case_number=? AND seed=?", lost
        )
    resumed = evaluate(path, progress=False)
    assert sorted(counted["scored"]) == sorted(lost)
    assert len(counted["generated"]) == len(lost)
    assert sorted(row_keys(tmp_path / "r")) == sorted(keys)
    assert [g["metrics"] for g in resumed["groups"]] == [g["metrics"] for g in first["groups"]]


class _FakeProcesses:
    """Stands in for accelerate's process state: process ``index`` of ``count``; waiting is a no-op because
    the test runs the processes one after the other."""

    index = 0
    count = 2

    def __init__(self) -> None:
        self.index, self.count = type(self).index, type(self).count

    @property
    def is_main(self) -> bool:
        return self.index == 0

    device = None

    def wait(self) -> None:
        return None


def test_processes_split_the_rows_disjoint_and_complete(tmp_path, tiny_model_dir, monkeypatch, counted):
    """Each of two processes starts from the same empty store (as they do when launched together) and
    writes what it did to its own store here, so the row sets can be compared."""
    monkeypatch.setattr(runner, "_Distributed", _FakeProcesses)
    path = write_config(tmp_path, tiny_model_dir, "p")
    done: list[list[tuple]] = []
    for index in range(2):
        cfg = load_config(path)
        cfg.output = str(tmp_path / f"process-{index}")  # same cache: process 0 fits the edit for both
        monkeypatch.setattr(_FakeProcesses, "index", index)
        counted["scored"].clear()
        evaluate(cfg, progress=False)
        done.append(row_keys(tmp_path / f"process-{index}"))
        assert sorted(counted["scored"]) == sorted(done[-1])  # scored exactly what it stored
    first, second = set(done[0]), set(done[1])
    assert first and second and not first & second, "both processes did the same rows"
    monkeypatch.setattr(_FakeProcesses, "index", 0)
    monkeypatch.setattr(_FakeProcesses, "count", 1)  # one process does everything
    reference = evaluate(write_config(tmp_path, tiny_model_dir, "one"), progress=False)
    assert reference["n_images"] == ALL_ROWS
    assert first | second == set(row_keys(tmp_path / "one")), "rows missing from the split"
