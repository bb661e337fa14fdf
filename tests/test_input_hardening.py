"""Regression tests of issue 11's input side: every bad input named there is one clear ConceptEditError
(a one-line CLI error), nothing hangs, and generate keeps what it finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.errors import ConceptEditError

_attach_subcommands()


def cli_error(*args: object) -> str:
    """Run the CLI in-process; it must fail with a ConceptEditError (main() prints it as one line, exit 2)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, ConceptEditError), (result.exception, result.output)
    message = str(result.exception)
    assert "\n" not in message.strip() and len(message) < 600, message
    return message


# -- generate: numbers, devices, seeds (all refused before the model is loaded) ---------------------------
@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--steps", "0"], "num_inference_steps"),
        (["--steps", "-1"], "num_inference_steps"),
        (["--batch-size", "0"], "batch_size"),
        (["--seed", "-1"], "seed"),
        (["--seed", str(2**63)], "seed"),
        (["--seed", str(2**64)], "seed"),
        (["--guidance", "nan"], "finite"),
        (["--guidance", "inf"], "finite"),
        (["--device", "bogus"], "cpu, cuda"),
        (["--dtype", "float8"], "float32"),
    ],
)
def test_generate_refuses_bad_numbers_before_loading(tmp_path, extra, word):
    message = cli_error("generate", "-m", tmp_path / "no-model", "-p", "x", "-o", tmp_path / "out", *extra)
    assert word in message
    assert not (tmp_path / "out").exists()


def test_generate_refuses_a_bad_seed_even_when_every_csv_row_has_its_own(tmp_path):
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,evaluation_seed\na cat,3\n")
    message = cli_error("generate", "-m", tmp_path / "no-model", "--prompts-csv", csv, "-o", tmp_path / "out",
                        "--seed", "-1")  # fmt: skip
    assert "seed" in message
    assert not (tmp_path / "out").exists()


def test_generate_out_that_is_a_file_is_refused_and_kept(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert "not a folder" in cli_error("generate", "-m", tmp_path / "no-model", "-p", "x", "-o", target)
    assert target.read_text() == "keep me"


# -- generate: per-batch writing, resume, no overwrite ------------------------------------------------------
def _generate(model: Path, out: Path, prompts: list[str], *extra: str):
    args = ["generate", "-m", str(model), "--device", "cpu", "-o", str(out), "--batch-size", "2", *extra]
    return CliRunner().invoke(app, args + [x for p in prompts for x in ("-p", p)])


def test_generate_keeps_finished_batches_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    original = StableDiffusionPipeline.__call__
    calls = {"n": 0, "die_on": 3}

    def counting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == calls["die_on"]:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counting)
    prompts = [f"prompt {i}" for i in range(6)]
    out = tmp_path / "out"
    _generate(tiny_model_dir, out, prompts)
    assert len(list(out.glob("*.png"))) == 4  # two finished batches of two survive the kill
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    calls.update(n=0, die_on=-1)
    result = _generate(tiny_model_dir, out, prompts)
    assert result.exit_code == 0, result.output
    assert calls["n"] == 1  # only the missing batch is generated
    assert len(list(out.glob("*.png"))) == 6
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) if n in before} == before
    meta = json.loads((out / "0005_seed0.json").read_text())
    assert meta["prompt"] == "prompt 5" and meta["settings"]["num_inference_steps"] == 2


