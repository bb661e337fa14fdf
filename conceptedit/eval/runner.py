"""``evaluate(config)``: generate (batched, seeded, cached), score, store (resumable), report.

Work items are (model, edit, prompt set, case, seed). Base images (no edit) are generated for every
prompt set so edited images compare pairwise with the same seeds. Under ``accelerate launch`` each
process takes every n-th pending item and writes to the same store; the main process fits edits
first (once, cached by config hash) and writes the report after all processes finish.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from conceptedit.edits.base import Edit
from conceptedit.errors import ConfigError
from conceptedit.eval.cache import ImageCache, image_key
from conceptedit.eval.config import EditSpec, EvalConfig, PromptSetSpec, load_config
from conceptedit.eval.metrics import BASE, Group, Metric, MetricResult, ModelContext, create_metric
from conceptedit.eval.metrics.labels import concept_label
from conceptedit.eval.prompts import PromptRow, builtin_prompt_set, read_prompt_csv
from conceptedit.eval.store import ImageRow, ResultStore
from conceptedit.fingerprint import fingerprint
from conceptedit.toolkit import payload_hash


@dataclass
class PromptSetInstance:
    """A prompt set as used by one edit: built-in sets are generated for the edit's targets."""

    name: str
    spec: PromptSetSpec
    rows: list[PromptRow]


@dataclass
class LoadedEdit:
    name: str
    edit: Edit
    key: str


class _Distributed:
    """accelerate's PartialState when launched with several processes; a trivial stand-in otherwise."""

    def __init__(self) -> None:
        import os

        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())

    @property
    def index(self) -> int:
        return self.state.process_index if self.state else 0

    @property
    def count(self) -> int:
        return self.state.num_processes if self.state else 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @property
    def device(self) -> torch.device | None:
        return self.state.device if self.state else None

    def wait(self) -> None:
        if self.state:
            self.state.wait_for_everyone()


def model_key(pipe: Any, source: str) -> str:
    parts = {"source": source}
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            parts[name] = fingerprint(module)
    return payload_hash(parts)


def edit_key(edit: Edit) -> str:
    m = edit.manifest
    payload = {"type": m.edit_type, "files": m.files, "extra": m.extra, "config": m.config, "targets": m.targets}
    if not m.files and edit.tensors:  # not saved yet: hash the tensors themselves
        payload["tensors"] = {
            k: hashlib.sha256(v.detach().cpu().numpy().tobytes()).hexdigest() for k, v in sorted(edit.tensors.items())
        }
    return payload_hash(payload)


def plan_prompt_sets(
    cfg: EvalConfig, targets: dict[str, list[str]]
) -> tuple[dict[str, PromptSetInstance], dict[str, list[str]]]:
    """Prompt-set instances (built-in sets once per distinct target list) and, per edit name (base
    included), the instances it is evaluated on. Base covers every instance so edits compare pairwise."""
    instances: dict[str, PromptSetInstance] = {}
    plan: dict[str, list[str]] = {BASE: [], **{name: [] for name in targets}}
    for ps in cfg.prompt_sets:
        if ps.csv:
            instances[ps.name] = PromptSetInstance(ps.name, ps, _build_instance(ps, None))
            for names in plan.values():
                names.append(ps.name)
            continue
        for edit_name, concepts in targets.items():
            name = f"{ps.name}[{'+'.join(concepts)}]"
            if name not in instances:
                instances[name] = PromptSetInstance(name, ps, _build_instance(ps, concepts))
                plan[BASE].append(name)
            plan[edit_name].append(name)
    return instances, plan


def _build_instance(ps: PromptSetSpec, targets: list[str] | None) -> list[PromptRow]:
    if ps.csv:
        rows = read_prompt_csv(ps.csv, ps.limit)
    else:
        if not targets:
            raise ConfigError(f"built-in prompt set {ps.name!r} is made for the edits' target concepts; add an edit")
        rows = builtin_prompt_set(ps.builtin)(targets, ps.per_role, 0)
        rows = rows[: ps.limit] if ps.limit else rows
    if ps.attack:
        rows = [replace(r, role=r.role or "attack") for r in rows]
    return rows


