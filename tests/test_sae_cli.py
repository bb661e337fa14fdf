"""``conceptedit sae collect | train | eval`` on the tiny pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.sae import ActivationStore, load_sae

_attach_subcommands()
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_every_sae_command_has_help() -> None:
    for cmd in (
        ["sae", "--help"],
        ["sae", "collect", "--help"],
        ["sae", "train", "--help"],
        ["sae", "eval", "--help"],
    ):
        assert run(*cmd).exit_code == 0, cmd


def test_collect_train_resume_eval(tiny_model_dir, tmp_path) -> None:
    prompts = tmp_path / "p.csv"
    words = ["cat", "dog", "red", "blue", "a", "on"]
    rows = [" ".join(words[(i + j) % 6] for j in range(1 + i % 5)) for i in range(60)]
    prompts.write_text("prompt,evaluation_seed,case_number\n" + "".join(f"{p},{i},{i}\n" for i, p in enumerate(rows)))
    store_dir, sae_dir = tmp_path / "store", tmp_path / "sae"
    result = run(
        "sae",
        "collect",
        "--model",
        tiny_model_dir,
        "--module",
        "text_model.encoder.layers.1",
        "--prompts",
        prompts,
        "--out",
        store_dir,
        "--batch-size",
        "16",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    store = ActivationStore(store_dir)
    assert store.d_in == 32 and store.n_rows > 60 and store.meta["module"] == "text_model.encoder.layers.1"
    result = run(
        "sae",
        "train",
        store_dir,
        "--out",
        sae_dir,
        "--arch",
        "batchtopk",
        "--width",
        "64",
        "--k",
        "4",
        "--tokens",
        "2048",
        "--batch-size",
        "128",
        "--opt",
        "aux_coef=0.05",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    sae = load_sae(sae_dir)
    assert sae.architecture == "batchtopk" and sae.k == 4 and sae.aux_coef == 0.05
    assert sae.source["module"] == "text_model.encoder.layers.1"
    state = json.loads((sae_dir / "trainer_state.json").read_text())
    assert state["step"] == 16
    # --resume reads the stored config; with its token budget already spent it is a no-op
    assert run("sae", "train", store_dir, "--out", sae_dir, "--resume", "--device", "cpu").exit_code == 0
    result = run("sae", "eval", sae_dir, store_dir, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["rows"] == store.n_rows and 0 <= metrics["fvu"] < 1 and metrics["l0"] > 0


def test_bad_option_is_a_clear_error(tmp_path) -> None:
    from conceptedit.errors import ConceptEditError
    from conceptedit.sae import InMemoryStore

    InMemoryStore(torch.randn(300, 8)).save(tmp_path / "s")
    with pytest.raises(ConceptEditError, match="valid:"):
        run("sae", "train", tmp_path / "s", "--out", tmp_path / "o", "--width", "16", "--opt", "bogus=1")
