"""Hostile-but-ordinary inputs against the input side of conceptedit (CLI arguments, eval YAML configs,
prompt CSVs, SAE commands, ``generate``, ``load_pipeline``, the probe), each outcome classified.
(Long because it is a table: 147 cases, a few lines each, next to the small runner that classifies them.)

Why: issue 11 asks that every bad input ends in one clear line, never a traceback, a hang or a silently
wrong result / lost data. Each case runs in a forked child (own temporary folder as working directory,
a wall-clock limit and a memory ceiling) and is classified as

- ``ok``: a valid input that was handled correctly (e.g. a CSV with a byte-order mark);
- ``clear``: a ``ConceptEditError`` (or a CLI usage error, exit 2) with a one-line message < 600 chars;
- ``traceback``: any other exception, or an error message that is several lines or huge;
- ``hang``: killed at the time limit or the memory ceiling;
- ``silent``: a bad input that was accepted, an error for the wrong reason, a spurious error on a valid
  input, or lost / overwritten data.

Run: ``python benchmarks/hostile_inputs.py [--only SUBSTRING] [--json OUT.json]`` (a few minutes on
2 CPU cores; uses tiny random pipelines, never the network).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MEMORY_CEILING = 3 * 2**30  # bytes of resident memory before a case counts as a hang


@dataclass
class Ctx:
    tmp: Path  # the case's working directory
    tiny: Path  # a tiny diffusers pipeline folder (safetensors)
    tiny_bin: Path  # the same pipeline saved with pickled .bin weights
    store: Path  # an activation store of the tiny text encoder
    ckpt: Path  # an SAE trainer checkpoint on that store


@dataclass
class Case:
    name: str
    area: str
    run: Callable[[Ctx], Any]
    expect: str = "error"  # "error" (must be refused clearly) or "ok" (must succeed and pass check)
    match: str | None = None  # the clear error must mention this (regex, case-insensitive)
    check: Callable[[Ctx, Any], str | None] | None = None  # for "ok": a problem description or None
    timeout: float = 60.0


class UsageExit(Exception):
    """A CLI usage error (click exit 2): a clear one-line error."""


# -- helpers ------------------------------------------------------------------------------------------
def cli(*args: Any) -> str:
    """Invoke the CLI in-process; raise what the command raised (ConceptEditError → exit 2 in main())."""
    from typer.testing import CliRunner

    from conceptedit.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code == 0:
        return result.output
    exc = result.exception
    if isinstance(exc, SystemExit) or exc is None:
        lines = [ln for ln in result.output.splitlines() if ln.strip(" │╭╰─")]
        raise UsageExit(" ".join(lines[-3:])[:300])
    raise exc


def write(ctx: Ctx, name: str, data: str | bytes, encoding: str = "utf-8") -> Path:
    path = ctx.tmp / name
    if isinstance(data, str):
        data = data.encode(encoding)
    path.write_bytes(data)
    return path


def gen(ctx: Ctx, *extra: Any, out: str = "out") -> str:
    return cli("generate", "--model", ctx.tiny, "--device", "cpu", "--out", ctx.tmp / out, *extra)


def gen_csv(ctx: Ctx, text: str | bytes, encoding: str = "utf-8") -> str:
    return gen(ctx, "--prompts-csv", write(ctx, "p.csv", text, encoding))


def images_in(ctx: Ctx, out: str = "out") -> list[str]:
    folder = ctx.tmp / out
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def expect_images(names: list[str], out: str = "out") -> Callable[[Ctx, Any], str | None]:
    def check(ctx: Ctx, _: Any) -> str | None:
        got = images_in(ctx, out)
        return None if got == sorted(names) else f"expected images {sorted(names)}, found {got}"

    return check


def erase(ctx: Ctx, *extra: Any, method: str = "uce") -> str:
    out = ctx.tmp / "edit"
    return cli("erase", "--model", ctx.tiny, "--device", "cpu", "--method", method, "--out", out, *extra)


def eval_yaml(ctx: Ctx, text: str) -> str:
    return cli("eval", write(ctx, "cfg.yaml", text), "--output", ctx.tmp / "run")


def base_yaml(ctx: Ctx, extra: str = "", name: str = "hostile", prompt_set: str | None = None) -> str:
    csv_path = write(ctx, "ps.csv", "prompt,evaluation_seed,case_number\na red cat,0,0\na blue dog,1,1\n")
    ps = prompt_set or f"  - name: ps\n    csv: {csv_path}\n"
    return f"name: {name}\nmodels: [{ctx.tiny}]\nedits: []\nprompt_sets:\n{ps}metrics: []\n{extra}"


def sae_train(ctx: Ctx, *extra: Any) -> str:
    base = ["--width", "16", "--k", "4", "--tokens", "256", "--batch-size", "32", "--device", "cpu"]
    return cli("sae", "train", ctx.store, "--out", ctx.tmp / "sae", *base, *extra)


def resume_with(state_edit: Callable[[dict], Any] | str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> str:
        folder = ctx.tmp / "sae"
        shutil.copytree(ctx.ckpt, folder)
        state_file = folder / "trainer_state.json"
        if isinstance(state_edit, str):
            state_file.write_text(state_edit)
        else:
            state = json.loads(state_file.read_text())
            state_edit(state)
            state_file.write_text(json.dumps(state))
        return cli("sae", "train", ctx.store, "--out", folder, "--resume", "--device", "cpu")

    return run


def api_generate(**kw: Any) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from conceptedit import generate, load_pipeline

        pipe = load_pipeline(str(ctx.tiny), device="cpu")
        prompts = kw.pop("prompts", ["a red cat"])
        return generate(pipe, prompts, **kw)

    return run


def api_load(source: Callable[[Ctx], Any], **kw: Any) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from conceptedit import load_pipeline

        return load_pipeline(str(source(ctx)), **kw)

    return run


def interrupted_generate(ctx: Ctx, fail_on_call: int = 3) -> Any:
    """generate 6 prompts in batches of 2; the pipeline dies (KeyboardInterrupt) on its 3rd call."""
    from diffusers import StableDiffusionPipeline

    original = StableDiffusionPipeline.__call__
    calls = {"n": 0}

    def dying(self: Any, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise KeyboardInterrupt("killed")
        return original(self, *a, **k)

    StableDiffusionPipeline.__call__ = dying
    prompts = [f"prompt {i}" for i in range(6)]
    args = [x for p in prompts for x in ("--prompt", p)]
    try:
        gen(ctx, "--batch-size", "2", *args)
    except (KeyboardInterrupt, UsageExit):  # CliRunner turns the interrupt into "Aborted!", exit 1
        pass
    finally:
        StableDiffusionPipeline.__call__ = original
    return calls


def check_interrupted(ctx: Ctx, _: Any) -> str | None:
    got = images_in(ctx)
    return None if len(got) >= 4 else f"killed after 2 of 3 batches, {len(got)} images were left on disk"


def resume_generate(ctx: Ctx) -> Any:
    interrupted_generate(ctx)
    before = {p.name: p.stat().st_mtime_ns for p in (ctx.tmp / "out").glob("*")}
    from diffusers import StableDiffusionPipeline

    original = StableDiffusionPipeline.__call__
    calls = {"n": 0, "before": before}

    def counting(self: Any, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        return original(self, *a, **k)

    StableDiffusionPipeline.__call__ = counting
    try:
        prompts = [f"prompt {i}" for i in range(6)]
        gen(ctx, "--batch-size", "2", *[x for p in prompts for x in ("--prompt", p)])
    finally:
        StableDiffusionPipeline.__call__ = original
    return calls


def check_resumed(ctx: Ctx, calls: Any) -> str | None:
    got = images_in(ctx)
    if len(got) != 6:
        return f"resume left {len(got)} of 6 images"
    kept = {p.name: p.stat().st_mtime_ns for p in (ctx.tmp / "out").glob("*") if p.name in calls["before"]}
    if kept != calls["before"]:
        return "resume rewrote images that were already there"
    if calls["n"] > 1:
        return f"resume regenerated finished images ({calls['n']} pipeline calls for 1 missing batch)"
    return None


def changed_settings_rerun(ctx: Ctx) -> Any:
    gen(ctx, "--prompt", "a red cat", "--steps", "2")
    before = (ctx.tmp / "out" / "0000_seed0.png").read_bytes()
    try:
        return gen(ctx, "--prompt", "a red cat", "--steps", "1")
    finally:
        if (ctx.tmp / "out" / "0000_seed0.png").read_bytes() != before:
            raise AssertionError("an image made with other settings was overwritten")  # counted as traceback


def user_file_collision(ctx: Ctx) -> Any:
    (ctx.tmp / "out").mkdir()
    (ctx.tmp / "out" / "0000_seed0.png").write_bytes(b"my holiday photo")
    try:
        return gen(ctx, "--prompt", "a red cat")
    finally:
        if (ctx.tmp / "out" / "0000_seed0.png").read_bytes() != b"my holiday photo":
            raise AssertionError("a user's file was overwritten")


def eval_folder_vanishes(ctx: Ctx) -> Any:
    """The eval output folder is deleted after the first batch is stored."""
    from conceptedit.eval import store as store_mod

    original = store_mod.ResultStore.add
    calls = {"n": 0}

    def add(self: Any, rows: Any) -> None:
        original(self, rows)
        calls["n"] += 1
        if calls["n"] == 1:
            shutil.rmtree(self.path.parent)

    store_mod.ResultStore.add = add
    try:
        text = base_yaml(ctx, "generation:\n  batch_size: 1\n")
        return eval_yaml(ctx, text)
    finally:
        store_mod.ResultStore.add = original


def probe_on(make: Callable[[Path], Path]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        return cli("probe", make(ctx.tmp))

    return run


def image(size: tuple[int, int], mode: str = "RGB") -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        from PIL import Image

        path = folder / f"img_{mode}_{size[0]}x{size[1]}.png"
        Image.new(mode, size).save(path)
        return path

    return make


def warns(pattern: str) -> Callable[[Ctx, Any], str | None]:
    def check(_: Ctx, output: Any) -> str | None:
        return None if re.search(pattern, str(output), re.I) else "no warning: confident labels printed"

    return check


def output_inside(ctx: Ctx, _: Any) -> str | None:
    outside = [p for p in ctx.tmp.parent.iterdir() if p.name != ctx.tmp.name]
    return f"wrote outside the runs folder: {outside}" if outside else None


def escaped_name(name: str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        sub = ctx.tmp / "work"
        sub.mkdir()
        os.chdir(sub)
        return cli("eval", write(ctx, "cfg.yaml", base_yaml(ctx, name=name)))

    return run


# nine lists of nine aliases of the previous list: 9**9 strings once expanded
LAUGHS = "models:\n  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  - &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


# -- cases ----------------------------------------------------------------------------------------------
def cases() -> list[Case]:
    C = Case
    good_csv = "prompt,evaluation_seed,case_number\na red cat,3,7\n"
    out: list[Case] = [
        # generate: numbers
        C("generate --steps 0", "cli", lambda c: gen(c, "--prompt", "x", "--steps", "0"), match="steps"),
        C("generate --steps -1", "cli", lambda c: gen(c, "--prompt", "x", "--steps", "-1"), match="steps"),
        C("generate --batch-size 0", "cli", lambda c: gen(c, "--prompt", "x", "--batch-size", "0"), match="batch"),
        C("generate --batch-size -3", "cli", lambda c: gen(c, "--prompt", "x", "--batch-size", "-3"), match="batch"),
        C("generate --seed -1", "cli", lambda c: gen(c, "--prompt", "x", "--seed", "-1"), match="seed"),
        C("generate --seed 2**64", "cli", lambda c: gen(c, "--prompt", "x", "--seed", str(2**64)), match="seed"),
        C("generate --seed 2**63", "cli", lambda c: gen(c, "--prompt", "x", "--seed", str(2**63)), match="seed"),
        C("generate --guidance nan", "cli", lambda c: gen(c, "--prompt", "x", "--guidance", "nan"), match="guidance"),
        C("generate --guidance inf", "cli", lambda c: gen(c, "--prompt", "x", "--guidance", "inf"), match="guidance"),
        C("generate --guidance -inf", "cli", lambda c: gen(c, "--prompt", "x", "--guidance", "-inf"), match="guid"),
        C(
            "generate --device bogus",
            "cli",
            lambda c: cli("generate", "-p", "x", "-o", c.tmp / "o", "-m", c.tiny, "--device", "bogus"),
            match="cpu",
        ),
        C(
            "generate --device cuda:99",
            "cli",
            lambda c: cli("generate", "-p", "x", "-o", c.tmp / "o", "-m", c.tiny, "--device", "cuda:99"),
            match="cuda|device",
        ),
        C("generate --dtype float8", "cli", lambda c: gen(c, "--prompt", "x", "--dtype", "float8"), match="float32"),
        C("generate --dtype ''", "cli", lambda c: gen(c, "--prompt", "x", "--dtype", ""), match="float32"),
        C(
            "generate --out is a file",
            "cli",
            lambda c: cli("generate", "-p", "x", "-m", c.tiny, "--device", "cpu", "-o", write(c, "f.txt", "keep")),
            match="not a folder|file",
        ),
        C("generate nothing to do", "cli", lambda c: gen(c), match="nothing"),
        C("generate --edit missing", "cli", lambda c: gen(c, "-p", "x", "--edit", c.tmp / "nope")),
        # generate: prompt CSVs
        C(
            "csv with UTF-8 BOM",
            "csv",
            lambda c: gen_csv(c, "\ufeff" + good_csv),
            expect="ok",
            check=expect_images(["0007_seed3.png"]),
        ),
        C("csv latin-1", "csv", lambda c: gen_csv(c, "prompt\ncaf\u00e9 au lait\n", "latin-1"), match="UTF-8"),
        C("csv UTF-16", "csv", lambda c: gen_csv(c, good_csv, "utf-16"), match="UTF-16|UTF-8|encod"),
        C(
            "csv cp1252 quotes",
            "csv",
            lambda c: gen_csv(c, "prompt\n\u201cquoted\u201d cat\n", "cp1252"),
            match="UTF-8",
        ),
        C(
            "csv row with extra fields",
            "csv",
            lambda c: gen_csv(c, good_csv + "a blue dog,4,8,surprise\n"),
            match="row 3|line 3",
        ),
        C(
            "csv unterminated quote",
            "csv",
            lambda c: gen_csv(c, good_csv + '"a blue dog,4,8\nthe,5,9\nrest,6,10\n'),
            match="line 3|quote",
        ),
        C("csv unterminated quote at end", "csv", lambda c: gen_csv(c, good_csv + '"a blue dog,4,8\n'), match="quote"),
        C("csv empty file", "csv", lambda c: gen_csv(c, ""), match="prompt"),
        C("csv header only", "csv", lambda c: gen_csv(c, "prompt,evaluation_seed\n"), match="nothing|no rows"),
        C("csv non-integer seed", "csv", lambda c: gen_csv(c, "prompt,evaluation_seed\nx,abc\n"), match="integer"),
        C("csv float seed", "csv", lambda c: gen_csv(c, "prompt,evaluation_seed\nx,1.5\n"), match="integer"),
        C("csv negative seed", "csv", lambda c: gen_csv(c, "prompt,evaluation_seed\nx,-4\n"), match="seed"),
        C("csv seed 2**64", "csv", lambda c: gen_csv(c, f"prompt,evaluation_seed\nx,{2**64}\n"), match="seed"),
        C(
            "csv duplicate case numbers",
            "csv",
            lambda c: gen_csv(c, "prompt,case_number\nx,1\ny,1\n"),
            match="unique|already used",
        ),
        C("csv negative case number", "csv", lambda c: gen_csv(c, "prompt,case_number\nx,-1\n"), match="case"),
        C("csv binary garbage", "csv", lambda c: gen_csv(c, bytes(range(256)) * 4), match="UTF-8|encod"),
        C("csv NUL byte", "csv", lambda c: gen_csv(c, "prompt\na\x00b\n"), match="NUL|null|line"),
        C("csv no prompt column", "csv", lambda c: gen_csv(c, "text,seed\nx,1\n"), match="prompt"),
        C("csv is a folder", "csv", lambda c: gen(c, "--prompts-csv", c.tmp), match="not found|folder|file"),
        C("csv 1 MB field", "csv", lambda c: gen_csv(c, "prompt\n" + "x" * 1_000_000 + "\n"), match="long|large"),
        C("csv only blank lines", "csv", lambda c: gen_csv(c, "prompt\n\n\n"), match="nothing|no rows"),
        C(
            "csv CRLF line ends",
            "csv",
            lambda c: gen_csv(c, good_csv.replace("\n", "\r\n")),
            expect="ok",
            check=expect_images(["0007_seed3.png"]),
        ),
        # generate: writing
        C(
            "generate killed after 2 of 3 batches",
            "generate",
            interrupted_generate,
            expect="ok",
            check=check_interrupted,
        ),
        C("generate resumes a killed run", "generate", resume_generate, expect="ok", check=check_resumed),
        C("generate re-run with other settings", "generate", changed_settings_rerun, match="differ|other|settings"),
        C("generate over a user's file", "generate", user_file_collision, match="not made|exists|overwrit"),
        # Python API generate
        C("api generate seeds=-1", "api", api_generate(seeds=-1), match="seed"),
        C("api generate seeds=2**64", "api", api_generate(seeds=2**64), match="seed"),
        C("api generate batch_size=0", "api", api_generate(batch_size=0), match="batch"),
        C("api generate num_inference_steps=0", "api", api_generate(num_inference_steps=0), match="steps"),
        C("api generate guidance nan", "api", api_generate(guidance_scale=float("nan")), match="guidance"),
        C("api generate height=0", "api", api_generate(height=0), match="height"),
        C("api generate 2 prompts 1 seed", "api", api_generate(prompts=["a", "b"], seeds=[1]), match="seed"),
        C(
            "api generate prompt as str",
            "api",
            api_generate(prompts="a red cat"),
            expect="ok",
            check=lambda c, v: None if len(v) == 1 else f"a string prompt gave {len(v)} images (one per letter)",
        ),
        C("api generate seed 1.5", "api", api_generate(seeds=[1.5]), match="seed"),
        # erase / plugin configs
        C(
            "erase uce erase_scale=nan",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "erase_scale=nan"),
            match="finite",
        ),
        C(
            "erase uce erase_scale=inf",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "erase_scale=inf"),
            match="finite",
        ),
        C("erase uce lamb=-inf", "config", lambda c: erase(c, "-c", "cat", "--set", "lamb=-inf"), match="finite"),
        C(
            "erase esd lr=nan",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "lr=nan", method="esd"),
            match="finite",
        ),
        C(
            "erase esd iterations=0",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "iterations=0", method="esd"),
            match="iterations",
        ),
        C(
            "erase esd num_inference_steps=0",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "num_inference_steps=0", method="esd"),
            match="steps",
        ),
        C(
            "erase esd seed=-1",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "seed=-1", method="esd"),
            match="seed",
        ),
        C(
            "erase fewshot batch_size=0",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "batch_size=0", method="fewshot-unlearning"),
            match="batch",
        ),
        C(
            "erase fewshot epochs=-1",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "epochs=-1", method="fewshot-unlearning"),
            match="epochs",
        ),
        C(
            "erase itd sae_k=0",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "sae_k=0", method="itd"),
            match="sae_k",
        ),
        C(
            "erase itd sae_k > sae_width",
            "config",
            lambda c: erase(c, "-c", "cat", "--set", "sae_k=64", "--set", "sae_width=16", method="itd"),
            match="sae_k|width",
        ),
        C("erase unknown key", "config", lambda c: erase(c, "-c", "cat", "--set", "bogus=1"), match="valid keys"),
        C("erase --set without =", "config", lambda c: erase(c, "-c", "cat", "--set", "erase_scale"), match="key="),
        C("erase empty concept", "config", lambda c: erase(c, "-c", "  "), match="empty"),
        C("erase Cat / preserve cat", "config", lambda c: erase(c, "-c", "Cat", "--preserve", "cat"), match="both"),
        C(
            "erase 'Red  Cat' / preserve 'red cat'",
            "config",
            lambda c: erase(c, "-c", "Red  Cat", "--preserve", "red cat"),
            match="both",
        ),
        C("erase unknown method", "config", lambda c: erase(c, "-c", "cat", method="nope"), match="nope"),
        C("erase --device bogus", "config", lambda c: erase(c, "-c", "cat", "--device", "tpu9"), match="cpu"),
        C("erase --dtype int8", "config", lambda c: erase(c, "-c", "cat", "--dtype", "int8"), match="float32"),
        C(
            "erase missing image",
            "config",
            lambda c: erase(c, "-c", "cat", "--image", c.tmp / "no.png"),
            match="not found",
        ),
        # eval YAML
        C(
            "yaml billion laughs",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c).replace(f"models: [{c.tiny}]\n", LAUGHS)),
            match="alias",
            timeout=20,
        ),
        C("yaml top-level list", "yaml", lambda c: eval_yaml(c, "- a\n- b\n"), match="mapping"),
        C("yaml scalar", "yaml", lambda c: eval_yaml(c, "hello\n"), match="mapping"),
        C("yaml empty file", "yaml", lambda c: eval_yaml(c, ""), match="mapping|empty"),
        C("yaml syntax error", "yaml", lambda c: eval_yaml(c, "name: [unclosed\n"), match="YAML"),
        C(
            "yaml huge unknown value",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "bogus: " + "x" * 100_000 + "\n")),
            match="bogus",
        ),
        C(
            "yaml huge bad model value",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "seeds_per_prompt: " + "9" * 5000 + "x\n")),
        ),
        C(
            "yaml deep nesting",
            "yaml",
            lambda c: eval_yaml(c, "name: " + "[" * 5000 + "]" * 5000 + "\n"),
            match="YAML|deep|nest",
        ),
        C(
            "yaml python tag",
            "yaml",
            lambda c: eval_yaml(c, "name: !!python/object/apply:os.system [echo hi]\n"),
            match="YAML",
        ),
        C(
            "yaml latin-1 file",
            "yaml",
            lambda c: cli("eval", write(c, "c.yaml", "name: caf\u00e9\n", "latin-1")),
            match="UTF-8",
        ),
        C("yaml name ../../escape", "yaml", escaped_name("../../escape"), match="name"),
        C("yaml name /abs/path", "yaml", escaped_name("/tmp/hostile-abs-escape"), match="name"),
        C("yaml name with slash", "yaml", escaped_name("a/b"), match="name"),
        C("yaml empty name", "yaml", lambda c: eval_yaml(c, base_yaml(c, name="''")), match="name"),
        C(
            "yaml steps 0",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "generation:\n  num_inference_steps: 0\n")),
            match="steps",
        ),
        C(
            "yaml batch_size 0",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "generation:\n  batch_size: 0\n")),
            match="batch",
        ),
        C(
            "yaml guidance .nan",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "generation:\n  guidance_scale: .nan\n")),
            match="finite",
        ),
        C(
            "yaml guidance .inf",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "generation:\n  guidance_scale: .inf\n")),
            match="finite",
        ),
        C(
            "yaml height -8",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "generation:\n  height: -8\n")),
            match="height",
        ),
        C(
            "yaml seeds_per_prompt 'abc'",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "seeds_per_prompt: abc\n")),
            match="seeds_per_prompt",
        ),
        C(
            "yaml seeds_per_prompt 0",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, "seeds_per_prompt: 0\n")),
            match="seeds_per_prompt",
        ),
        C("yaml models: 5", "yaml", lambda c: eval_yaml(c, base_yaml(c).replace(f"[{c.tiny}]", "5")), match="models"),
        C(
            "yaml edits: a string",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c).replace("edits: []", "edits: oops")),
            match="edits",
        ),
        C(
            "yaml edits[0] a string",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c).replace("edits: []", "edits: [oops]")),
            match="edits",
        ),
        C(
            "yaml plugin config nan",
            "yaml",
            lambda c: eval_yaml(
                c,
                base_yaml(c).replace(
                    "edits: []", "edits:\n  - {name: u, plugin: uce, concepts: [cat], config: {erase_scale: .nan}}"
                ),
            ),
            match="finite",
        ),
        C(
            "yaml plugin config unknown key",
            "yaml",
            lambda c: eval_yaml(
                c,
                base_yaml(c).replace(
                    "edits: []", "edits:\n  - {name: u, plugin: uce, concepts: [cat], config: {bogus: 1}}"
                ),
            ),
            match="bogus",
        ),
        C(
            "yaml edit overlap Cat/cat",
            "yaml",
            lambda c: eval_yaml(
                c,
                base_yaml(c).replace(
                    "edits: []", "edits:\n  - {name: u, plugin: uce, concepts: [Cat], preserve: [cat]}"
                ),
            ),
            match="both",
        ),
        C(
            "yaml per_role 0",
            "yaml",
            lambda c: eval_yaml(c, base_yaml(c, prompt_set="  - {name: e, builtin: shapes-erasure, per_role: 0}\n")),
            match="per_role",
        ),
        C(
            "yaml limit -1",
            "yaml",
            lambda c: eval_yaml(
                c, base_yaml(c, prompt_set=f"  - {{name: e, csv: {write(c, 'q.csv', good_csv)}, limit: -1}}\n")
            ),
            match="limit",
        ),
        C("yaml device bogus", "yaml", lambda c: eval_yaml(c, base_yaml(c, "device: warp9\n")), match="cpu"),
        C("yaml grid_cases -1", "yaml", lambda c: eval_yaml(c, base_yaml(c, "grid_cases: -1\n")), match="grid"),
        C(
            "yaml csv prompt set with BOM",
            "yaml",
            lambda c: eval_yaml(
                c, base_yaml(c, prompt_set=f"  - {{name: e, csv: {write(c, 'q.csv', chr(0xFEFF) + good_csv)}}}\n")
            ),
            expect="ok",
        ),
        C("eval output folder deleted mid-run", "yaml", eval_folder_vanishes, match="disappeared|deleted|missing"),
        # SAE
        C(
            "sae collect --shard-rows 0",
            "sae",
            lambda c: cli(
                "sae",
                "collect",
                "-m",
                c.tiny,
                "--module",
                "text_model.encoder.layers.1",
                "--prompts",
                write(c, "p.txt", "a red cat\n"),
                "--out",
                c.tmp / "acts",
                "--shard-rows",
                "0",
                "--device",
                "cpu",
            ),
            match="shard",
            timeout=20,
        ),
        C(
            "sae collect --batch-size 0",
            "sae",
            lambda c: cli(
                "sae",
                "collect",
                "-m",
                c.tiny,
                "--module",
                "text_model.encoder.layers.1",
                "--prompts",
                write(c, "p.txt", "a red cat\n"),
                "--out",
                c.tmp / "acts",
                "--batch-size",
                "0",
                "--device",
                "cpu",
            ),
            match="batch",
            timeout=20,
        ),
        C(
            "sae collect CSV with BOM",
            "sae",
            lambda c: cli(
                "sae",
                "collect",
                "-m",
                c.tiny,
                "--module",
                "text_model.encoder.layers.1",
                "--prompts",
                write(c, "p.csv", "\ufeffprompt\na red cat\n"),
                "--out",
                c.tmp / "acts",
                "--device",
                "cpu",
            ),
            expect="ok",
        ),
        C(
            "sae collect latin-1 txt",
            "sae",
            lambda c: cli(
                "sae",
                "collect",
                "-m",
                c.tiny,
                "--module",
                "text_model.encoder.layers.1",
                "--prompts",
                write(c, "p.txt", "caf\u00e9\n", "latin-1"),
                "--out",
                c.tmp / "acts",
                "--device",
                "cpu",
            ),
            match="UTF-8",
        ),
        C(
            "sae collect --device bogus",
            "sae",
            lambda c: cli(
                "sae",
                "collect",
                "-m",
                c.tiny,
                "--module",
                "text_model.encoder.layers.1",
                "--prompts",
                write(c, "p.txt", "a\n"),
                "--out",
                c.tmp / "acts",
                "--device",
                "bogus",
            ),
            match="cpu",
        ),
        C("sae train --width 0", "sae", lambda c: sae_train(c, "--width", "0"), match="width"),
        C("sae train --k 0", "sae", lambda c: sae_train(c, "--k", "0"), match="k"),
        C("sae train --k 64 > width 16", "sae", lambda c: sae_train(c, "--k", "64"), match="width"),
        C("sae train --tokens 0", "sae", lambda c: sae_train(c, "--tokens", "0"), match="token"),
        C("sae train --batch-size 0", "sae", lambda c: sae_train(c, "--batch-size", "0"), match="batch"),
        C("sae train --lr nan", "sae", lambda c: sae_train(c, "--lr", "nan"), match="lr|finite"),
        C("sae train --lr -1", "sae", lambda c: sae_train(c, "--lr", "-1"), match="lr"),
        C("sae train --warmup -1", "sae", lambda c: sae_train(c, "--warmup", "-1"), match="warmup"),
        C(
            "sae train --checkpoint-every -1",
            "sae",
            lambda c: sae_train(c, "--checkpoint-every", "-1"),
            match="checkpoint",
        ),
        C("sae train --seed -1", "sae", lambda c: sae_train(c, "--seed", "-1"), match="seed"),
        C("sae train --opt aux_coef=nan", "sae", lambda c: sae_train(c, "--opt", "aux_coef=NaN"), match="finite"),
        C("sae train --device bogus", "sae", lambda c: sae_train(c, "--device", "bogus"), match="cpu"),
        C("sae resume: state not JSON", "sae", resume_with("{not json"), match="trainer_state"),
        C("sae resume: state a list", "sae", resume_with("[1, 2]"), match="trainer_state"),
        C("sae resume: step 10**12", "sae", resume_with(lambda s: s.update(step=10**12)), match="step", timeout=20),
        C("sae resume: step -5", "sae", resume_with(lambda s: s.update(step=-5)), match="step"),
        C("sae resume: step 'abc'", "sae", resume_with(lambda s: s.update(step="abc")), match="step"),
        C("sae resume: step 1.5", "sae", resume_with(lambda s: s.update(step=1.5)), match="step"),
        C("sae resume: missing config", "sae", resume_with(lambda s: s.pop("config")), match="config"),
        C(
            "sae resume: config lr nan",
            "sae",
            resume_with(lambda s: s["config"].update(lr=float("nan"))),
            match="lr|finite",
        ),
        C(
            "sae eval --max-rows 0",
            "sae",
            lambda c: cli("sae", "eval", c.ckpt, c.store, "--max-rows", "0"),
            match="max",
        ),
        # load_pipeline
        C(
            "load .ckpt (pickle)",
            "load",
            api_load(lambda c: write(c, "m.ckpt", b"PK\x03\x04 not really")),
            match="pickle",
        ),
        C("load folder with .bin weights", "load", api_load(lambda c: c.tiny_bin, device="cpu"), match="pickle"),
        C(
            "load .bin weights with allow_pickle",
            "load",
            api_load(lambda c: c.tiny_bin, device="cpu", allow_pickle=True),
            expect="ok",
        ),
        C("load .pt file", "load", api_load(lambda c: write(c, "m.pt", b"x")), match="checkpoint|pickle"),
        C("load device bogus", "load", api_load(lambda c: c.tiny, device="bogus"), match="cpu"),
        C("load dtype float8", "load", api_load(lambda c: c.tiny, device="cpu", dtype="float8"), match="float32"),
        C("load empty source", "load", api_load(lambda c: "  "), match="empty"),
        C(
            "load model_index.json not JSON",
            "load",
            api_load(lambda c: (write(c, "model_index.json", "{"), c.tmp)[1], device="cpu"),
            match="JSON|model_index",
        ),
        C(
            "cli --allow-pickle loads .bin",
            "load",
            lambda c: cli(
                "generate", "-m", c.tiny_bin, "-p", "x", "-o", c.tmp / "o", "--device", "cpu", "--allow-pickle"
            ),
            expect="ok",
        ),
        C(
            "cli .bin without --allow-pickle",
            "load",
            lambda c: cli("generate", "-m", c.tiny_bin, "-p", "x", "-o", c.tmp / "o", "--device", "cpu"),
            match="pickle",
        ),
        # probe
        C("probe 512x512 photo", "probe", probe_on(image((512, 512))), expect="ok", check=warns("warning")),
        C("probe 40x30 image", "probe", probe_on(image((40, 30))), expect="ok", check=warns("warning")),
        C("probe RGBA image", "probe", probe_on(image((32, 32), "RGBA")), expect="ok", check=warns("warning")),
        C("probe greyscale image", "probe", probe_on(image((32, 32), "L")), expect="ok", check=warns("warning")),
        C(
            "probe a text file",
            "probe",
            probe_on(lambda d: (d / "x.png").write_text("hi") and d / "x.png"),
            match="cannot read",
        ),
        C("probe missing path", "probe", probe_on(lambda d: d / "nope.png"), match="neither"),
    ]
    return out


# -- runner ---------------------------------------------------------------------------------------------
def _child(case: Case, ctx: Ctx, conn: Any) -> None:
    from conceptedit.errors import ConceptEditError

    os.chdir(ctx.tmp)
    try:
        value = case.run(ctx)
    except (ConceptEditError, UsageExit) as exc:
        msg = str(exc)
        if case.expect == "ok":
            kind, detail = "silent", f"spurious error: {msg[:200]}"
        elif "\n" in msg.strip() or len(msg) > 600:
            kind, detail = "traceback", f"unclear error ({len(msg)} chars): {msg[:160]!r}"
        elif case.match and not re.search(case.match, msg, re.I):
            kind, detail = "silent", f"error for another reason: {msg[:200]}"
        else:
            kind, detail = "clear", msg[:200]
    except BaseException as exc:  # noqa: BLE001 (classifying every outcome is the point)
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        kind, detail = "traceback", f"{type(exc).__name__}: {first} @{where}"
    else:
        if case.expect == "error":
            kind, detail = "silent", "accepted"
        else:
            problem = case.check(ctx, value) if case.check else None
            kind, detail = ("silent", problem) if problem else ("ok", "")
    conn.send((kind, detail))
    conn.close()


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_case(case: Case, ctx: Ctx) -> tuple[str, str, float]:
    parent, child = mp.Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=_child, args=(case, ctx, child))
    start = time.monotonic()
    proc.start()
    child.close()
    kind, detail = "hang", f"no answer within {case.timeout:.0f}s"
    while True:
        if parent.poll(0.2):
            try:
                kind, detail = parent.recv()
            except EOFError:
                kind, detail = "traceback", "the process died"
            break
        if not proc.is_alive():
            kind, detail = "traceback", f"the process died (exit {proc.exitcode})"
            break
        if _rss(proc.pid) > MEMORY_CEILING:
            kind, detail = "hang", f"over {MEMORY_CEILING >> 30} GB of memory"
            break
        if time.monotonic() - start > case.timeout:
            break
    if proc.is_alive():
        proc.kill()
    proc.join()
    return kind, detail, time.monotonic() - start


def setup(base: Path) -> tuple[Path, Path, Path, Path]:
    import torch
    from tiny import save_tiny_pipeline, tiny_pipeline

    torch.set_num_threads(1)
    tiny = save_tiny_pipeline(base / "tiny")
    tiny_bin = base / "tiny_bin"
    tiny_pipeline().save_pretrained(tiny_bin, safe_serialization=False)
    from conceptedit.loading import load_pipeline
    from conceptedit.sae import SAETrainer, TrainConfig, collect_activations, create_sae

    pipe = load_pipeline(str(tiny), device="cpu")
    prompts = [f"a {c} {a}" for c in ("red", "blue", "green", "big") for a in ("cat", "dog", "car", "sun")]
    store = collect_activations(pipe, "text_model.encoder.layers.1", prompts * 4, base / "acts", progress=False)
    cfg = TrainConfig(token_budget=512, batch_size=32, progress=False, init_rows=64)
    trainer = SAETrainer(create_sae("topk", store.d_in, 16, k=4), store, cfg, checkpoint_dir=base / "ckpt")
    trainer.train(max_steps=3)
    return tiny, tiny_bin, base / "acts", base / "ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--area", default="", help="run only this area (cli, csv, yaml, sae, load, …)")
    parser.add_argument("--json", type=Path, help="also write the outcomes as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from conceptedit.cli import _attach_subcommands

    _attach_subcommands()
    selected = [c for c in cases() if args.only in c.name and args.area in ("", c.area)]
    results = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as base_dir:
        base = Path(base_dir)
        tiny, tiny_bin, store, ckpt = setup(base)
        for i, case in enumerate(selected):
            case_dir = base / "cases" / f"{i:03d}" / "cwd"
            case_dir.mkdir(parents=True)
            ctx = Ctx(case_dir, tiny, tiny_bin, store, ckpt)
            kind, detail, seconds = run_case(case, ctx)
            results.append(
                {"case": case.name, "area": case.area, "outcome": kind, "detail": detail, "seconds": round(seconds, 1)}
            )
            print(f"{kind:<9} {seconds:5.1f}s  {case.name:<42} {detail[:110]}", flush=True)
    kinds = ["ok", "clear", "traceback", "hang", "silent"]
    print("\n| area | inputs | ok (valid, handled) | clear error | traceback | hang | silent / wrong / data loss |")
    print("|---|---|---|---|---|---|---|")
    for area in [*dict.fromkeys(r["area"] for r in results), "all"]:
        rows = [r for r in results if area in ("all", r["area"])]
        counts = [sum(r["outcome"] == k for r in rows) for k in kinds]
        print(f"| {area} | {len(rows)} | " + " | ".join(map(str, counts)) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