def test_generate_never_overwrites_other_images(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _generate(tiny_model_dir, out, ["a red cat"], "--steps", "2").exit_code == 0
    png = (out / "0000_seed0.png").read_bytes()
    result = _generate(tiny_model_dir, out, ["a red cat"], "--steps", "1")
    assert isinstance(result.exception, ConceptEditError) and "settings" in str(result.exception)
    assert (out / "0000_seed0.png").read_bytes() == png
    other = tmp_path / "other"
    other.mkdir()
    (other / "0000_seed0.png").write_bytes(b"a user's photo")
    result = _generate(tiny_model_dir, other, ["a red cat"])
    assert isinstance(result.exception, ConceptEditError) and "not made by" in str(result.exception)
    assert (other / "0000_seed0.png").read_bytes() == b"a user's photo"


def test_api_generate_checks_arguments(tiny_pipe):
    from conceptedit import generate

    for kwargs in (
        {"seeds": -1},
        {"seeds": 2**64},
        {"batch_size": 0},
        {"num_inference_steps": 0},
        {"guidance_scale": float("nan")},
        {"height": 0},
        {"seeds": [1.5]},
    ):
        with pytest.raises(ConceptEditError):
            generate(tiny_pipe, ["a red cat"], **kwargs)
    with pytest.raises(ConceptEditError, match="one seed per prompt"):
        generate(tiny_pipe, ["a", "b"], seeds=[1])
    assert len(generate(tiny_pipe, "a red cat")) == 1  # one string is one prompt, not one per letter


# -- prompt CSVs ----------------------------------------------------------------------------------------------
def _csv(tmp_path: Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / "p.csv"
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def test_csv_with_byte_order_mark_is_read(tmp_path):
    from conceptedit.eval.prompts import read_prompt_csv

    rows = read_prompt_csv(_csv(tmp_path, "\ufeffprompt,evaluation_seed,case_number\r\na red cat,3,7\r\n"))
    assert [(r.prompt, r.evaluation_seed, r.case_number) for r in rows] == [("a red cat", 3, 7)]


def test_sae_read_prompts_accepts_byte_order_mark(tmp_path):
    from conceptedit.sae import read_prompts

    assert read_prompts(_csv(tmp_path, "\ufeffprompt\na red cat\n")) == ["a red cat"]


@pytest.mark.parametrize(
    ("data", "encoding", "match"),
    [
        ("prompt\ncaf\u00e9\n", "latin-1", "not UTF-8"),
        ("prompt\n\u201cquoted\u201d\n", "cp1252", "not UTF-8"),
        ("prompt,evaluation_seed\na,1\n", "utf-16", "UTF-16"),
        ("prompt,evaluation_seed\na,1\nb,2,extra\n", "utf-8", "line 3: 3 fields but the header has 2"),
        ('prompt,evaluation_seed\na,1\n"b,2\nc,3\nd,4\n', "utf-8", "line 3: a quote is never closed"),
        ('prompt,evaluation_seed\n"a,1\nc",3\nd,4\n', "utf-8", "lines 2-3"),
        ("prompt\n" + "x" * 200_000 + "\n", "utf-8", "longer than"),
        ("prompt\na\x00b\n", "utf-8", "NUL"),
        ("prompt,evaluation_seed\na,-4\n", "utf-8", "evaluation_seed must be >= 0"),
        (f"prompt,evaluation_seed\na,{2**64}\n", "utf-8", "evaluation_seed must be <="),
        ("prompt,evaluation_seed\na,1.5\n", "utf-8", "integer"),
        ("prompt,case_number\na,1\nb,1\n", "utf-8", "already used on line 2"),
        ("prompt,case_number\na,-1\n", "utf-8", "case_number must be >= 0"),
        ("", "utf-8", "empty"),
        ("text\na\n", "utf-8", "'prompt' column"),
    ],
)
def test_bad_csv_is_one_clear_line(tmp_path, data, encoding, match):
    from conceptedit.eval.prompts import read_prompt_csv

    with pytest.raises(ConceptEditError, match=match) as info:
        read_prompt_csv(_csv(tmp_path, data, encoding))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


# -- YAML eval configs -------------------------------------------------------------------------------------------
LAUGHS = "name: x\nmodels:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  - &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
BASE = "name: x\nmodels: [m]\nprompt_sets: [{name: p, builtin: shapes-erasure}]\n"


def _config_error(tmp_path: Path, text: str) -> str:
    from conceptedit.eval.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConceptEditError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def test_billion_laughs_fails_fast(tmp_path):
    start = time.monotonic()
    assert "aliases" in _config_error(tmp_path, LAUGHS + "prompt_sets: [{name: p, builtin: shapes-erasure}]\n")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: &a [*a]\n", "refers to itself"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
        (BASE + "bogus: " + "x" * 100_000 + "\n", "bogus"),
        (BASE.replace("name: x", "name: " + "y" * 100_000), "characters"),
        (BASE.replace("name: x", "name: ../../escape"), "plain folder name"),
        (BASE.replace("name: x", "name: a/b"), "plain folder name"),
        (BASE.replace("name: x", "name: ''"), "non-empty"),
        (BASE + "generation: {num_inference_steps: 0}\n", "num_inference_steps must be >= 1"),
        (BASE + "generation: {batch_size: 0}\n", "batch_size must be >= 1"),
        (BASE + "generation: {guidance_scale: .nan}\n", "finite"),
        (BASE + "generation: {guidance_scale: .inf}\n", "finite"),
        (BASE + "generation: {height: -8}\n", "height must be >= 1"),
        (BASE + "seeds_per_prompt: abc\n", "seeds_per_prompt must be an integer"),
        (BASE + "grid_cases: -1\n", "grid_cases"),
        (BASE + "device: warp9\n", "cpu, cuda"),
        (BASE.replace("models: [m]", "models: 5"), "models"),
        (BASE + "edits: oops\n", "edits must be a list"),
        (BASE + "edits: [{name: u, plugin: uce, concepts: [c], config: {erase_scale: .nan}}]\n", "finite"),
        (BASE + "edits: [{name: u, plugin: esd, concepts: [c], config: {iterations: 0}}]\n", "iterations"),
        (BASE + "edits: [{name: u, plugin: uce, concepts: [Cat], preserve: [cat]}]\n", "both targets and preserved"),
        (BASE.replace("shapes-erasure}", "shapes-erasure, per_role: 0}"), "per_role"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, text, match):
    assert match in _config_error(tmp_path, text)


def test_config_file_not_utf8(tmp_path):
    from conceptedit.eval.config import load_config

    path = tmp_path / "c.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConceptEditError, match="not UTF-8"):
        load_config(path)


def test_results_store_stops_when_its_folder_disappears(tmp_path):
    import shutil

    from conceptedit.eval.store import ImageRow, ResultStore

    store = ResultStore(tmp_path / "run" / "results.sqlite")
    row = ImageRow("m", "base", "p", 0, 0, "a cat", "", "", {}, "k", "x.png", {})
    store.add([row])
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(ConceptEditError, match="disappeared"):
        store.add([row])
    store.close()


# -- plugin configs and requests ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("plugin", "config", "match"),
    [
        ("uce", {"erase_scale": "nan"}, "finite"),
        ("uce", {"erase_scale": float("inf")}, "finite"),
        ("uce", {"lamb": "-inf"}, "finite"),
        ("esd", {"lr": "nan"}, "finite"),
        ("esd", {"iterations": 0}, "iterations"),
        ("esd", {"num_inference_steps": "0"}, "num_inference_steps"),
        ("esd", {"seed": -1}, "seed"),
        ("esd", {"seed": 2**63}, "seed"),
        ("fewshot-unlearning", {"batch_size": 0}, "batch_size"),
        ("itd", {"sae_k": 64, "sae_width": 16}, "sae_k"),
    ],
)
def test_plugin_config_checks(plugin, config, match):
    from conceptedit.registry import get_plugin

    with pytest.raises(ConceptEditError, match=match):
        get_plugin(plugin)(config)


def test_erase_and_preserve_overlap_ignores_case():
    from conceptedit.plugin import Request

    for target, preserve in (("Cat", "cat"), ("Red  Cat", "red cat"), ("VAN GOGH", "van gogh")):
        with pytest.raises(ConceptEditError, match="both targets and preserved"):
            Request(targets=[target], preserve=[preserve])
    assert Request(targets=["cat"], preserve=["dog"]).preserve == ["dog"]


def test_devices_and_dtypes_list_valid_values():
    from conceptedit.devices import pick_device, pick_dtype

    with pytest.raises(ConceptEditError, match="cpu, cuda, cuda:N, mps"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConceptEditError, match="not available"):
            pick_device("cuda")
    with pytest.raises(ConceptEditError, match="float32"):
        pick_dtype("int8", torch.device("cpu"))
    assert pick_device("CPU") == torch.device("cpu")


# -- SAE ------------------------------------------------------------------------------------------------------------
def test_sae_sizes_and_numbers(tmp_path):
    from conceptedit.sae import TrainConfig, collect_activations, create_sae
    from conceptedit.sae.store import ShardWriter

    with pytest.raises(ConceptEditError, match="shard_rows"):
        ShardWriter(tmp_path / "acts", 4, shard_rows=0)
    with pytest.raises(ConceptEditError, match="batch_size"):
        collect_activations((None, None), "m", ["a"], batch_size=0)
    with pytest.raises(ConceptEditError, match="larger than the SAE width"):
        create_sae("topk", 8, 16, k=64)
    with pytest.raises(ConceptEditError, match="k must be >= 1"):
        create_sae("topk", 8, 16, k=0)
    with pytest.raises(ConceptEditError, match="finite"):
        create_sae("topk", 8, 16, aux_coef=float("nan"))
    for kwargs in (
        {"lr": float("nan")},
        {"lr": -1.0},
        {"warmup_steps": -1},
        {"checkpoint_every": -1},
        {"seed": -1},
        {"beta1": 1.5},
    ):
        with pytest.raises(ConceptEditError):
            TrainConfig(**kwargs)


@pytest.fixture(scope="module")
def sae_checkpoint(tmp_path_factory):
    from conceptedit.sae import SAETrainer, TrainConfig, create_sae

    folder = tmp_path_factory.mktemp("ckpt")
    data = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(token_budget=512, batch_size=32, init_rows=64, progress=False, b_pre_init="mean")
    SAETrainer(create_sae("topk", 8, 16, k=4), data, cfg, checkpoint_dir=folder).train(max_steps=3)
    return folder, data


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"step": 10**12}, "past the run"),
        ({"step": -5}, "non-negative integer"),
        ({"step": "abc"}, "non-negative integer"),
        ({"step": 1.5}, "non-negative integer"),
        ({"config": None}, "config"),
        ({"config": {"lr": float("nan")}}, "finite"),
    ],
)
def test_sae_resume_refuses_corrupted_state(sae_checkpoint, tmp_path, change, match):
    import shutil

    from conceptedit.sae import SAETrainer

    folder, data = sae_checkpoint
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    state_file = copy / "trainer_state.json"
    if isinstance(change, str):
        state_file.write_text(change)
    else:
        state = json.loads(state_file.read_text())
        for key, value in change.items():
            state[key] = {**state["config"], **value} if key == "config" and value else value
        state_file.write_text(json.dumps(state))
    start = time.monotonic()
    with pytest.raises(ConceptEditError, match=match):
        SAETrainer.resume(copy, data)
    assert time.monotonic() - start < 10
    assert SAETrainer.resume(folder, data).step == 3  # the intact checkpoint still resumes


