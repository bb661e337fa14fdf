"""The functions behind the demo's UI, without Gradio: plugin listings, fit, side-by-side
comparison, the per-session stack of edits (save, load, remove), inspection of runtime edits,
image editing and analysis reports.

One pipeline serves every tab and every user: edits are applied through their handles for the
duration of one request and removed afterwards (``DemoModel.lock`` keeps requests from
interleaving), so between requests the pipeline is always the original model. Every user error is a
:class:`ConceptEditError` whose message the UI shows as is.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from conceptedit.edits import Edit, FeatureExplainer, PromptClassifier
from conceptedit.errors import ArtifactError, ConceptEditError, RequestError
from conceptedit.plugin import Plugin, Report, Request
from conceptedit.registry import PluginInfo, get_plugin, list_plugins

from .forms import config_from_values

Progress = Callable[[float, str], None]

MAX_PROMPTS = 8
MAX_SEEDS = 4
MAX_STEPS = 200
DISPLAY_MIN_SIDE = 192


def _no_progress(_fraction: float, _message: str) -> None:
    return None


# -- the model --------------------------------------------------------------------------------------
class DemoModel:
    """The one loaded pipeline, its lock and a short description for the page header."""

    def __init__(self, pipe: Any, source: str = "") -> None:
        self.pipe = pipe
        self.source = source
        self.lock = threading.RLock()
        with contextlib.suppress(Exception):
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(cls, source: str = "shapes", device: str | None = None, dtype: str | None = None) -> DemoModel:
        from conceptedit.loading import load_pipeline

        return cls(load_pipeline(source, device=device, dtype=dtype), source)

    @property
    def settings(self) -> dict[str, Any]:
        from conceptedit.generation import generation_settings

        return generation_settings(self.pipe)

    def describe(self) -> str:
        from conceptedit.families import detect_family
        from conceptedit.loading import model_id

        device = getattr(self.pipe, "device", "?")
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items()) or "diffusers defaults"
        return f"model `{model_id(self.pipe)}` ({detect_family(self.pipe)}) on {device} · generation: {settings}"


# -- plugins ----------------------------------------------------------------------------------------
def plugins_of(kind: str) -> list[PluginInfo]:
    """Working plugins of ``kind``, by name."""
    return list_plugins(kind=kind)


def broken_plugins() -> list[PluginInfo]:
    """Plugins that failed to import (their kind is unknown); the Erase tab lists them, disabled."""
    return [i for i in list_plugins() if i.status != "ok"]


def plugin_choices(kind: str, include_broken: bool = False) -> list[tuple[str, str]]:
    """(label, name) pairs for a dropdown; broken plugins are labelled as such."""
    choices = [(info.name, info.name) for info in plugins_of(kind)]
    if include_broken:
        choices += [(f"{info.name} — broken, cannot be used", info.name) for info in broken_plugins()]
    return choices


def plugin_info(name: str) -> PluginInfo | None:
    return next((i for i in list_plugins() if i.name == name), None)


def describe_plugin(name: str | None) -> str:
    """Markdown: the plugin's summary and paper, or its import error if it is broken."""
    if not name:
        return "No plugin selected."
    info = plugin_info(name)
    if info is None:
        return f"Unknown plugin `{name}`."
    if info.status != "ok":
        return f"**`{name}` is broken and cannot be used.** It failed to import:\n\n```\n{info.error}\n```"
    lines = [f"**{info.summary or info.name}**"]
    if info.paper:
        lines.append(f"Paper: {info.paper}")
    lines.append(f"Kind: {info.kind} · produces: {info.artifact_kind} · model families: {', '.join(info.families)}")
    return "\n\n".join(lines)


def usable(name: str | None) -> bool:
    info = plugin_info(name) if name else None
    return info is not None and info.status == "ok"


def make_plugin(name: str, values: dict[str, Any]) -> Plugin:
    """An instance of plugin ``name`` configured from form values (strictly validated)."""
    if not name:
        raise ConceptEditError("choose a plugin first")
    cls = get_plugin(name)
    return cls(config_from_values(cls.Config, values))


