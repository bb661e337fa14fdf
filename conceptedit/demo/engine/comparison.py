"""The Compare tab's work: fit several methods (or load saved edit folders) for one concept, then
generate the same prompts and seeds on the original model and with each edit alone — one column
per method — and score every column with the model's judge (:mod:`.scoring`).

Fits and images are cached (:class:`CompareCache`), so adding a method to a comparison only fits
and generates the new column. A fit that fails becomes a column with its error; the others go on.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from conceptedit.edits import Edit
from conceptedit.errors import ConceptEditError, RequestError
from conceptedit.eval.prompts import PromptRow
from conceptedit.eval.verdicts import Verdict
from conceptedit.toolkit import Progress, no_progress, payload_hash

from .erase import _generate, _settings, fit_erase
from .inputs import parse_concepts, parse_prompts, parse_seeds
from .model import DemoModel
from .scoring import ClipJudge, LabelJudge, Score, judge_for

ORIGINAL = "original"
MAX_METHODS = 6
MAX_CACHED_IMAGES = 2048


@dataclass
class Column:
    """One method's column: its edit (or the error that stopped it), fit time and images."""

    label: str
    key: str
    plugin: str = ""
    folder: str = ""
    edit: Edit | None = None
    error: str = ""
    fit_seconds: float = 0.0
    cached: bool = False
    images: list[Image.Image] = field(default_factory=list)
    score: Score | None = None
    verdict: Verdict | None = None

    @property
    def ok(self) -> bool:
        return not self.error


class CompareCache:
    """Fitted edits by (plugin, settings, concepts) and images by (column, prompt, seed, settings);
    one per page, shared by its users (the pipeline never changes, so neither do the results)."""

    def __init__(self, max_images: int = MAX_CACHED_IMAGES) -> None:
        self.edits: dict[str, Edit] = {}
        self.fit_seconds: dict[str, float] = {}  # how long each cached edit took to fit (or load)
        self.images: OrderedDict[str, Image.Image] = OrderedDict()
        self.max_images = max_images
        self.fits = 0  # how many fits actually ran (the rest came from the cache)

    def image(self, key: str) -> Image.Image | None:
        if key in self.images:
            self.images.move_to_end(key)
            return self.images[key]
        return None

    def put_image(self, key: str, image: Image.Image) -> None:
        self.images[key] = image
        while len(self.images) > self.max_images:
            self.images.popitem(last=False)


@dataclass
class MethodComparison:
    """The result of one comparison: columns (the original first), the grid's prompts and seeds,
    the scoring rows and the judge that scored them."""

    targets: list[str]
    preserve: list[str]
    prompts: list[str]
    seeds: list[int]
    settings: dict[str, Any]
    columns: list[Column]
    judge: LabelJudge | ClipJudge | None = None
    score_rows: list[PromptRow] = field(default_factory=list)
    chance: float | None = None
    seconds: float = 0.0
    unscored: str = ""  # why the columns were not scored (the judge cannot run here)

    @property
    def original(self) -> Column:
        return self.columns[0]

    @property
    def methods(self) -> list[Column]:
        return self.columns[1:]

    def cell_captions(self) -> list[str]:
        return [f"seed {s} · {p}" for p in self.prompts for s in self.seeds]


def parse_methods(methods: Sequence[str] | str | None, folders: str | Sequence[str] | None = None) -> list[str]:
    """Plugin names and saved edit folders (one per line), in order, without repeats."""
    names = parse_concepts(methods) if isinstance(methods, str) else [m for m in methods or [] if m]
    paths = folders.splitlines() if isinstance(folders, str) else list(folders or [])
    out = list(dict.fromkeys([*names, *(p.strip() for p in paths if p and p.strip())]))
    if not out:
        raise RequestError("choose at least one method (or give a saved edit folder) to compare")
    if len(out) > MAX_METHODS:
        raise RequestError(f"{len(out)} methods given; the demo compares at most {MAX_METHODS} at once")
    return out


def _fit_key(name: str, values: dict[str, Any], targets: list[str], preserve: list[str]) -> str:
    return "fit:" + payload_hash({"plugin": name, "values": values, "targets": targets, "preserve": preserve})


def _folder_key(path: Path) -> str:
    manifest = path / "manifest.json"
    stamp = manifest.stat().st_mtime_ns if manifest.is_file() else 0
    return "folder:" + payload_hash({"path": str(path.resolve()), "mtime": stamp})


def _is_folder(method: str) -> bool:
    """A registered plugin's name is a plugin; anything else that looks like a path is an edit folder."""
    from .plugins import plugin_info

    if plugin_info(method) is not None:
        return False
    return "/" in method or method.startswith((".", "~")) or Path(method).expanduser().is_dir()


def prepare_column(
    model: DemoModel,
    cache: CompareCache,
    method: str,
    targets: list[str],
    preserve: list[str],
    values: dict[str, Any] | None = None,
    progress: Progress = no_progress,
) -> Column:
    """Fit (or load) one method; an error becomes the column's message instead of an exception."""
    values = dict(values or {})
    folder = Path(method).expanduser() if _is_folder(method) else None
    key = _folder_key(folder) if folder else _fit_key(method, values, targets, preserve)
    column = Column(label=method, key=key, plugin="" if folder else method, folder=str(folder or ""))
    if key in cache.edits:
        column.edit, column.cached = cache.edits[key], True
        column.plugin = column.edit.manifest.plugin
        column.fit_seconds = cache.fit_seconds.get(key, 0.0)
        return column
    start = time.perf_counter()
    try:
        if folder is not None:
            from .stack import load_entry

            column.edit = load_entry(model, str(folder))
            column.plugin = column.edit.manifest.plugin
        else:
            column.edit = fit_erase(model, method, values, targets, preserve, progress=progress)
            cache.fits += 1
    except ConceptEditError as exc:
        column.error = str(exc)
    except Exception as exc:  # a plugin bug: shown in its column, the other methods go on
        import logging

        logging.getLogger("conceptedit.demo").error("fit of %s failed:\n%s", method, traceback.format_exc())
        column.error = f"{type(exc).__name__}: {exc}"
    column.fit_seconds = time.perf_counter() - start
    if column.edit is not None:
        cache.edits[key] = column.edit
        cache.fit_seconds[key] = column.fit_seconds
    return column