class Evaluation:
    def __init__(self, cfg: EvalConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.dist = _Distributed()
        self.out = cfg.output_dir
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = ImageCache(cfg.cache_path)
        # The main process creates the store (switching SQLite to WAL needs the file to itself), then the
        # others open it.
        if self.dist.is_main:
            self.store = ResultStore(self.out / "results.sqlite")
            self._check_same_config()
        self.dist.wait()
        if not self.dist.is_main:
            self.store = ResultStore(self.out / "results.sqlite")
            self._check_same_config()
        from conceptedit.devices import pick_device

        self.device = self.dist.device or pick_device(cfg.device)
        self.metrics: list[Metric] = [create_metric(m.name, m.options, self.device) for m in cfg.metrics]
        self.unavailable: dict[str, str] = {}
        for metric in self.metrics:
            reason = metric.unavailable_reason()
            if reason:
                self.unavailable[metric.name] = reason
        self.active = [m for m in self.metrics if m.name not in self.unavailable]
        self.contexts: dict[str, ModelContext] = {}  # per evaluated model, given to metrics before scoring

    def _metrics_for(self, model: str) -> list[Metric]:
        """The active metrics told which model they score (``Metric.use_model``); one that cannot score
        this model (e.g. no CLIP for it offline) is reported unavailable for it and the run goes on."""
        context = self.contexts.get(model)
        if context is None:
            return self.active
        usable = []
        for metric in self.active:
            reason = metric.use_model(context)
            if reason is None:
                usable.append(metric)
            else:
                self.unavailable[metric.name if len(self.cfg.models) == 1 else f"{metric.name} ({model})"] = reason
        return usable

    def _check_same_config(self) -> None:
        saved = self.store.get_meta("config")
        current = self.cfg.to_dict()
        if saved is None:
            if self.dist.is_main:
                self.store.set_meta("config", current)
            return
        strip = ("output", "cache_dir", "device")
        if {k: v for k, v in saved.items() if k not in strip} != {k: v for k, v in current.items() if k not in strip}:
            raise ConfigError(
                f"{self.out} holds results of a different config; use another 'output' folder or delete it"
            )

    # -- edits --------------------------------------------------------------------------------
    def _load_edit(self, spec: EditSpec, pipe: Any, model: str) -> Edit:
        if spec.path:
            return Edit.load(spec.path)
        folder = self.cfg.cache_path / "edits" / spec.fit_key(model)
        if self.dist.is_main and not (folder / "manifest.json").is_file():
            from conceptedit.plugin import Request
            from conceptedit.registry import get_plugin

            plugin = get_plugin(spec.plugin).for_pipeline(pipe, spec.config)
            bar = tqdm(total=100, desc=f"fit {spec.name}", disable=not self.progress, unit="%")

            def report(fraction: float, message: str) -> None:
                bar.n = round(100 * min(max(fraction, 0.0), 1.0))
                bar.set_postfix_str(message)
                bar.refresh()

            edit = plugin.fit(pipe, Request(targets=spec.concepts, preserve=spec.preserve), progress=report)
            bar.close()
            edit.save(folder)
        self.dist.wait()
        return Edit.load(folder)

    # -- generation ---------------------------------------------------------------------------
    def _run_items(
        self,
        pipe: Any,
        mkey: str,
        model: str,
        edit: LoadedEdit | None,
        items: list[tuple[PromptSetInstance, PromptRow, int]],
    ) -> None:
        from conceptedit.generation import generate, generation_settings

        gen = self.cfg.generation
        common = generation_settings(pipe, **gen.settings())

        def settings_of(row: PromptRow) -> dict[str, Any]:  # per-row I2P settings win when switched on
            return {**common, **row.settings} if gen.per_row_settings else common

        edit_name = edit.name if edit else BASE
        edit_keys = [edit.key] if edit else []
        metrics = self._metrics_for(model)
        handle = edit.edit.apply(pipe) if edit else None
        try:
            bar = tqdm(total=len(items), desc=f"{model}/{edit_name}", disable=not self.progress, unit="img")
            for start in range(0, len(items), gen.batch_size):
                chunk = items[start : start + gen.batch_size]
                row_settings = [settings_of(r) for _, r, _ in chunk]
                keys = [
                    image_key(mkey, edit_keys, r.prompt, gen.negative_prompt, s, st)
                    for (_, r, s), st in zip(chunk, row_settings, strict=True)
                ]
                images = [self.cache.get(k) for k in keys]
                missing = [i for i, im in enumerate(images) if im is None]
                by_settings: dict[str, list[int]] = {}  # one generate call per distinct settings
                for i in missing:
                    by_settings.setdefault(repr(sorted(row_settings[i].items())), []).append(i)
                for group in by_settings.values():
                    prompts = [chunk[i][1].prompt for i in group]
                    seeds = [chunk[i][2] for i in group]
                    made = generate(
                        pipe,
                        prompts,
                        seeds,
                        batch_size=len(group),
                        negative_prompt=gen.negative_prompt,
                        **row_settings[group[0]],
                    )
                    for i, image in zip(group, made, strict=True):
                        self.cache.put(keys[i], image)
                        images[i] = image
                rows = [
                    ImageRow(
                        model,
                        edit_name,
                        inst.name,
                        r.case_number,
                        s,
                        r.prompt,
                        r.role,
                        r.concept,
                        r.labels,
                        k,
                        str(self.cache.path(k)),
                        {},
                    )
                    for (inst, r, s), k in zip(chunk, keys, strict=True)
                ]
                for metric in metrics:
                    scores = metric.score_images(rows, images)  # type: ignore[arg-type]
                    for row, score in zip(rows, scores, strict=True):
                        if score:
                            row.per_image[metric.name] = score
                self.store.add(rows)
                bar.update(len(chunk))
            bar.close()
        finally:
            if handle is not None:
                handle.remove()

    def run(self) -> dict[str, Any] | None:
        from conceptedit.loading import load_pipeline, model_files

        done = self.store.done_keys()
        attack_runs: list[dict[str, Any]] = []  # what each (attack, edit) found and cost (config 'attacks')
        image_edit_runs: list[dict[str, Any]] = []  # config 'image_edits' (main process only)
        for model in self.cfg.models:
            pipe = load_pipeline(model, device=self.device)
            pipe.set_progress_bar_config(disable=True)
            mkey = model_key(pipe, model)
            self.contexts[model] = ModelContext(model, model_files(pipe))
            self._metrics_for(model)  # unavailable-for-this-model reasons are recorded even when nothing is pending
            loaded = [LoadedEdit(s.name, self._load_edit(s, pipe, model), "") for s in self.cfg.edits]
            for item in loaded:
                item.key = edit_key(item.edit)
            targets = {item.name: item.edit.manifest.targets for item in loaded}
            instances, plan = plan_prompt_sets(self.cfg, targets)
            for edit in [None, *loaded]:
                edit_name = edit.name if edit else BASE
                items = []
                for inst_name in plan[edit_name]:
                    inst = instances[inst_name]
                    for row in inst.rows:
                        if inst.spec.attack and not row.concept and edit is not None:
                            row = _with_concept(row, edit.edit.manifest.targets)
                        for j in range(self.cfg.seeds_per_prompt):
                            seed = row.evaluation_seed + j
                            if (model, edit_name, inst.name, row.case_number, seed) not in done:
                                items.append((inst, row, seed))
                mine = items[self.dist.index :: self.dist.count]
                if mine:
                    self._run_items(pipe, mkey, model, edit, mine)
            if self.cfg.attacks:
                from conceptedit.eval.attacks import run_attacks

                attack_runs += run_attacks(self, pipe, mkey, model, loaded, done)
            if self.cfg.image_edits and self.dist.is_main:
                from conceptedit.eval.image_edits import run_image_edits

                image_edit_runs += run_image_edits(self, pipe, mkey, model)
            del pipe
        self.dist.wait()
        if not self.dist.is_main:
            return None
        results = self.aggregate()
        if attack_runs:
            results["attacks"] = attack_runs
        if image_edit_runs:
            results["image_edits"] = image_edit_runs
        from conceptedit.eval.report import write_report

        write_report(self.out, self.cfg, results, list(self.store.rows()))
        return results

    # -- aggregation --------------------------------------------------------------------------
    def aggregate(self) -> dict[str, Any]:
        from PIL import Image

        rows = list(self.store.rows())
        groups: dict[tuple[str, str, str], list[ImageRow]] = {}
        for row in rows:
            groups.setdefault((row.model, row.edit, row.prompt_set), []).append(row)
        cache: dict[str, Image.Image] = {}

        def load_image(path: str) -> Image.Image:
            if path not in cache:
                with Image.open(path) as image:
                    cache[path] = image.convert("RGB")
            return cache[path]

        out_groups = []
        for (model, edit, prompt_set), members in sorted(groups.items()):
            base = {(r.case_number, r.seed): r for r in groups.get((model, BASE, prompt_set), [])}
            group = Group(model, edit, prompt_set, members, base, load_image)
            metrics: dict[str, MetricResult] = {}
            for metric in self._metrics_for(model):
                metrics.update(metric.compute(group))
            out_groups.append(
                {
                    "model": model,
                    "edit": edit,
                    "prompt_set": prompt_set,
                    "n_images": len(members),
                    "metrics": {k: v.to_dict() for k, v in sorted(metrics.items())},
                }
            )
        return {
            "name": self.cfg.name,
            "config": self.cfg.to_dict(),
            "groups": out_groups,
            "unavailable": self.unavailable,
            "n_images": len(rows),
        }


def _with_concept(row: PromptRow, targets: list[str]) -> PromptRow:
    """Attack rows without a concept column are scored against the edit's (first) target concept, as
    ``family:value`` when a registered label-reading metric knows the word (``concept_label``)."""
    return replace(row, concept=concept_label(targets[0])) if targets else row


def evaluate(config: EvalConfig | str | Path, progress: bool = True) -> dict[str, Any] | None:
    """Run an evaluation config (a YAML path, a built-in name, or an EvalConfig) and return the
    aggregated results (``None`` on non-main processes of a distributed run)."""
    cfg = config if isinstance(config, EvalConfig) else load_config(config)
    evaluation = Evaluation(cfg, progress=progress)
    try:
        return evaluation.run()
    finally:
        evaluation.store.close()