# -- text inputs ------------------------------------------------------------------------------------
def parse_concepts(text: str | Sequence[str] | None) -> list[str]:
    """Concepts from a comma- or newline-separated text."""
    if text is None:
        return []
    if not isinstance(text, str):
        text = ",".join(text)
    return [c.strip() for c in re.split(r"[,\n]", text) if c.strip()]


def parse_prompts(text: str | Sequence[str] | None, limit: int = MAX_PROMPTS) -> list[str]:
    """One prompt per line; blank lines are ignored."""
    lines = text.splitlines() if isinstance(text, str) else list(text or [])
    prompts = [" ".join(p.split()) for p in lines if p and p.strip()]
    if not prompts:
        raise RequestError("no prompts given; write one prompt per line")
    if len(prompts) > limit:
        raise RequestError(f"{len(prompts)} prompts given; the demo generates at most {limit} at once")
    return prompts


def parse_seeds(text: str | int | Sequence[int] | None, limit: int = MAX_SEEDS) -> list[int]:
    """Seeds from ``"0, 1, 2"`` (or a number); each prompt is generated once per seed."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return [0]
    if isinstance(text, (int, float)):
        items: list[Any] = [text]
    elif isinstance(text, str):
        items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    else:
        items = list(text)
    try:
        seeds = [int(str(s)) for s in items]
    except ValueError:
        raise RequestError(f"seeds must be whole numbers separated by commas, got {text!r}") from None
    if len(seeds) > limit:
        raise RequestError(f"{len(seeds)} seeds given; the demo uses at most {limit}")
    return seeds


PROMPT_TEMPLATES = ("a picture of {}", "a drawing of {}")


def default_prompts(targets: str | Sequence[str] | None, preserve: str | Sequence[str] | None = None) -> list[str]:
    """Prompts that show an erasure: the target in two frames, then each preserved concept."""
    target_list, preserve_list = parse_concepts(targets), parse_concepts(preserve)
    prompts = [t.format(c) for c in target_list[:2] for t in PROMPT_TEMPLATES]
    prompts += [PROMPT_TEMPLATES[0].format(c) for c in preserve_list[:2]]
    return prompts[:MAX_PROMPTS]


# -- the stack of edits (one per browser session) --------------------------------------------------
_ids = itertools.count(1)


@dataclass
class StackEntry:
    edit: Edit
    origin: str  # "fitted" or "loaded from <path>"
    id: int = field(default_factory=lambda: next(_ids))
    saved_to: str = ""

    @property
    def label(self) -> str:
        m = self.edit.manifest
        return f"#{self.id} {m.plugin}: {', '.join(m.targets)}"


def push(stack: list[StackEntry], edit: Edit, origin: str) -> list[StackEntry]:
    return [*stack, StackEntry(edit, origin)]


def remove(stack: list[StackEntry], entry_id: int | str | None) -> list[StackEntry]:
    entry = find(stack, entry_id)
    return [e for e in stack if e is not entry]


def find(stack: list[StackEntry], entry_id: int | str | None) -> StackEntry:
    if entry_id in (None, ""):
        raise ConceptEditError("choose an edit of the stack first")
    for entry in stack:
        if str(entry.id) == str(entry_id):
            return entry
    raise ConceptEditError(f"edit #{entry_id} is not in the stack (any more)")


def stack_choices(stack: list[StackEntry]) -> list[tuple[str, str]]:
    return [(e.label, str(e.id)) for e in stack]


def changed_settings(edit: Edit) -> dict[str, Any]:
    """The config values of an edit that differ from its plugin's defaults."""
    from conceptedit.config import config_to_dict

    try:
        defaults = config_to_dict(get_plugin(edit.manifest.plugin).Config())
    except Exception:  # plugin not installed (a loaded edit) or no defaults: show everything
        defaults = {}
    return {k: v for k, v in edit.manifest.config.items() if k not in defaults or defaults[k] != v}