def test_sae_cli_shard_rows_zero(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\n")
    message = cli_error(
        "sae",
        "collect",
        "-m",
        tmp_path / "no-model",
        "--module",
        "m",
        "--prompts",
        prompts,
        "--out",
        tmp_path / "acts",
        "--shard-rows",
        "0",
    )
    assert "shard_rows" in message


# -- load_pipeline --------------------------------------------------------------------------------------------------
def test_load_pipeline_refuses_pickled_weights(tiny_model_dir, tmp_path):
    from tiny import tiny_pipeline

    from conceptedit.loading import load_pipeline

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not even a pickle")
    with pytest.raises(ConceptEditError, match="pickled"):
        load_pipeline(str(ckpt), device="cpu")
    folder = tmp_path / "bin_model"
    tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ConceptEditError, match="allow_pickle=True"):
        load_pipeline(str(folder), device="cpu")
    assert load_pipeline(str(folder), device="cpu", allow_pickle=True).unet is not None
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_index.json").write_text("{")
    with pytest.raises(ConceptEditError, match="not valid JSON"):
        load_pipeline(str(bad), device="cpu")


# -- probe ------------------------------------------------------------------------------------------------------------
def test_probe_input_warning():
    from PIL import Image

    from conceptedit.datasets.shapes.probe import image_kind_warning

    assert image_kind_warning(Image.new("RGB", (32, 32)), 32) is None
    assert image_kind_warning(Image.new("RGB", (64, 64)), 32) is None
    assert "size 512x512" in image_kind_warning(Image.new("RGB", (512, 512)), 32)
    assert "size 40x30" in image_kind_warning(Image.new("RGB", (40, 30)), 32)
    assert "mode RGBA" in image_kind_warning(Image.new("RGBA", (32, 32)), 32)
    assert "mode L" in image_kind_warning(Image.new("L", (32, 32)), 32)
