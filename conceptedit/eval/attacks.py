"""Attacks in an evaluation: the config's ``attacks:`` section (attack × edit).

Per (attack, edit): the attack's prompts are found against the edited pipeline (white-box) or once on
the unedited model (black-box: the same prompts for every edit of a concept), cached under
``<cache>/attacks/<key>`` like fitted edits, then generated on the edit and on the base model with the
same seeds as the prompt set ``attack:<name>[@<edit>][<concept>]`` (role ``attack``). The label
metrics read those rows as ``attack_success_rate``; base rows are the sanity check (the prompts still
produce the concept on the unedited model). Attacks that fit images get images of the concept made
by the unedited model from generic prompts naming it, at the attack's seeds (as the reference
UnlearnDiffAtk dataset pairs each prompt with its image and seed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conceptedit.attack import ATTACK_FILE, AttackPlugin, AttackSet, attack_key, inject
from conceptedit.config import config_to_dict
from conceptedit.eval.config import AttackSpec, PromptSetSpec
from conceptedit.eval.metrics import BASE
from conceptedit.eval.prompts import PromptRow
from conceptedit.toolkit import payload_hash

if TYPE_CHECKING:
    from conceptedit.eval.runner import Evaluation, LoadedEdit


def prompt_set_name(spec: AttackSpec, plugin: AttackPlugin, edit: str, concept: str) -> str:
    return f"attack:{spec.name}" + (f"@{edit}" if plugin.white_box else "") + f"[{concept}]"


def concept_images(pipe: Any, plugin: AttackPlugin, spec: AttackSpec, concept: str, settings: dict[str, Any]):
    """Images of the concept from the unedited pipeline, and the prompts that made them."""
    from conceptedit.generation import generate

    prompts = plugin.concept_prompts(concept, None, spec.images)
    seeds = [spec.seed + i for i in range(spec.images)]
    return generate(pipe, prompts, seeds, batch_size=min(16, spec.images), **settings), prompts


def find_attack(
    ev: Evaluation, pipe: Any, mkey: str, spec: AttackSpec, plugin: AttackPlugin, edit: LoadedEdit, concept: str
) -> AttackSet:
    """The attack's prompts for (edit, concept): from the cache, else run (main process) and saved."""
    from conceptedit.generation import generation_settings

    payload = {
        "model": mkey,
        "edit": edit.key if plugin.white_box else "",
        "plugin": plugin.name,
        "config": config_to_dict(plugin.config),
        "concept": concept,
        "seed": spec.seed,
        "images": spec.images if plugin.needs_images else 0,
        "generation": ev.cfg.generation.settings(),
    }
    folder = ev.cfg.cache_path / "attacks" / attack_key(payload)
    if ev.dist.is_main and not (folder / ATTACK_FILE).is_file():
        images = prompts = None
        if plugin.needs_images:
            settings = generation_settings(pipe, **ev.cfg.generation.settings())
            images, prompts = concept_images(pipe, plugin, spec, concept, settings)
        handle = edit.edit.apply(pipe) if plugin.white_box else None
        try:
            result = plugin.attack(pipe, concept, images=images, prompts=prompts, seed=spec.seed)
        finally:
            if handle is not None:
                handle.remove()
        result.save(folder)
    ev.dist.wait()
    return AttackSet.load(folder)


def run_attacks(
    ev: Evaluation, pipe: Any, mkey: str, model: str, loaded: list[LoadedEdit], done: set[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Find, generate and score every (attack, edit) of the config; returns what each attack cost."""
    from conceptedit.eval.runner import PromptSetInstance, _with_concept
    from conceptedit.registry import get_plugin

    records: list[dict[str, Any]] = []
    generated: set[tuple[str, str]] = set()  # (prompt set, edit) already run here (shared black-box sets)
    for spec in ev.cfg.attacks:
        plugin = get_plugin(spec.plugin).for_pipeline(pipe, spec.config)
        for edit in [e for e in loaded if not spec.edits or e.name in spec.edits]:
            targets = edit.edit.manifest.targets
            concept = targets[0]
            result = find_attack(ev, pipe, mkey, spec, plugin, edit, concept)
            name = prompt_set_name(spec, plugin, edit.name, concept)
            rows = [
                _with_concept(PromptRow(p.prompt, p.seed, i, "attack"), targets) for i, p in enumerate(result.prompts)
            ]
            instance = PromptSetInstance(name, PromptSetSpec(name=name, builtin="attack", attack=True), rows)
            injections = [i for i in (p.injection() for p in result.prompts) if i is not None]
            # images with injected vectors are cached under their own model key: the text alone is not the prompt
            vectors = [p.vectors.tolist() for p in result.prompts if p.vectors is not None]
            key = payload_hash({"model": mkey, "vectors": vectors}) if injections else mkey
            for target in (None, edit):
                edit_name = target.name if target else BASE
                if (name, edit_name) in generated:
                    continue
                generated.add((name, edit_name))
                items = [
                    (instance, r, r.evaluation_seed)
                    for r in rows
                    if (model, edit_name, name, r.case_number, r.evaluation_seed) not in done
                ]
                mine = items[ev.dist.index :: ev.dist.count]
                if mine:
                    with inject(pipe, injections):
                        ev._run_items(pipe, key, model, target, mine)
            records.append(
                {
                    "model": model,
                    "attack": spec.name,
                    "plugin": plugin.name,
                    "edit": edit.name,
                    "concept": concept,
                    "prompt_set": name,
                    "white_box": plugin.white_box,
                    "n_prompts": len(result.prompts),
                    "seconds": result.seconds,
                    "seconds_per_prompt": round(result.seconds_per_prompt, 3),
                    "prompts": [p.prompt for p in result.prompts],
                }
            )
    return records