def stack_table(stack: list[StackEntry]) -> str:
    """Markdown table of the stack, in the order the edits are applied."""
    if not stack:
        return "_No edits yet: fit one above, or load a saved edit folder._"
    header = "| order | edit | plugin | targets | preserved | settings | artifact | from |"
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for order, e in enumerate(stack, 1):
        m = e.edit.manifest
        origin = e.origin + (f"; saved to `{e.saved_to}`" if e.saved_to else "")
        settings = ", ".join(f"{k}={_cell(v)}" for k, v in changed_settings(e.edit).items()) or "defaults"
        rows.append(
            f"| {order} | #{e.id} | {m.plugin} | {', '.join(m.targets)} | {', '.join(m.preserve) or '—'} "
            f"| {settings} | {m.artifact_kind} | {origin} |"
        )
    return "\n".join(rows)


@contextlib.contextmanager
def applied(model: DemoModel, stack: Sequence[StackEntry]) -> Iterator[list[Any]]:
    """Apply the stack's edits in order for the duration of the block; always removes them."""
    handles: list[Any] = []
    try:
        for entry in stack:
            handles.append(entry.edit.apply(model.pipe))
        yield handles
    finally:
        for handle in reversed(handles):
            handle.remove()


# -- erase: fit, save, load ------------------------------------------------------------------------
def fit_erase(
    model: DemoModel,
    name: str,
    values: dict[str, Any],
    targets: str | Sequence[str],
    preserve: str | Sequence[str] | None = None,
    progress: Progress = _no_progress,
    images: Sequence[str | Path] | None = None,
) -> Edit:
    """Fit plugin ``name`` on the original model (the stack is not applied while fitting).
    ``images``: image files of the concept, for few-shot methods."""
    plugin = make_plugin(name, values)
    request = Request(
        targets=parse_concepts(targets), preserve=parse_concepts(preserve), images=[Path(p) for p in images or []]
    )
    progress(0.0, f"fitting {name}")
    with model.lock:
        result = plugin.fit(model.pipe, request, progress=progress)
    if not isinstance(result, Edit):
        raise ConceptEditError(f"plugin {name!r} returned {type(result).__name__}, not an edit")
    progress(1.0, "done")
    return result


