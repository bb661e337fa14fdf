"""Batch evaluation: config validation, determinism, resume after SIGKILL, cache reuse, 2 processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conceptedit.errors import ConfigError
from conceptedit.eval.config import load_config, parse_config
from conceptedit.eval.runner import evaluate

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_config(tmp: Path, model: Path, name: str, n_prompts: int = 3, batch_size: int = 4, **extra) -> Path:
    prompts = tmp / "prompts.csv"
    lines = ["prompt,evaluation_seed,case_number"]
    words = ["cat", "dog", "red cat", "blue dog", "a cat", "a dog", "red", "blue"]
    lines += [f"{words[i % len(words)]} {i},{10 + i},{i}" for i in range(n_prompts)]
    prompts.write_text("\n".join(lines) + "\n")
    config = {
        "name": name,
        "models": [str(model)],
        "edits": [{"name": "neg-cat", "plugin": "negative-prompt", "concepts": ["cat"]}],
        "prompt_sets": [{"name": "simple", "csv": str(prompts)}],
        "seeds_per_prompt": 2,
        "generation": {"batch_size": batch_size},
        "metrics": ["pixel_distance"],
        "output": str(tmp / name),
        "cache_dir": str(tmp / f"cache-{name}"),
        **extra,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_validation_names_the_problem(tmp_path):
    good = {
        "name": "x",
        "models": ["shapes"],
        "edits": [],
        "prompt_sets": [{"name": "p", "csv": "a.csv"}],
        "metrics": ["probe"],
    }
    parse_config(good)
    with pytest.raises(ConfigError, match="unknown key.*modles.*valid keys"):
        parse_config({**good, "modles": ["x"]})
    with pytest.raises(ConfigError, match=r"edits\[0\].*unknown config key.*concept\b"):
        parse_config({**good, "edits": [{"name": "e", "plugin": "negative-prompt", "concept": ["x"]}]})
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        parse_config({**good, "edits": [{"name": "e"}]})
    with pytest.raises(ConfigError, match="exactly one of 'csv' or 'builtin'"):
        parse_config({**good, "prompt_sets": [{"name": "p"}]})
    with pytest.raises(ConfigError, match="seeds_per_prompt"):
        parse_config({**good, "seeds_per_prompt": 0})
    with pytest.raises(ConfigError, match="expects int"):
        parse_config({**good, "generation": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match="neither a file nor a built-in"):
        load_config(tmp_path / "missing.yaml")
    assert load_config("shapes-quick").models == ["shapes"]


def test_unknown_metric_is_an_error(tmp_path, tiny_model_dir):
    cfg = load_config(write_config(tmp_path, tiny_model_dir, "badmetric"))
    cfg.metrics[0].name = "nope"
    with pytest.raises(ConfigError, match="unknown metric 'nope'"):
        evaluate(cfg, progress=False)


def test_same_config_twice_gives_identical_images_and_metrics(tmp_path, tiny_model_dir):
    first = evaluate(write_config(tmp_path, tiny_model_dir, "a"), progress=False)
    second = evaluate(write_config(tmp_path, tiny_model_dir, "b"), progress=False)  # fresh cache, fresh store
    assert first["n_images"] == 12  # (base + 1 edit) x 3 prompts x 2 seeds
    assert [g["metrics"] for g in first["groups"]] == [g["metrics"] for g in second["groups"]]
    a = sorted((tmp_path / "cache-a" / "images").rglob("*.png"))
    b = sorted((tmp_path / "cache-b" / "images").rglob("*.png"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 12
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    distance = first["groups"][1]["metrics"]["pixel_distance"]
    assert distance["value"] > 0 and distance["details"]["n"] == 6
    report = (tmp_path / "a" / "report.html").read_text()
    assert "pixel_distance" in report and "grid_" in report


def test_second_run_reuses_cached_images(tmp_path, tiny_model_dir, monkeypatch):
    path = write_config(tmp_path, tiny_model_dir, "c")
    evaluate(path, progress=False)
    cfg = load_config(path)
    cfg.output = str(tmp_path / "c-again")  # a new store, the same cache

    import conceptedit.generation as generation

    def fail(*_a, **_k):
        raise AssertionError("generated although every image is cached")

    monkeypatch.setattr(generation, "generate", fail)
    again = evaluate(cfg, progress=False)
    assert again["n_images"] == 12


def test_other_config_in_same_output_is_refused(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir, "d")
    evaluate(path, progress=False)
    cfg = load_config(path)
    cfg.seeds_per_prompt = 3
    with pytest.raises(ConfigError, match="different config"):
        evaluate(cfg, progress=False)


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir, "k", n_prompts=8, batch_size=1)
    db = tmp_path / "k" / "results.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "conceptedit", "eval", str(path)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while _count(db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _count(db)
    assert 3 <= killed_at < 32, f"kill landed at {killed_at} rows"
    done = subprocess.run(
        [sys.executable, "-m", "conceptedit", "eval", str(path), "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _count(db) == 32
    with sqlite3.connect(db) as conn:
        keys = conn.execute("SELECT model, edit, prompt_set, case_number, seed FROM images").fetchall()
    assert len(set(keys)) == 32
    reference = evaluate(write_config(tmp_path, tiny_model_dir, "k2", n_prompts=8, batch_size=1), progress=False)
    resumed = json.loads((tmp_path / "k" / "results.json").read_text())
    assert [g["metrics"] for g in resumed["groups"]] == [g["metrics"] for g in reference["groups"]]


def test_two_processes_with_accelerate(tmp_path, tiny_model_dir):
    path = write_config(tmp_path, tiny_model_dir, "dist")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "conceptedit",
        "eval",
        str(path),
    ]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "img/s" in result.stderr
    results = json.loads((tmp_path / "dist" / "results.json").read_text())
    single = evaluate(write_config(tmp_path, tiny_model_dir, "single"), progress=False)
    assert results["n_images"] == 12
    assert [g["metrics"] for g in results["groups"]] == [g["metrics"] for g in single["groups"]]


def test_compare_two_runs(tmp_path, tiny_model_dir):
    evaluate(write_config(tmp_path, tiny_model_dir, "e"), progress=False)
    cfg = load_config(write_config(tmp_path, tiny_model_dir, "f"))
    cfg.generation.guidance_scale = 2.0
    evaluate(cfg, progress=False)
    cmd = [sys.executable, "-m", "conceptedit", "eval", "compare", str(tmp_path / "e"), str(tmp_path / "f"), "--json"]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and rows[0]["metric"] == "pixel_distance" and rows[0]["delta"] is not None


def test_i2p_per_row_settings_are_honoured_and_keyed(tmp_path, tiny_model_dir):
    """I2P rows carry their own guidance and size: generated with them (switch on by default), cached under
    keys that include them, and ignored with ``generation.per_row_settings: false``."""
    from PIL import Image

    from conceptedit.eval.store import ResultStore

    csv = tmp_path / "i2p.csv"
    csv.write_text(
        "prompt,evaluation_seed,case_number,evaluation_guidance,sd_image_width,sd_image_height\n"
        "cat,10,0,1.5,32,16\n"  # same prompt and seed as case 1, other guidance and size
        "cat,10,1,9,,\n"
        "cat,10,2,,,\n"  # no own settings: the config's / model's (guidance 5, 16x16)
    )

    def run(name: str, **generation) -> tuple[dict, dict[int, Image.Image]]:
        config = {
            "name": name,
            "models": [str(tiny_model_dir)],
            "edits": [],
            "prompt_sets": [{"name": "i2p", "csv": str(csv)}],
            "metrics": ["pixel_distance"],
            "generation": {"batch_size": 4, **generation},
            "output": str(tmp_path / name),
            "cache_dir": str(tmp_path / "cache"),
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        results = evaluate(tmp_path / f"{name}.yaml", progress=False)
        store = ResultStore(tmp_path / name / "results.sqlite")
        images = {r.case_number: Image.open(r.image_path).convert("RGB") for r in store.rows()}
        store.close()
        return results, images

    results, images = run("on")
    assert results["config"]["generation"]["per_row_settings"] is True
    saved = json.loads((tmp_path / "on" / "results.json").read_text())
    assert saved["config"]["generation"]["per_row_settings"] is True
    assert images[0].size == (32, 16) and images[1].size == images[2].size == (16, 16)
    assert images[1].tobytes() != images[2].tobytes()  # guidance 9 vs the default 5, same prompt and seed
    assert len(list((tmp_path / "cache" / "images").rglob("*.png"))) == 3  # three settings, three keys

    results, images = run("off", per_row_settings=False)
    assert results["config"]["generation"]["per_row_settings"] is False
    assert {im.size for im in images.values()} == {(16, 16)}
    assert images[0].tobytes() == images[1].tobytes() == images[2].tobytes()
    assert len(list((tmp_path / "cache" / "images").rglob("*.png"))) == 3  # reused case 2's image


def test_prompt_csv_row_settings_are_validated_and_written_back(tmp_path):
    from conceptedit.eval.prompts import read_prompt_csv, write_prompt_csv

    csv = tmp_path / "p.csv"
    csv.write_text("prompt,evaluation_guidance,sd_image_width,sd_image_height\na,7.5,512.0,\nb,,,\n")
    rows = read_prompt_csv(csv)
    assert rows[0].settings == {"guidance_scale": 7.5, "width": 512} and rows[1].settings == {}
    assert read_prompt_csv(write_prompt_csv(rows, tmp_path / "q.csv")) == rows
    for bad in ("a,7.5,51.5,", "a,-1,,", "a,nan,,", "a,,,big"):
        csv.write_text("prompt,evaluation_guidance,sd_image_width,sd_image_height\n" + bad + "\n")
        with pytest.raises(ConfigError, match="line 2: (evaluation_guidance|sd_image_width|sd_image_height) must"):
            read_prompt_csv(csv)
