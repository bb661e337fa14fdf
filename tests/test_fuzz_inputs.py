"""Property tests (hypothesis) over the input side: the CLI argument parser, the eval config reader and the
prompt-CSV reader. Every generated input either works or ends in a ConceptEditError (the CLI: one line,
or a usage error with exit 2) — never another exception type — and nothing is written outside the
example's own folder. Sized to run in well under a minute."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.errors import ConceptEditError

_attach_subcommands()
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FUZZ_CLI = settings(FUZZ, max_examples=25)  # each example runs the CLI in-process: keep the suite under a minute


@contextmanager
def sandbox():
    """A fresh working folder inside a watched parent; fails if anything appears outside the sandbox."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as parent:
        work = Path(parent) / "work"
        work.mkdir()
        before = os.getcwd()
        os.chdir(work)
        try:
            yield work
        finally:
            os.chdir(before)
        outside = [p.name for p in Path(parent).iterdir() if p.name != "work"]
        assert not outside, f"wrote outside the output folder: {outside}"


NUMBERS = st.sampled_from(
    ["0", "-1", "1", "nan", "inf", "-inf", "1e309", str(2**63), str(2**64), "1.5", "", "x", "0x10", " 3", "９"]
)
WORDS = st.text(alphabet=st.sampled_from("ab ,=./\\'\"\n\x00é-_"), max_size=12)


def _option(name: str) -> st.SearchStrategy[list[str]]:
    return st.tuples(st.just(name), st.one_of(NUMBERS, WORDS)).map(list)


GENERATE_OPTIONS = [
    "--steps",
    "--batch-size",
    "--seed",
    "--guidance",
    "--device",
    "--dtype",
    "--prompt",
    "--negative-prompt",
    "--prompts-csv",
    "--edit",
]
ERASE_OPTIONS = ["--concept", "--preserve", "--device", "--dtype", "--set", "--image"]
SAE_TRAIN_OPTIONS = [
    "--width",
    "--k",
    "--tokens",
    "--batch-size",
    "--lr",
    "--warmup",
    "--seed",
    "--checkpoint-every",
    "--opt",
    "--device",
]


def _assert_clear(result) -> None:
    exc = result.exception
    if isinstance(exc, SystemExit) or exc is None:  # click usage error (exit 2) or a clean exit
        assert result.exit_code in (0, 2), result.output
        return
    assert isinstance(exc, ConceptEditError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc).strip() and len(str(exc)) < 600, str(exc)


@FUZZ_CLI
@given(st.lists(st.one_of(*[_option(o) for o in GENERATE_OPTIONS]), max_size=4))
def test_generate_arguments(options):
    with sandbox() as work:
        args = ["generate", "-m", str(work / "no-model"), "-o", str(work / "out"), "-p", "a cat"]
        _assert_clear(CliRunner().invoke(app, args + [x for pair in options for x in pair]))


@FUZZ_CLI
@given(
    st.sampled_from(["uce", "esd", "negative-prompt", "itd", "fewshot-unlearning", "nope"]),
    st.lists(st.one_of(*[_option(o) for o in ERASE_OPTIONS]), max_size=4),
    st.lists(
        st.tuples(st.sampled_from(["erase_scale", "lr", "iterations", "seed", "sae_k", "lamb", "bogus"]), NUMBERS).map(
            lambda kv: ["--set", f"{kv[0]}={kv[1]}"]
        ),
        max_size=2,
    ),
)
def test_erase_arguments(method, options, sets):
    with sandbox() as work:
        args = ["erase", "--method", method, "-m", str(work / "no-model"), "-o", str(work / "edit"), "-c", "cat"]
        _assert_clear(CliRunner().invoke(app, args + [x for pair in options + sets for x in pair]))


@FUZZ_CLI
@given(st.lists(st.one_of(*[_option(o) for o in SAE_TRAIN_OPTIONS]), max_size=4))
def test_sae_train_arguments(options):
    with sandbox() as work:
        args = ["sae", "train", str(work / "no-store"), "-o", str(work / "sae")]
        _assert_clear(CliRunner().invoke(app, args + [x for pair in options for x in pair]))


# -- eval configs ------------------------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(allow_nan=True), st.text(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "name",
        "models",
        "edits",
        "prompt_sets",
        "metrics",
        "seeds_per_prompt",
        "generation",
        "output",
        "cache_dir",
        "device",
        "grid_cases",
        "bogus",
    ]
)
GOOD = {"name": "x", "models": ["m"], "prompt_sets": [{"name": "p", "builtin": "shapes-erasure"}]}


def _read(work: Path, text: str) -> None:
    from conceptedit.eval.config import load_config

    path = work / "c.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConceptEditError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)


@FUZZ
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_config_values(overrides):
    with sandbox() as work:
        _read(work, yaml.safe_dump({**GOOD, **overrides}))


@FUZZ
@given(
    st.sampled_from(["num_inference_steps", "guidance_scale", "height", "width", "batch_size", "negative_prompt"]),
    SCALARS,
)
def test_config_generation_values(key, value):
    with sandbox() as work:
        _read(work, yaml.safe_dump({**GOOD, "generation": {key: value}}))


@FUZZ
@given(st.text(alphabet=st.sampled_from("ab:-[]{}&*!|>'\"#\n ,.\t%@`"), max_size=60))
def test_config_text(text):
    with sandbox() as work:
        _read(work, text)


# -- prompt CSVs -------------------------------------------------------------------------------------------------
CSV_TEXT = st.text(alphabet=st.sampled_from('ab,"\n\r\t 0123-\ufeff\x00é'), max_size=80)


@FUZZ
@given(
    st.one_of(CSV_TEXT.map(lambda t: "prompt,evaluation_seed,case_number\n" + t), CSV_TEXT),
    st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
)
def test_prompt_csv(text, encoding):
    from conceptedit.eval.prompts import read_prompt_csv

    with sandbox() as work:
        path = work / "p.csv"
        try:
            path.write_bytes(text.encode(encoding))
        except UnicodeEncodeError:
            path.write_bytes(text.encode("utf-8"))
        try:
            rows = read_prompt_csv(path)
        except ConceptEditError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
            return
        for row in rows:
            assert "\n" not in row.prompt and "\r" not in row.prompt  # no row swallowed the next lines
            assert 0 <= row.evaluation_seed < 2**63 and row.case_number >= 0


@FUZZ
@given(st.binary(max_size=200))
def test_prompt_csv_bytes(data):
    from conceptedit.eval.prompts import read_prompt_csv

    with sandbox() as work:
        path = work / "p.csv"
        path.write_bytes(b"prompt\n" + data)
        try:
            read_prompt_csv(path)
        except ConceptEditError as exc:
            assert "\n" not in str(exc), str(exc)