def _is_safe_target(path: Path) -> bool:
    """Saving replaces the folder: allow only a new path, an empty folder or an earlier edit artifact."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    return not any(path.iterdir()) or (path / "manifest.json").is_file()


def save_entry(stack: list[StackEntry], entry_id: int | str | None, folder: str) -> Path:
    entry = find(stack, entry_id)
    if not folder or not str(folder).strip():
        raise ConceptEditError("give a folder to save the edit to, e.g. runs/no-zorblax")
    path = Path(str(folder).strip()).expanduser()
    if not _is_safe_target(path):
        raise ArtifactError(
            f"{path} exists and is not an edit artifact folder; choose a new or empty folder "
            "(saving replaces the folder's contents)"
        )
    try:
        saved = entry.edit.save(path)
    except OSError as exc:
        raise ArtifactError(f"could not save to {path}: {exc}") from exc
    entry.saved_to = str(saved)
    return saved


def load_entry(model: DemoModel, folder: str) -> Edit:
    """Read an edit folder and check it fits the loaded model (before it joins the stack)."""
    if not folder or not str(folder).strip():
        raise ConceptEditError("give the folder of a saved edit (it holds manifest.json)")
    path = Path(str(folder).strip()).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    edit = Edit.load(path)
    with model.lock:
        edit.check_compatible(model.pipe)
    return edit


# -- compare: the same prompts and seeds on the original and the edited model ----------------------
@dataclass
class Comparison:
    original: list[tuple[Image.Image, str]]
    edited: list[tuple[Image.Image, str]]
    settings: dict[str, Any]
    note: str = ""


def _settings(model: DemoModel, steps: Any, guidance: Any) -> dict[str, Any]:
    settings = model.settings
    if steps not in (None, ""):
        steps_int = int(float(steps))
        if not 1 <= steps_int <= MAX_STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {steps_int}")
        settings["num_inference_steps"] = steps_int
    if guidance not in (None, ""):
        settings["guidance_scale"] = float(guidance)
    return settings


def _generate(model: DemoModel, prompts: list[str], seeds: list[int], settings: dict, tick: Callable[[], None]):
    from conceptedit.generation import generate

    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        tick()
        return kwargs

    return generate(model.pipe, prompts, seeds, callback_on_step_end=on_step, **settings)


def compare(
    model: DemoModel,
    stack: Sequence[StackEntry],
    prompts: str | Sequence[str],
    seeds: str | Sequence[int] | int = "0",
    steps: Any = None,
    guidance: Any = None,
    progress: Progress = _no_progress,
) -> Comparison:
    """Generate every (prompt, seed) on the original model, then with the stack applied, same seeds."""
    prompt_list, seed_list = parse_prompts(prompts), parse_seeds(seeds)
    settings = _settings(model, steps, guidance)
    pairs = [(p, s) for p in prompt_list for s in seed_list]
    all_prompts, all_seeds = [p for p, _ in pairs], [s for _, s in pairs]
    captions = [f"seed {s} · {p}" for p, s in pairs]
    runs = 2 if stack else 1
    batches = -(-len(pairs) // 8)
    total = max(1, runs * batches * int(settings.get("num_inference_steps", 50)))
    done = [0]

    def tick(phase: str) -> Callable[[], None]:
        def step() -> None:
            done[0] += 1
            progress(min(done[0] / total, 1.0), phase)

        return step

    with model.lock:
        progress(0.0, "original model")
        original = _generate(model, all_prompts, all_seeds, settings, tick("original model"))
        if stack:
            with applied(model, stack):
                edited = _generate(model, all_prompts, all_seeds, settings, tick("with the edits"))
    note = "" if stack else "The stack is empty, so there is nothing to compare: fit or load an edit first."
    return Comparison(
        original=list(zip(original, captions, strict=True)),
        edited=list(zip(edited, captions, strict=True)) if stack else [],
        settings=settings,
        note=note,
    )


def for_display(image: Image.Image, min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """Small model outputs scaled up by a whole factor (nearest neighbour), so pixels stay sharp."""
    factor = max(1, -(-min_side // max(1, min(image.size))))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


# -- inspect: decisions and features of runtime edits ----------------------------------------------
@dataclass
class Inspection:
    decisions: list[dict[str, Any]]  # edit, prompt, fired, score, threshold
    features: list[dict[str, Any]]  # edit, prompt, rank, feature, activation (+ any extra keys)
    message: str


def inspect_stack(
    model: DemoModel, stack: Sequence[StackEntry], prompts: str | Sequence[str], top_n: int = 10
) -> Inspection:
    """For edits that classify prompts (ItD) and edits that explain them (SAE features)."""
    classifiers = [e for e in stack if isinstance(e.edit, PromptClassifier)]
    explainers = [e for e in stack if isinstance(e.edit, FeatureExplainer)]
    if not classifiers and not explainers:
        what = "The stack is empty." if not stack else "None of the edits in the stack can be inspected."
        return Inspection(
            [],
            [],
            f"{what} Inspection needs an edit that decides per prompt whether it intervenes "
            "(a prompt classifier, e.g. ItD) or that explains prompts by SAE features.",
        )
    prompt_list = parse_prompts(prompts)
    top_n = max(1, int(top_n or 10))
    decisions: list[dict[str, Any]] = []
    features: list[dict[str, Any]] = []
    with model.lock, applied(model, stack) as handles:
        by_entry = dict(zip((e.id for e in stack), handles, strict=True))
        for entry in classifiers:
            for d in by_entry[entry.id].classify(prompt_list):
                decisions.append(
                    {
                        "edit": entry.label,
                        "prompt": d.prompt,
                        "fired": "yes" if d.fired else "no",
                        "score": round(float(d.score), 4),
                        "threshold": round(float(d.threshold), 4),
                    }
                )
        for entry in explainers:
            for prompt in prompt_list:
                for rank, row in enumerate(by_entry[entry.id].explain(prompt, top_n), 1):
                    extra = {k: v for k, v in row.items() if k not in ("feature", "activation")}
                    features.append(
                        {
                            "edit": entry.label,
                            "prompt": prompt,
                            "rank": rank,
                            "feature": row.get("feature"),
                            "activation": round(float(row.get("activation", 0.0)), 4),
                            **extra,
                        }
                    )
    fired = sum(1 for d in decisions if d["fired"] == "yes")
    parts = []
    if classifiers:
        parts.append(f"{fired} of {len(decisions)} prompt decisions intervened")
    if explainers:
        parts.append(f"top {top_n} features of {len(prompt_list)} prompt(s)")
    return Inspection(decisions, features, "; ".join(parts) + ".")


# -- edit: one image under an instruction ----------------------------------------------------------
def _images_of(result: Any) -> list[Image.Image]:
    import numpy as np

    if isinstance(result, Image.Image):
        return [result]
    if hasattr(result, "images"):
        return _images_of(result.images)
    if isinstance(result, dict) and "image" in result:
        return _images_of(result["image"])
    if isinstance(result, np.ndarray):
        array = result if result.dtype == np.uint8 else (np.clip(result, 0, 1) * 255).round().astype(np.uint8)
        return [Image.fromarray(a) for a in (array if array.ndim == 4 else [array])]
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, Image.Image) for r in result):
        return list(result)
    raise ConceptEditError(f"the plugin returned {type(result).__name__}, not an image")


def edit_image(
    model: DemoModel,
    name: str,
    values: dict[str, Any],
    image: Image.Image | None,
    source_prompt: str,
    target_prompt: str,
    concepts: str | Sequence[str] | None = None,
    seed: Any = 0,
    progress: Progress = _no_progress,
) -> tuple[Image.Image, list[Image.Image]]:
    """Run an ``edit`` plugin; without an uploaded image, the source prompt is generated first."""
    plugin = make_plugin(name, values)
    source_prompt, target_prompt = (source_prompt or "").strip(), (target_prompt or "").strip()
    if not source_prompt or not target_prompt:
        raise RequestError("give both a source prompt (what the image shows) and a target prompt (what it should)")
    seed_int = parse_seeds(seed, limit=1)[0]
    targets = parse_concepts(concepts) or [target_prompt]
    with model.lock:
        if image is None:
            from conceptedit.generation import generate

            progress(0.0, "generating the source image")
            image = generate(model.pipe, [source_prompt], [seed_int], **model.settings)[0]
        image = image.convert("RGB")
        extra = {"image": image, "source_prompt": source_prompt, "target_prompt": target_prompt, "seed": seed_int}
        request = Request(targets=targets, extra=extra)
        result = plugin.fit(model.pipe, request, progress=progress)
    progress(1.0, "done")
    return image, _images_of(result)


# -- analyze: a report -----------------------------------------------------------------------------
def analyze(
    model: DemoModel,
    stack: Sequence[StackEntry],
    name: str,
    values: dict[str, Any],
    targets: str | Sequence[str],
    preserve: str | Sequence[str] | None = None,
    with_stack: bool = True,
    progress: Progress = _no_progress,
) -> Report:
    plugin = make_plugin(name, values)
    request = Request(targets=parse_concepts(targets), preserve=parse_concepts(preserve))
    with model.lock, applied(model, stack if with_stack else []):
        report = plugin.fit(model.pipe, request, progress=progress)
    if not isinstance(report, Report):
        raise ConceptEditError(f"plugin {name!r} returned {type(report).__name__}, not a report")
    return report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "_(empty)_"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(report: Report) -> str:
    parts = [f"### {report.title}"]
    if report.summary:
        parts.append(report.summary)
    for table_name, rows in report.tables.items():
        parts.append(f"**{table_name}**\n\n{markdown_table(rows)}")
    return "\n\n".join(parts)


def report_figures(report: Report) -> list[tuple[str, str]]:
    return [(str(path), caption) for caption, path in report.figures.items() if Path(path).is_file()]