def _images(
    model: DemoModel,
    cache: CompareCache,
    column: Column,
    prompts: list[str],
    seeds: list[int],
    settings: dict[str, Any],
    tick: Callable[[], None],
) -> list[Image.Image]:
    """The column's images of (prompt, seed) pairs, from the cache or generated with its edit alone."""
    setting_key = json.dumps(settings, sort_keys=True, default=str)
    keys = [f"{column.key}|{p}|{s}|{setting_key}" for p, s in zip(prompts, seeds, strict=True)]
    missing = [i for i, k in enumerate(keys) if cache.image(k) is None]
    if missing:
        todo_p, todo_s = [prompts[i] for i in missing], [seeds[i] for i in missing]
        with model.lock:
            if column.edit is None:
                made = _generate(model, todo_p, todo_s, settings, tick)
            else:
                with column.edit.apply(model.pipe):
                    made = _generate(model, todo_p, todo_s, settings, tick)
        for i, image in zip(missing, made, strict=True):
            cache.put_image(keys[i], image)
    return [cache.image(k) or Image.new("RGB", (1, 1)) for k in keys]


def compare_methods(
    model: DemoModel,
    cache: CompareCache,
    targets: str | Sequence[str],
    methods: Sequence[str] | str,
    preserve: str | Sequence[str] | None = None,
    prompts: str | Sequence[str] | None = None,
    seeds: str | Sequence[int] | int = "0",
    steps: Any = None,
    guidance: Any = None,
    score: bool = True,
    judge: LabelJudge | ClipJudge | None = None,
    progress: Progress = no_progress,
) -> MethodComparison:
    """Fit every method for ``targets`` (cached), generate ``prompts`` × ``seeds`` on the original and
    with each edit alone, and (``score``) score every column on the judge's prompt rows — the same
    prompts and seeds in every column."""
    start = time.perf_counter()
    target_list, preserve_list = parse_concepts(targets), parse_concepts(preserve)
    if not target_list:
        raise RequestError("no concept to erase given; write one, e.g. zorblax")
    method_list = parse_methods(methods)
    judge = judge or judge_for(model)
    if prompts is None or (isinstance(prompts, str) and not prompts.strip()):
        prompts = judge.grid_prompts(target_list, preserve_list)
    prompt_list, seed_list = parse_prompts(prompts), parse_seeds(seeds)
    settings = _settings(model, steps, guidance)
    score_rows: list[PromptRow] = []
    unscored = judge.unavailable() if score else None
    if score and not unscored:
        score_rows = judge.rows(target_list, preserve_list) if isinstance(judge, ClipJudge) else judge.rows(target_list)

    steps_per_batch = int(settings.get("num_inference_steps", 50))
    grid_p = [p for p in prompt_list for _ in seed_list]
    grid_s = [s for _ in prompt_list for s in seed_list]
    batches = -(-len(grid_p) // 8) + (-(-len(score_rows) // 8) if score_rows else 0)
    total = float(len(method_list) + (len(method_list) + 1) * batches * steps_per_batch)
    done = [0.0]

    def advance(amount: float, message: str) -> None:
        done[0] += amount
        progress(min(done[0] / total, 1.0), message)

    progress(0.0, "fitting")
    columns = [Column(label=ORIGINAL, key=ORIGINAL)]
    for i, method in enumerate(method_list, 1):

        def sub(fraction: float, message: str, _i: int = i, _m: str = method) -> None:
            progress(min((done[0] + fraction) / total, 1.0), f"{_m} ({_i}/{len(method_list)}): {message}")

        column = prepare_column(model, cache, method, target_list, preserve_list, progress=sub)
        advance(1.0, f"{method}: " + ("failed" if column.error else "cached" if column.cached else "fitted"))
        columns.append(column)

    score_p = [r.prompt for r in score_rows]
    score_s = [r.evaluation_seed for r in score_rows]
    for column in columns:
        if not column.ok:
            continue
        message = f"generating: {column.label}"
        column.images = _images(model, cache, column, grid_p, grid_s, settings, lambda m=message: advance(1.0, m))
        if score_rows:
            images = _images(model, cache, column, score_p, score_s, settings, lambda m=message: advance(1.0, m))
            column.score = judge.score(score_rows, images, column.label)
    result = MethodComparison(
        target_list,
        preserve_list,
        prompt_list,
        seed_list,
        settings,
        columns,
        judge,
        score_rows,
        unscored=unscored or "",
    )
    if score_rows and columns[0].score is not None:
        result.chance = judge.chance(score_rows)
        for column in result.methods:
            if column.score is not None:
                column.verdict = judge.verdict(columns[0].score, column.score, result.chance)
    result.seconds = time.perf_counter() - start
    progress(1.0, "done")
    return result
