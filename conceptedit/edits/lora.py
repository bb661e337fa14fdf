"""LoRA edits in the diffusers/peft on-disk format.

The file is ``pytorch_lora_weights.safetensors`` with keys ``<component>.<module>.lora_A.weight`` /
``lora_B.weight`` (the layout ``pipe.load_lora_weights(folder)`` reads), so other tools can load our
LoRAs. The LoRA scale ``alpha / r`` is folded into ``lora_B`` when the edit is made, so every
loader sees the same strength without adapter metadata. Applying merges ``W ← W + B·A`` and
removal restores the saved originals bit for bit; this keeps stacking and removal exact where
peft's adapter bookkeeping would leave wrapper modules behind.
"""

from __future__ import annotations

from typing import Any

import torch

from conceptedit.edits.base import Undo
from conceptedit.edits.weights import WeightDeltaEdit, check_weight_tensor, resolve_parameter
from conceptedit.errors import ArtifactError, ModelMismatchError

LORA_FILE = "pytorch_lora_weights.safetensors"


def lora_delta(down: torch.Tensor, up: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``B·A`` reshaped to the base weight (Linear, or Conv2d with A's kernel)."""
    delta = up.float().flatten(1) @ down.float().flatten(1)
    if delta.numel() != shape.numel():
        raise ModelMismatchError(f"LoRA of shape {tuple(delta.shape)} does not fit a weight of shape {tuple(shape)}")
    return delta.reshape(shape)


class LoRAEdit(WeightDeltaEdit):
    edit_type = "lora"
    artifact_kind = "lora"
    weights_file = LORA_FILE

    def validate(self) -> None:
        downs = {k[: -len(".lora_A.weight")] for k in self.tensors if k.endswith(".lora_A.weight")}
        ups = {k[: -len(".lora_B.weight")] for k in self.tensors if k.endswith(".lora_B.weight")}
        if downs != ups or len(downs) * 2 != len(self.tensors):
            raise ArtifactError("LoRA tensors must come in lora_A/lora_B pairs and nothing else")
        for key, tensor in self.tensors.items():
            check_weight_tensor(key, tensor)

    @property
    def modules(self) -> list[str]:
        return sorted(k[: -len(".lora_A.weight")] for k in self.tensors if k.endswith(".lora_A.weight"))

    def _attach(self, pipe: Any) -> Undo:
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        updates = []
        for module in self.modules:
            weight = resolve_parameter(pipe, f"{module}.weight")
            delta = lora_delta(
                self.tensors[f"{module}.lora_A.weight"], self.tensors[f"{module}.lora_B.weight"], weight.shape
            )
            saved.append((weight, weight.detach().clone()))
            updates.append((weight, delta))
        with torch.no_grad():
            for weight, delta in updates:
                weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))

        def undo() -> None:
            with torch.no_grad():
                for weight, original in saved:
                    weight.copy_(original)

        return undo


def lora_tensors_from_peft(model: torch.nn.Module, component: str, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Diffusers-format LoRA tensors from a peft-wrapped ``model``, scale folded into ``lora_B``."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or adapter not in lora_a:
            continue
        scale = float(module.scaling[adapter])
        base = name.replace(".base_layer", "")
        out[f"{component}.{base}.lora_A.weight"] = lora_a[adapter].weight.detach().cpu().clone()
        out[f"{component}.{base}.lora_B.weight"] = module.lora_B[adapter].weight.detach().cpu().clone() * scale
    if not out:
        raise ArtifactError(f"no LoRA adapter {adapter!r} found in {component}")
    return out
