"""Weight edits: a partial state dict added to (delta) or written over (component) the base weights.

Tensors are keyed ``<component>.<parameter name>`` (``unet.down_blocks.0.attentions.0...to_k.weight``)
so one artifact can touch several components. Removal copies the saved originals back, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from conceptedit.edits.base import Edit, Manifest, Undo
from conceptedit.errors import ArtifactError, ModelMismatchError
from conceptedit.hooks import name_variants


def split_key(key: str) -> tuple[str, str]:
    component, _, name = key.partition(".")
    if not name:
        raise ArtifactError(f"tensor key {key!r} must look like '<component>.<parameter>'")
    return component, name


def check_weight_tensor(key: str, tensor: torch.Tensor) -> None:
    """Weights must be finite floats: a NaN or infinity would silently turn every image black."""
    if not tensor.is_floating_point():
        raise ArtifactError(f"tensor {key[:120]!r} must be floating point")
    if not bool(torch.isfinite(tensor).all()):
        raise ArtifactError(f"tensor {key[:120]!r} holds NaN or infinite values")


def resolve_parameter(pipe: Any, key: str) -> torch.Tensor:
    component, name = split_key(key)
    module = getattr(pipe, component, None)
    if not isinstance(module, torch.nn.Module):
        raise ModelMismatchError(f"the pipeline has no component {component!r} (needed by {key!r})")
    for candidate in name_variants(name):
        try:
            return module.get_parameter(candidate)
        except AttributeError:
            continue
    else:
        raise ModelMismatchError(
            f"{component} has no parameter {name!r}: the edit is for another architecture"
        ) from None


class WeightDeltaEdit(Edit):
    """``W ← W + Δ`` for each stored Δ (computed in float32, cast back to the model's dtype)."""

    edit_type = "weight_delta"
    artifact_kind = "weight_delta"

    def validate(self) -> None:
        for key, tensor in self.tensors.items():
            split_key(key)
            check_weight_tensor(key, tensor)

    def touched_components(self) -> set[str]:
        return {split_key(key)[0] for key in self.tensors}

    def _new_value(self, param: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        return param.detach().float() + stored.to(param.device, torch.float32)

    def _attach(self, pipe: Any) -> Undo:
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for key, stored in self.tensors.items():
                param = resolve_parameter(pipe, key)
                if param.shape != stored.shape:
                    raise ModelMismatchError(f"{key}: edit has shape {tuple(stored.shape)}, model {tuple(param.shape)}")
                saved.append((param, param.detach().clone()))
            for (param, _), stored in zip(saved, self.tensors.values(), strict=True):
                param.copy_(self._new_value(param, stored).to(param.dtype))

        def undo() -> None:
            with torch.no_grad():
                for param, original in saved:
                    param.copy_(original)

        return undo

    @classmethod
    def from_models(
        cls, manifest: Manifest, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
    ) -> WeightDeltaEdit:
        """Deltas between two state dicts keyed alike; unchanged tensors are left out."""
        deltas = {}
        for key, new in after.items():
            delta = new.detach().float().cpu() - before[key].detach().float().cpu()
            if torch.count_nonzero(delta):
                deltas[key] = delta
        return cls(manifest, deltas)


class ComponentEdit(WeightDeltaEdit):
    """A replaced component: the stored tensors are the new weights, written over the old ones."""

    edit_type = "component"
    artifact_kind = "component"

    def _new_value(self, param: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(param.device)


def component_state(pipe: Any, component: str, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``{"<component>.<name>": tensor clone}`` for the named (or all) parameters of a component."""
    module = getattr(pipe, component)
    params = dict(module.named_parameters())
    chosen = names if names is not None else list(params)
    return {f"{component}.{n}": params[n].detach().clone() for n in chosen}
