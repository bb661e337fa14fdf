"""``negative-prompt``: erase by putting the concept into every negative prompt.

The classic inference-time baseline that Safe Latent Diffusion (Schramowski et al., CVPR 2023,
Sec. 5 "negative prompting" comparison) and Geom-Erasing (Liu et al., ECCV 2024, Table 1 "Negative
Prompt") compare against. Classifier-free guidance pushes the sample away from the negative
prompt, so the concept is suppressed without touching any weight. It needs guidance > 1.

SDXL: the concept goes into ``negative_prompt`` (which SDXL's second encoder reuses unless
``negative_prompt_2`` is given; then the concept is added to that too). With the concept as negative
prompt SDXL encodes it instead of its zeroed empty prompt (``force_zeros_for_empty_prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from conceptedit.edits.runtime import NegativePromptEdit
from conceptedit.families import SD_FAMILIES, SDXL
from conceptedit.plugin import Plugin, Request
from conceptedit.registry import register_plugin
from conceptedit.toolkit import Progress, no_progress


@dataclass
class NegativePromptConfig:
    mode: Literal["append", "replace"] = field(
        default="append",
        metadata={"help": "append: user negative prompt + concepts; replace: concepts only"},
    )
    separator: str = field(default=", ", metadata={"help": "joins several target concepts"})


@register_plugin
class NegativePromptPlugin(Plugin):
    name = "negative-prompt"
    kind = "erase"
    Config = NegativePromptConfig
    families = (*SD_FAMILIES, SDXL)
    artifact_kind = "runtime"
    summary = "Erase at inference by adding the concept to the negative prompt (SLD/Geom-Erasing baseline)."
    paper = "Schramowski et al., Safe Latent Diffusion, CVPR 2023 (baseline)"

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> NegativePromptEdit:
        self.check_pipeline(pipe)
        text = self.config.separator.join(request.targets)
        manifest = self.manifest("negative_prompt", "runtime", request, negative_text=text, mode=self.config.mode)
        progress(1.0, "done")
        # The edit reads only prompts; it records the text encoder + tokenizer it was made for.
        return self.finish(NegativePromptEdit(manifest), pipe, ["text_encoder"])
