"""CLI commands on a tiny pipeline; wrong arguments exit non-zero with one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app

_attach_subcommands()
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conceptedit", *args], capture_output=True, text=True, timeout=300)


def test_plugins_json_lists_negative_prompt():
    result = run("plugins", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["negative-prompt"]["status"] == "ok" and rows["negative-prompt"]["kind"] == "erase"


def test_every_command_has_help():
    for cmd in (["--help"], ["plugins", "--help"], ["generate", "--help"], ["erase", "--help"]):
        assert run(*cmd).exit_code == 0, cmd


def test_erase_then_generate_with_the_edit(tiny_model_dir, tmp_path):
    edit_dir = tmp_path / "edit"
    result = run(
        "erase",
        "--model",
        str(tiny_model_dir),
        "--method",
        "negative-prompt",
        "--concept",
        "cat",
        "--out",
        str(edit_dir),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    assert json.loads((edit_dir / "manifest.json").read_text())["plugin"] == "negative-prompt"
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("prompt,evaluation_seed,case_number\na red cat,3,7\n")
    out = tmp_path / "images"
    result = run(
        "generate",
        "--model",
        str(tiny_model_dir),
        "--prompt",
        "a blue dog",
        "--prompts-csv",
        str(csv_file),
        "--edit",
        str(edit_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "0007_seed3.json").read_text())
    assert meta["prompt"] == "a red cat" and meta["seed"] == 3 and meta["edits"][0]["plugin"] == "negative-prompt"
    assert (out / "0007_seed3.png").is_file() and (out / "0000_seed0.png").is_file()

    # the files hold what the edit applied in-process gives at the same seeds (one batch, as the CLI does)
    import numpy as np
    from PIL import Image

    from conceptedit.edits import Edit
    from conceptedit.generation import generate
    from conceptedit.loading import load_pipeline

    pipe = load_pipeline(str(tiny_model_dir), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a blue dog", "a red cat"], [0, 3]
    plain = generate(pipe, prompts, seeds)
    with Edit.load(edit_dir).apply(pipe):
        edited = generate(pipe, prompts, seeds)
        at_flag_seed = generate(pipe, ["a red cat"], [0])[0]  # --seed (0): for prompts without their own only
    for name, expected, unedited in zip(("0000_seed0.png", "0007_seed3.png"), edited, plain, strict=True):
        written = np.asarray(Image.open(out / name).convert("RGB"))
        assert np.array_equal(written, np.asarray(expected)), f"{name} is not the edited image"
        assert not np.array_equal(written, np.asarray(unedited)), f"{name}: the edit changed nothing"
    csv_image = np.asarray(Image.open(out / "0007_seed3.png").convert("RGB"))
    assert not np.array_equal(csv_image, np.asarray(at_flag_seed)), "the CSV row was generated at --seed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["erase", "--method", "nope", "--concept", "x", "--out", "o"], "unknown plugin 'nope'"),
        (["erase", "--method", "negative-prompt", "--concept", " ", "--out", "o"], "empty concept"),
        (
            ["erase", "--method", "negative-prompt", "--concept", "x", "--set", "colour=red", "--out", "o"],
            "unknown config key",
        ),
        (["generate", "--out", "o", "--prompts-csv", "missing.csv"], "not found"),
        (["generate", "--out", "o", "--edit", "no_such_edit_dir", "--prompt", "x"], "not an edit artifact"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(args, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "conceptedit", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_model_presets_apply_and_explicit_values_win(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    settings = json.loads((model / "conceptedit.json").read_text())
    settings["plugin_presets"] = {"negative-prompt": {"mode": "replace"}}
    (model / "conceptedit.json").write_text(json.dumps(settings))
    base = ["erase", "--model", str(model), "--method", "negative-prompt", "--concept", "cat", "--device", "cpu"]
    assert run(*base, "--out", str(tmp_path / "a")).exit_code == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["mode"] == "replace"
    assert run(*base, "--set", "mode=append", "--out", str(tmp_path / "b")).exit_code == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["config"]["mode"] == "append"


def test_shapes_train_refuses_a_device_this_machine_lacks_in_one_line(tmp_path):
    out = tmp_path / "run"
    result = run_main("shapes", "train", "--out", str(out), "--device", "cuda:9")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: device 'cuda:9' is not available on this machine; available: cpu")
    assert not out.exists()
