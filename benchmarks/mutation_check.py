"""Mutation check: break the code on purpose, one curated mutation at a time, and see whether the tests notice.
(Long because it is a table: 56 curated mutations with their tests, then a small runner.)

Each mutation is an exact text replacement in one file of the core (``conceptedit/``) or the plugins
(``plugins/``) — a sign flip, an off-by-one, a dropped step, swapped arguments — with the test files (or
test ids) that should catch it. The script never touches the working tree: it exports the committed tree
(``git archive HEAD``; ``--worktree`` copies the working tree instead) to a temporary folder, makes the
copy importable as ``conceptedit`` (``PYTHONPATH`` = the copy, and ``conceptedit/plugins`` etc. linked to
the copy's top-level folders, as the editable install maps them), checks that the unmutated tests pass
there, then applies each mutation to the copy, runs its tests (``-x``, stop at the first failure) and
restores the file. At the end the test that caught each mutation is run once more on the unmutated copy:
a test that fails there too proves nothing (``--baseline`` runs every selected test unmutated first
instead, which costs a full pass).

A mutation is *caught* when its tests fail (and the failing test passes unmutated), *missed* when they
pass, *stale* when its original snippet is no longer in the file (the code changed; update the list),
*invalid* when the failing test fails without the mutation too. The score per package is caught /
(caught + missed).

    python benchmarks/mutation_check.py                 # every mutation (~15-25 min on 2 busy cores)
    python benchmarks/mutation_check.py --only esd-negative-guidance-sign,lora-export-drops-scale
    python benchmarks/mutation_check.py --list
    python benchmarks/mutation_check.py --tests-from 8678fab   # today's code, the tests of that revision

``--tests-from REV`` replaces the copy's ``tests/`` folder with the one of git revision ``REV`` (the code
stays HEAD's, or the working tree's with ``--worktree``): the score of an older suite against the same
mutations, e.g. a "before" figure. Test ids that REV does not have (file or function) are left out; a
mutation left with no test at all counts as missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the editable install maps these top-level folders into the conceptedit namespace (pyproject.toml)
NAMESPACE_LINKS = {"plugins": "plugins", "pipelines": "pipelines", "datasets": "datasets"}


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""

    @property
    def package(self) -> str:
        parts = Path(self.file).parts
        if parts[0] == "plugins":
            return "plugins"
        return "conceptedit." + parts[1].removesuffix(".py") if len(parts) > 2 else "conceptedit (core)"


MUTATIONS: list[Mutation] = [
    # -- the eight breaks named in issue 22 ----------------------------------------------------------------
    Mutation(
        "esd-negative-guidance-sign",
        "plugins/esd.py",
        "target = eps_from - cfg.negative_guidance * (eps_c - eps_u)",
        "target = eps_from + cfg.negative_guidance * (eps_c - eps_u)",
        (
            "tests/test_esd.py::test_esd_erases_leaves_pipeline_alone_and_round_trips",
            "tests/test_effects.py::test_esd_lowers_the_concept_and_keeps_others",
        ),
        "ESD trains towards the concept instead of away",
    ),
    Mutation(
        "generate-edit-not-applied",
        "conceptedit/cli/core.py",
        "handles = [e.apply(pipe) for e in edits]",
        "handles = []",
        ("tests/test_cli.py::test_erase_then_generate_with_the_edit",),
        "`generate --edit` loads and records the edit but never applies it",
    ),
    Mutation(
        "lora-export-drops-scale",
        "conceptedit/edits/lora.py",
        ".weight.detach().cpu().clone() * scale",
        ".weight.detach().cpu().clone()",
        (
            "tests/test_edits.py::test_lora_file_loads_with_diffusers",
            "tests/test_edits.py::test_trained_lora_with_alpha_other_than_rank_exports_its_scale",
            "tests/test_esd.py::test_esd_lora_artifact_and_options",
        ),
        "LoRA export loses alpha / r",
    ),
    Mutation(
        "eval-resume-redoes-finished-rows",
        "conceptedit/eval/runner.py",
        "if (model, edit_name, inst.name, row.case_number, seed) not in done:",
        "if True:",
        (
            "tests/test_eval.py::test_second_run_reuses_cached_images",
            "tests/test_eval_work.py::test_resume_generates_and_scores_only_unfinished_rows",
            "tests/test_eval.py::test_resume_after_sigkill_loses_and_duplicates_nothing",
        ),
        "resume regenerates and rescores every finished row",
    ),
    Mutation(
        "eval-every-process-does-all-work",
        "conceptedit/eval/runner.py",
        "mine = items[self.dist.index :: self.dist.count]",
        "mine = items",
        (
            "tests/test_eval_work.py::test_processes_split_the_rows_disjoint_and_complete",
            "tests/test_eval.py::test_two_processes_with_accelerate",
        ),
        "two accelerate processes each do all the work",
    ),
    Mutation(
        "sae-encode-skips-b-pre",
        "conceptedit/sae/base.py",
        "xc = self._scale(x.reshape(-1, self.d_in)) - self.b_pre",
        "xc = self._scale(x.reshape(-1, self.d_in))",
        (
            "tests/test_sae_paths.py",
            "tests/test_sae_arch.py::test_sparse_decode_equals_dense_decode",
            "tests/test_sae_io.py",
        ),
        "SAE inference path does not subtract b_pre (training path does)",
    ),
    Mutation(
        "demo-edited-gallery-without-stack",
        "conceptedit/demo/engine/erase.py",
        "with applied(model, stack):\n                edited = _generate(",
        "with applied(model, stack[:0]):\n                edited = _generate(",
        ("tests/test_demo.py::test_fit_and_compare_on_the_same_pipeline",),
        "the demo's edited gallery is generated without the edits",
    ),
    Mutation(
        "demo-edited-gallery-other-seed",
        "conceptedit/demo/engine/erase.py",
        'edited = _generate(model, all_prompts, all_seeds, settings, tick("with the edits"))',
        'edited = _generate(model, all_prompts, [s + 1 for s in all_seeds], settings, tick("with the edits"))',
        ("tests/test_demo.py::test_fit_and_compare_on_the_same_pipeline",),
        "the demo's edited gallery uses other seeds than the original",
    ),
    Mutation(
        "component-edit-arithmetic-undo",
        "conceptedit/edits/weights.py",
        "    def _new_value(self, param: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:\n"
        "        return stored.to(param.device)\n",
        "    def _new_value(self, param: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:\n"
        "        return stored.to(param.device)\n\n"
        "    def _attach(self, pipe: Any) -> Undo:  # mutation: undo by arithmetic, not saved originals\n"
        "        params = [resolve_parameter(pipe, k) for k in self.tensors]\n"
        "        new = list(self.tensors.values())\n"
        "        steps = [(p, s.to(p.device).float() - p.detach().float()) for p, s in zip(params, new)]\n"
        "        with torch.no_grad():\n"
        "            for p, s in zip(params, self.tensors.values()):\n"
        "                p.copy_(s.to(p.device, p.dtype))\n\n"
        "        def undo() -> None:\n"
        "            with torch.no_grad():\n"
        "                for p, step in steps:\n"
        "                    p.copy_((p.detach().float() - step).to(p.dtype))\n\n"
        "        return undo\n",
        ("tests/test_edits.py::test_round_trip_apply_and_exact_removal",),
        "component edit removal undoes by arithmetic instead of restoring the saved originals",
    ),
    Mutation(
        "itd-no-retain-filtering",
        "plugins/itd.py",
        "features = set().union(*target_sets) - retain_union",
        "features = set().union(*target_sets)",
        ("tests/test_itd.py::test_retain_prompts_filter_features", "tests/test_itd.py::test_artifact_round_trip"),
        "ItD keeps latents that also fire on retain prompts",
    ),
    # -- more: sign flips, off-by-ones, dropped steps, swapped arguments -------------------------------------
    Mutation(
        "esd-uncond-cond-swapped",
        "plugins/esd.py",
        "frozen, torch.cat([x_in] * 3), t, Conditioning.cat([uncond, cond, source])",
        "frozen, torch.cat([x_in] * 3), t, Conditioning.cat([cond, uncond, source])",
        (
            "tests/test_esd.py::test_esd_erases_leaves_pipeline_alone_and_round_trips",
            "tests/test_effects.py::test_esd_lowers_the_concept_and_keeps_others",
        ),
        "swapped arguments: conditional and unconditional branch exchanged",
    ),
    Mutation(
        "esd-sampler-option-ignored",
        "plugins/esd.py",
        'with student() if cfg.sampler == "trained" else contextlib.nullcontext():',
        "with contextlib.nullcontext():",
        (
            "tests/test_esd.py::test_sampler_option_picks_the_model_that_samples",
            "tests/test_esd.py::test_esd_lora_artifact_and_options",
        ),
        "sampler=trained silently samples with the frozen model",
    ),
    Mutation(
        "esd-strict-preset-adds-to-q",
        "plugins/esd.py",
        '"esd-x-strict": lambda n: "attn2.to_k" in n or "attn2.to_v" in n,',
        '"esd-x-strict": lambda n: "attn2.to_k" in n or "attn2.to_v" in n or "attn2.to_q" in n,',
        ("tests/test_esd.py::test_presets_select_the_reference_layers",),
        "wrong parameter preset",
    ),
    Mutation(
        "fewshot-descends-instead-of-ascends",
        "plugins/fewshot_unlearning.py",
        "loss = -self.denoising_loss(pipe, students, noise_scheduler, z, noise, t, pick(len(idx)))",
        "loss = self.denoising_loss(pipe, students, noise_scheduler, z, noise, t, pick(len(idx)))",
        (
            "tests/test_fewshot.py::test_images_from_a_folder_lora_and_early_stop",
            "tests/test_effects.py::test_fewshot_lowers_the_concept_and_keeps_others",
        ),
        "few-shot unlearning learns the concept instead of unlearning it",
    ),
    Mutation(
        "fewshot-v-prediction-target-dropped",
        "plugins/fewshot_unlearning.py",
        "target = noise_scheduler.get_velocity(latents, noise, timesteps)",
        "target = noise",
        (
            "tests/test_fewshot.py::test_denoising_loss_targets_the_models_prediction_type",
            "tests/test_fewshot.py::test_fewshot_on_sd2_with_v_prediction_and_refusal_of_other_families",
        ),
        "v-prediction models get the epsilon target",
    ),
    Mutation(
        "fewshot-early-stop-comparison-flipped",
        "plugins/fewshot_unlearning.py",
        "eval_losses[-1] >= eval_losses[0] * (1 + cfg.early_stop_margin)",
        "eval_losses[-1] <= eval_losses[0] * (1 + cfg.early_stop_margin)",
        ("tests/test_fewshot.py::test_images_from_a_folder_lora_and_early_stop",),
        "early stopping on the wrong side of the margin",
    ),
    Mutation(
        "trainable-ignores-lora-alpha",
        "plugins/_training.py",
        "r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=module_names",
        "r=lora_rank, lora_alpha=lora_rank, target_modules=module_names",
        (
            "tests/test_edits.py::test_trained_lora_with_alpha_other_than_rank_exports_its_scale",
            "tests/test_esd.py::test_esd_lora_artifact_and_options",
        ),
        "the lora_alpha setting is ignored",
    ),
    Mutation(
        "uce-erase-and-guide-swapped",
        "plugins/uce.py",
        "W_new = uce_closed_form(W_old, erase, guide, preserve,",
        "W_new = uce_closed_form(W_old, guide, erase, preserve,",
        (
            "tests/test_uce.py::test_uce_erases_keeps_preserved_and_round_trips",
            "tests/test_effects.py::test_uce_lowers_the_concept_and_keeps_others",
        ),
        "swapped arguments: the guide is mapped to the concept",
    ),
    Mutation(
        "uce-key-token-off-by-one",
        "plugins/uce.py",
        "last = int(ids.attention_mask[0].sum()) - 2",
        "last = int(ids.attention_mask[0].sum()) - 1",
        (
            "tests/test_uce.py::test_uce_erases_keeps_preserved_and_round_trips",
            "tests/test_effects.py::test_uce_lowers_the_concept_and_keeps_others",
        ),
        "off by one: the EOS token instead of the concept's last word",
    ),
    Mutation(
        "uce-delta-sign",
        "plugins/uce.py",
        'deltas[f"unet.{names[i]}.weight"] = W_new[j] - W_old[j]',
        'deltas[f"unet.{names[i]}.weight"] = W_old[j] - W_new[j]',
        (
            "tests/test_uce.py::test_uce_erases_keeps_preserved_and_round_trips",
            "tests/test_effects.py::test_uce_lowers_the_concept_and_keeps_others",
        ),
        "sign flip of the stored delta",
    ),
    Mutation(
        "uce-solver-drops-lambda-in-rhs",
        "conceptedit/sparsity/ridge.py",
        'B = torch.einsum("lno,n,ni->loi", v, w, k) + lamb * W',
        'B = torch.einsum("lno,n,ni->loi", v, w, k)',
        ("tests/test_uce.py::test_solver_satisfies_its_normal_equations",),
        "dropped term of the normal equations",
    ),
    Mutation(
        "negative-prompt-keeps-only-first-target",
        "plugins/negative_prompt.py",
        "text = self.config.separator.join(request.targets)",
        "text = request.targets[0]",
        ("tests/test_edits.py::test_negative_prompt_edit_needs_guidance_and_respects_user_negative",),
        "several targets: only the first reaches the negative prompt",
    ),
    Mutation(
        "negative-prompt-drops-user-negative",
        "conceptedit/edits/runtime.py",
        'return f"{user_negative}, {text}"',
        "return text",
        ("tests/test_edits.py::test_negative_prompt_edit_needs_guidance_and_respects_user_negative",),
        "append mode replaces the user's negative prompt",
    ),
    Mutation(
        "weight-delta-sign",
        "conceptedit/edits/weights.py",
        "return param.detach().float() + stored.to(param.device, torch.float32)",
        "return param.detach().float() - stored.to(param.device, torch.float32)",
        (
            "tests/test_edits.py::test_edit_accepts_same_model_in_other_dtype",
            "tests/test_uce.py::test_uce_erases_keeps_preserved_and_round_trips",
            "tests/test_effects.py::test_uce_lowers_the_concept_and_keeps_others",
        ),
        "a weight delta is subtracted",
    ),
    Mutation(
        "stack-remove-forgets-edits-above",
        "conceptedit/edits/base.py",
        "        for h, _ in above:\n            self.entries.append((h, h.edit._attach(self.pipe)))",
        "        for h, _ in above:\n            h.active = False",
        ("tests/test_edits.py::test_stacked_edits_remove_in_any_order",),
        "removing an edit from the middle drops the ones above it",
    ),
    Mutation(
        "stack-undo-in-push-order",
        "conceptedit/edits/base.py",
        "for _, undo in reversed(self.entries[index:]):",
        "for _, undo in self.entries[index:]:",
        (
            "tests/test_edits.py::test_stacked_edits_remove_in_any_order",
            "tests/test_edits.py::test_edits_on_the_same_weights_remove_in_any_order",
        ),
        "stacked edits undone bottom first: overlapping weights come back wrong",
    ),
    Mutation(
        "generate-drops-negative-prompt",
        "conceptedit/generation.py",
        "negative = None if negative_prompt is None else [negative_prompt] * len(chunk)",
        "negative = None",
        (
            "tests/test_edits.py::test_generate_passes_the_negative_prompt_and_seeds_through",
            "tests/test_itd.py::test_classifier_gates_the_edit",
        ),
        "generate ignores the user's negative prompt",
    ),
    Mutation(
        "generate-cli-ignores-csv-seeds",
        "conceptedit/cli/core.py",
        # (an earlier version replaced the seeds of the up-front check_request call only; read_prompt_csv
        # has already checked every CSV seed by then, so that mutant differed only in refusing an unused,
        # invalid --seed: nearly equivalent, and not the break described here)
        "rows += [(r.prompt, r.evaluation_seed, r.case_number) for r in",
        "rows += [(r.prompt, seed, r.case_number) for r in",
        ("tests/test_cli.py::test_erase_then_generate_with_the_edit",),
        "generate uses --seed for every CSV row instead of the row's evaluation_seed",
    ),
    Mutation(
        "eval-edit-not-applied",
        "conceptedit/eval/runner.py",
        "handle = edit.edit.apply(pipe) if edit else None",
        "handle = None",
        ("tests/test_eval.py::test_same_config_twice_gives_identical_images_and_metrics",),
        "evaluation scores base images as the edited ones",
    ),
    Mutation(
        "itd-threshold-from-max",
        "plugins/itd.py",
        "return float(factor * reached.min()), int(target_scores.numel() - reached.numel())",
        "return float(factor * reached.max()), int(target_scores.numel() - reached.numel())",
        (
            "tests/test_itd.py::test_classifier_gates_the_edit",
            "tests/test_itd.py::test_classify_reads_the_unedited_activations",
            "tests/test_itd.py::test_threshold_ignores_targets_the_feature_set_does_not_reach",
        ),
        "tau calibrated on the highest target score: target prompts below it pass unedited",
    ),
    Mutation(
        "itd-threshold-from-unreached-targets",
        "plugins/itd.py",
        "reached = target_scores[target_scores > 0]",
        "reached = target_scores",
        ("tests/test_itd.py::test_threshold_ignores_targets_the_feature_set_does_not_reach",),
        "a target no concept latent reaches sets tau = 0: the classifier fires on every prompt",
    ),
    Mutation(
        "itd-score-mean-by-default",
        "plugins/itd.py",
        'score: Literal["max", "mean"] = field(\n        default="max",',
        'score: Literal["max", "mean"] = field(\n        default="mean",',
        (
            "tests/test_itd.py::test_score_rule_is_max_or_mean_over_tokens_after_bos",
            "tests/test_itd_shapes.py::test_itd_classifier_separates_a_character_from_unrelated_prompts",
        ),
        "the mean over tokens as the default: long target captions set a low tau (5/24 false positives on v2.1)",
    ),
    Mutation(
        "itd-fires-below-threshold",
        "plugins/itd.py",
        "fire = self.scores(hidden, delta) >= self.tau",
        "fire = self.scores(hidden, delta) <= self.tau",
        ("tests/test_itd.py::test_classifier_gates_the_edit",),
        "comparison flipped",
    ),
    Mutation(
        "itd-edits-bos",
        "plugins/itd.py",
        "        delta = delta.reshape(b, t, d)\n        delta[:, 0] = 0.0\n",
        "        delta = delta.reshape(b, t, d)\n",
        (
            "tests/test_itd.py::test_classifier_gates_the_edit",
            "tests/test_itd.py::test_classify_reads_the_unedited_activations",
            "tests/test_itd.py::test_edit_leaves_the_bos_token_alone",
        ),
        "the BOS token is changed too",
    ),
    Mutation(
        "sae-topk-train-skips-b-pre",
        "conceptedit/sae/topk.py",
        "        xc = xn - self.b_pre\n        (vals, idx), aux_sel = self._select(xc, dead_mask)",
        "        xc = xn\n        (vals, idx), aux_sel = self._select(xc, dead_mask)",
        ("tests/test_sae_paths.py", "tests/test_sae_arch.py::test_forward_shapes_and_gradients"),
        "SAE training path does not subtract b_pre (inference path does)",
    ),
    Mutation(
        "sae-decode-drops-b-pre",
        "conceptedit/sae/base.py",
        "return (out + self.b_pre) / self.input_scale",
        "return out / self.input_scale",
        ("tests/test_sae_arch.py::test_sparse_decode_equals_dense_decode", "tests/test_sae_paths.py"),
        "decode forgets the pre-encoder bias",
    ),
    Mutation(
        "fingerprint-mismatch-ignored",
        "conceptedit/edits/base.py",
        "            problem = compare(fp, actual[name])\n            if problem:",
        "            problem = compare(fp, actual[name])\n            if False:",
        ("tests/test_edits.py::test_edit_refuses_another_base_model",),
        "an edit applies to another base model",
    ),
    # -- SDXL (tests/test_sdxl.py) --
    Mutation(
        "sdxl-context-from-last-layer",
        "conceptedit/conditioning.py",
        "        states.append(out.hidden_states[-2])",
        "        states.append(out.hidden_states[-1])",
        ("tests/test_sdxl.py::test_conditioning_is_what_the_pipelines_give_the_unet",),
        "SDXL's context read from the last layer instead of the penultimate one",
    ),
    Mutation(
        "sdxl-time-ids-dropped",
        "conceptedit/conditioning.py",
        '"time_ids": cond.time_ids.to(device, dtype)}',
        '"time_ids": torch.zeros_like(cond.time_ids).to(device, dtype)}',
        ("tests/test_sdxl.py::test_conditioning_is_what_the_pipelines_give_the_unet",),
        "the UNet gets no size conditioning",
    ),
    Mutation(
        "sdxl-uce-key-is-eos",
        "plugins/uce.py",
        "        last = int(ids.attention_mask[0].sum()) - 2",
        "        last = int(ids.attention_mask[0].sum()) - 1",
        ("tests/test_sdxl.py::test_uce_maps_the_concatenated_concept_key_to_the_guide",),
        "UCE edits the EOS row instead of the concept's last word",
    ),
    Mutation(
        "sdxl-fewshot-first-encoder-only",
        "plugins/fewshot_unlearning.py",
        "        for name, encoder, _ in text_encoders(pipe):",
        "        for name, encoder, _ in text_encoders(pipe)[:1]:",
        ("tests/test_sdxl.py::test_fewshot_trains_both_text_encoders_up_to_the_blocks_the_unet_reads",),
        "few-shot unlearning trains only SDXL's first text encoder",
    ),
    Mutation(
        "sdxl-fewshot-trains-unread-block",
        "plugins/fewshot_unlearning.py",
        '    if uses_added_conditioning(pipe) and not hasattr(encoder, "text_projection"):',
        "    if False:",
        ("tests/test_sdxl.py::test_fewshot_trains_both_text_encoders_up_to_the_blocks_the_unet_reads",),
        "the first encoder's last block, which SDXL never reads, trains",
    ),
    Mutation(
        "sdxl-itd-hooks-first-encoder",
        "plugins/itd.py",
        'component = "text_encoder_2" if family == SDXL else "text_encoder"',
        'component = "text_encoder"',
        ("tests/test_sdxl.py::test_itd_reads_the_second_encoder_by_default",),
        "ItD's SAE reads SDXL's first encoder by default",
    ),
    Mutation(
        "sdxl-negative-prompt-2-ignored",
        "conceptedit/edits/runtime.py",
        '                        if key == "negative_prompt" or given.get(key) is not None:',
        '                        if key == "negative_prompt":',
        ("tests/test_sdxl.py::test_negative_prompt_reaches_both_sdxl_negative_prompts",),
        "a user's negative_prompt_2 does not get the concept",
    ),
    Mutation(
        "realera-corpus-captions-not-keyed",
        "plugins/realera.py",
        "            pairs += corpus_contexts(corpus, word, self.config.anchor, self.config.context_from_corpus, gen)",
        "            corpus_contexts(corpus, word, self.config.anchor, self.config.context_from_corpus, gen)",
        ("tests/test_realera_context.py::test_corpus_captions_are_keyed_in_context",),
        "RealEra keys the templates only, whatever context_from_corpus says",
    ),
    Mutation(
        "realera-corpus-matches-inside-words",
        "plugins/_realera_context.py",
        'rf"(?<![\\w-]){re.escape(word.strip())}(?![\\w-])"',
        'rf"{re.escape(word.strip())}"',
        (
            "tests/test_realera_context.py::test_corpus_contexts_pick_captions_naming_the_word_once_and_substitute_the_anchor",
        ),
        "'cat' picks captions about a bobcat or a catalogue, whose span is not the concept",
    ),
    Mutation(
        "realera-lora-latents-per-sentence",
        "plugins/realera.py",
        "        k = min(cfg.n_images, len(prompts))",
        "        k = len(prompts)",
        ("tests/test_realera.py::test_lora_stage_generates_n_images_whatever_the_number_of_keyed_sentences",),
        "the LoRA stage generates an image per keyed sentence (70 on the shapes model) instead of n_images",
    ),
    Mutation(
        "sdxl-realera-lora-not-saved",
        "plugins/realera.py",
        "(LORA_FILE, self.lora.tensors if self.lora else {})",
        "(LORA_FILE, {})",
        ("tests/test_sdxl.py::test_plugin_fits_applies_removes_and_round_trips_on_sdxl",),
        "RealEra's saved artifact loses its LoRA stage",
    ),
    Mutation(
        "sdxl-family-not-recognised",
        "conceptedit/families.py",
        '    "StableDiffusionXLPipeline": SDXL,\n',
        "",
        ("tests/test_sdxl.py::test_tiny_sdxl_pipeline_is_sdxl_and_generates",),
        "an SDXL pipeline is taken for SD 2.x",
    ),
    Mutation(
        "family-check-lets-everything-through",
        "conceptedit/families.py",
        "    if family not in supported:",
        "    if False:",
        ("tests/test_sdxl.py::test_plugins_without_sdxl_refuse_it_in_one_line",),
        "a plugin runs on a family it does not support",
    ),
    Mutation(
        "geom-caption-cuts-the-location-tokens",
        "plugins/_geom_erasing_fit.py",
        "            or len(tokenizer(text, verbose=False).input_ids) <= tokenizer.model_max_length",
        "            or True",
        ("tests/test_geom_erasing.py::test_a_long_caption_loses_its_own_words_not_the_location_tokens",),
        "a caption past the tokenizer's length keeps its words and loses the location tokens to truncation",
    ),
    Mutation(
        "geom-negative-prompt-length-unchecked",
        "plugins/geom_erasing.py",
        "    if length > limit:",
        "    if False:",
        ("tests/test_geom_erasing.py::test_fit_refuses_what_it_cannot_do",),
        "a grid whose negative prompt the tokenizer truncates is fitted anyway",
    ),
    Mutation(
        "geom-full-unet-trains-a-lora",
        "plugins/_geom_erasing_fit.py",
        "        if settings.full_unet:",
        "        if False:",
        ("tests/test_geom_erasing.py::test_full_unet_mode_trains_every_unet_weight_and_leaves_the_pipeline_alone",),
        "full_unet trains a LoRA on the attention layers instead of every UNet weight",
    ),
    Mutation(
        "geom-clause-ignores-the-concept-names",
        "plugins/_geom_erasing_fit.py",
        "clause(names.get(t, t), covered_cells(b, grid), tokens)",
        "clause(t, covered_cells(b, grid), tokens)",
        ("tests/test_geom_erasing.py::test_the_clause_and_the_negative_prompt_use_the_concept_names",),
        "the training clause writes the detector's concept name, not the words the model's captions use",
    ),
    Mutation(
        "geom-names-ignore-the-detectors-phrases",
        "plugins/geom_erasing.py",
        '    phrases = getattr(detector, "phrases", None) if spec.strip() == "auto" else None',
        "    phrases = None",
        ("tests/test_geom_erasing.py::test_concept_names_come_from_the_detector_the_targets_or_the_config",),
        "names: auto ignores the words a detector declares for its concepts",
    ),
    Mutation(
        "unet-captions-ignore-the-runs-caption-rates",
        "pipelines/shapes_train.py",
        "caption_for(pool_labels[int(i)], rng, caption_world)[0]",
        "caption_for(pool_labels[int(i)], rng)[0]",
        ("tests/test_shapes_training.py::test_train_runs_every_stage_end_to_end_and_records_the_recipe",),
        "the UNet stage records the run's caption rates but captions with the world's defaults",
    ),
    Mutation(
        "captions-name-marks-the-image-lacks",
        "datasets/shapes/__init__.py",
        'present = [m.name for m in world.marks if labels.get("marks", {}).get(m.name, {}).get("present")]',
        "present = [m.name for m in world.marks]",
        ("tests/test_shapes_world_captions.py",),
        "a caption names a mark its image does not carry",
    ),
    Mutation(
        "with-background-written-as-on",
        "datasets/shapes/captions.py",
        'preposition = "with" if labels.get("background_with") else "on"',
        'preposition = "on"',
        ("tests/test_shapes_world_captions.py",),
        'background_with is drawn but the caption still says "on a … background"',
    ),
    Mutation(
        "training-workers-outlive-parent",
        "pipelines/shapes_parallel.py",
        "    thread.start()\n    return thread",
        "    return thread",
        ("tests/test_shapes_parallel_workers.py::test_a_worker_exits_when_its_parent_is_killed",),
        "a killed `shapes train` leaves its spawned workers running (seen: 25 min of both cores)",
    ),
]


# -- running -------------------------------------------------------------------------------------------------
def export_tree(dest: Path, worktree: bool) -> None:
    if worktree:
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.splitlines()
        for rel in files:
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for link, target in NAMESPACE_LINKS.items():
        (dest / "conceptedit" / link).symlink_to(dest / target, target_is_directory=True)


def replace_tests(dest: Path, rev: str) -> str:
    """Swap the copy's ``tests/`` for the one of git revision ``rev``; returns the full commit id."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"--tests-from: {rev!r} is not a git revision of this repository") from None
    archive = subprocess.run(["git", "archive", commit, "tests"], cwd=ROOT, check=True, capture_output=True).stdout
    shutil.rmtree(dest / "tests", ignore_errors=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


def test_present(tree: Path, test_id: str) -> bool:
    """The test file exists in the copy and, for ``file::name[params]``, defines that test function."""
    file, _, name = test_id.partition("::")
    path = tree / file
    if not path.is_file():
        return False
    name = name.split("::")[-1].split("[")[0]
    return not name or re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", path.read_text(), re.M) is not None


def environment(tree: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CONCEPTEDIT_CACHE")}
    env.update(
        PYTHONPATH=str(tree),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        CONCEPTEDIT_CACHE=str(cache),
    )
    return env


def check_imports(tree: Path, env: dict[str, str]) -> None:
    code = (
        "import conceptedit, conceptedit.plugins, conceptedit.pipelines; print(conceptedit.__file__); "
        "print(conceptedit.plugins.__file__); print(conceptedit.pipelines.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    paths = [Path(p).resolve() for p in out.stdout.split()]
    if not all(tree.resolve() in p.parents for p in paths):
        raise SystemExit(f"the copy is not what gets imported: {paths}")


def run_tests(tree: Path, tests: tuple[str, ...], env: dict[str, str], timeout: int) -> tuple[bool, float, str]:
    """(passed, seconds, output)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--timeout", str(timeout), *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout * 3)
        passed, output = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        passed, output = False, "timed out"
    return passed, time.perf_counter() - start, output


def failed_ids(output: str) -> list[str]:
    """Test ids from pytest's short summary (``FAILED tests/x.py::test - ...``, ``ERROR ...``)."""
    out = []
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            out.append(line.split(" ", 1)[1].split(" - ")[0].strip())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--worktree", action="store_true", help="copy the working tree instead of HEAD")
    parser.add_argument("--baseline", action="store_true", help="run every selected test unmutated first")
    parser.add_argument("--tests-from", metavar="REV", help="use the tests/ folder of git revision REV")
    parser.add_argument("--timeout", type=int, default=600, help="per-test timeout in seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chosen = MUTATIONS
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTATIONS}
        if unknown:
            raise SystemExit(f"unknown mutations: {sorted(unknown)}")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:42s} {m.file:34s} {m.why}")
        return

    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        export_tree(tree, args.worktree)
        if args.tests_from:
            commit = replace_tests(tree, args.tests_from)
            print(
                f"tests/ from {commit[:12]} ({args.tests_from}), code from "
                f"{'the working tree' if args.worktree else 'HEAD'}",
                flush=True,
            )
        env = environment(tree, Path(tmp) / "cache")
        check_imports(tree, env)
        # tests named by a mutation that the exported tree does not have are left out (and reported)
        present = lambda t: test_present(tree, t)  # noqa: E731
        if args.baseline:
            every = tuple(sorted({t for m in chosen for t in m.tests if present(t)}))
            if not every:
                raise SystemExit("--baseline: none of the selected mutations' tests exists in this tests/")
            ok, seconds, tail = run_tests(tree, every, env, args.timeout)
            verdict = "passes" if ok else "FAILS"
            print(f"baseline (unmutated) {verdict} in {seconds:.0f}s: {' '.join(every)}", flush=True)
            if not ok:
                raise SystemExit(f"fix the unmutated tests first:\n{tail[-3000:]}")
        results = []
        for m in chosen:
            path = tree / m.file
            source = path.read_text()
            tests = tuple(t for t in m.tests if present(t))
            if source.count(m.old) != 1:
                results.append({"name": m.name, "package": m.package, "status": "stale", "seconds": 0.0})
                print(f"STALE   {m.name}: snippet found {source.count(m.old)} times in {m.file}", flush=True)
                continue
            if not tests:  # none of its tests exists here (--tests-from): nothing guards it; never run bare pytest
                results.append(
                    {
                        "name": m.name,
                        "package": m.package,
                        "status": "missed",
                        "seconds": 0.0,
                        "tests": [],
                        "caught_by": [],
                        "why": m.why,
                    }
                )
                print(f"MISSED  {m.name} (no test of it exists in this tests/) {m.why}", flush=True)
                continue
            path.write_text(source.replace(m.old, m.new))
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)
            try:
                passed, seconds, tail = run_tests(tree, tests, env, args.timeout)
            finally:
                path.write_text(source)
            status = "missed" if passed else "caught"
            caught_by = failed_ids(tail)[:1] if not passed else []
            results.append(
                {
                    "name": m.name,
                    "package": m.package,
                    "status": status,
                    "seconds": round(seconds, 1),
                    "tests": list(tests),
                    "caught_by": caught_by,
                    "why": m.why,
                }
            )
            print(f"{status.upper():7s} {m.name} ({seconds:.0f}s) {m.why} {' '.join(caught_by)}", flush=True)
        # the tests that caught a mutation must pass without it, else the catch proves nothing
        catchers = sorted({t for r in results for t in r.get("caught_by", [])})
        for test in catchers:
            ok, _, _ = run_tests(tree, (test,), env, args.timeout)
            if not ok:
                print(f"unmutated, {test} fails too", flush=True)
                for r in results:
                    if test in r.get("caught_by", []):
                        r["status"] = "invalid"
        for r in results:
            if r["status"] == "caught" and not r["caught_by"]:
                r["status"] = "invalid"  # no test failed: a collection error or a timeout

    by_package: dict[str, dict[str, int]] = defaultdict(lambda: {"caught": 0, "missed": 0, "stale": 0, "invalid": 0})
    for r in results:
        by_package[r["package"]][r["status"]] += 1
    print("\npackage                     caught  missed  stale  invalid  score")
    total = {"caught": 0, "missed": 0, "stale": 0, "invalid": 0}
    for package, counts in sorted(by_package.items()):
        for k in total:
            total[k] += counts[k]
        scored = counts["caught"] + counts["missed"]
        score = f"{100 * counts['caught'] / scored:.0f} %" if scored else "-"
        print(
            f"{package:27s} {counts['caught']:6d}  {counts['missed']:6d}  {counts['stale']:5d}  "
            f"{counts['invalid']:7d}  {score}"
        )
    scored = total["caught"] + total["missed"]
    print(
        f"{'total':27s} {total['caught']:6d}  {total['missed']:6d}  {total['stale']:5d}  {total['invalid']:7d}  "
        f"{100 * total['caught'] / max(1, scored):.0f} %"
    )
    missed = [r["name"] for r in results if r["status"] == "missed"]
    if missed:
        print("missed:", ", ".join(missed))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "packages": by_package}, indent=2))


if __name__ == "__main__":
    main()
