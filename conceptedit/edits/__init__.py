"""Edit artifacts (see ``base``): weight delta, LoRA, replaced component, runtime intervention."""

from conceptedit.edits.base import (
    EDIT_TYPES,
    Edit,
    EditHandle,
    EditStack,
    Manifest,
    applied_edits,
    edit_stack,
)
from conceptedit.edits.lora import LoRAEdit, lora_tensors_from_peft
from conceptedit.edits.runtime import (
    ActivationHookEdit,
    FeatureExplainer,
    NegativePromptEdit,
    PromptClassifier,
    PromptDecision,
    wrap_encode_prompt,
)
from conceptedit.edits.weights import ComponentEdit, WeightDeltaEdit, component_state

__all__ = [
    "EDIT_TYPES",
    "Edit",
    "EditHandle",
    "EditStack",
    "Manifest",
    "applied_edits",
    "edit_stack",
    "LoRAEdit",
    "lora_tensors_from_peft",
    "ActivationHookEdit",
    "NegativePromptEdit",
    "wrap_encode_prompt",
    "PromptDecision",
    "PromptClassifier",
    "FeatureExplainer",
    "ComponentEdit",
    "WeightDeltaEdit",
    "component_state",
]
