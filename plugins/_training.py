"""Shared pieces of the fine-tuning erase plugins (``esd``, ``fewshot-unlearning``).

The leading underscore keeps the registry from importing this as a plugin. Everything here trains
*copies*, so ``fit`` never changes the pipeline it was given: the artifact is the difference between the
trained copy and the pipeline's own weights (a weight delta), or the LoRA factors trained on the copy.

Two ways to hold the copy: :func:`trainable_copy` (the whole component, for the small text encoders) or
:func:`trainable_layers` + :func:`swapped_in` (only the trained layers, for the UNet). A full float32 copy
of SDXL's UNet is 2.57 B parameters = 9.6 GiB on top of the pipeline's own, which alone took ESD and
RealEra past 18 GiB on full-size SDXL; the layer copies of ESD's default ``esd-x`` are a fifth of that.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from conceptedit.edits import LoRAEdit, Manifest, WeightDeltaEdit, lora_tensors_from_peft
from conceptedit.errors import ConfigError

# LoRA trains factors, not weights: B starts at zero and Adam moves every entry of B and A by about the
# lr per step, so B·A changes each weight by roughly lr · sqrt(rank) · |A| (|A| ~ 1/sqrt(fan_in)), an order
# of magnitude less than full fine-tuning at the same lr. peft/diffusers LoRA scripts therefore train at
# 10-100x the full-model lr (e.g. 1e-4 vs 1e-5-ish). Measured on the shapes model
# (benchmarks/lora_vs_full.py): at the same lr, few-shot LoRA changes "a picture of zorblax" by 0.16/255
# against a complete erasure by the weight delta; at 10x lr it erases like the full mode.
LORA_LR_FACTOR = 10.0


def learning_rate(lr: float, artifact: str, lora_lr: float | None) -> float:
    """The optimiser's lr: ``lr`` for weight deltas; ``lora_lr`` (default ``LORA_LR_FACTOR · lr``) for LoRA."""
    if artifact != "lora":
        return lr
    return lora_lr if lora_lr is not None else LORA_LR_FACTOR * lr


def trainable_copy(module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A frozen float32 deep copy of ``module`` (fp16 weights do not train well); nothing shared."""
    twin = copy.deepcopy(module).to(dtype)
    twin.requires_grad_(False)
    return twin


def trainable_layers(
    module: torch.nn.Module, names: Iterable[str], dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """Frozen ``dtype`` deep copies of only the named submodules of ``module``, held in an otherwise empty
    module tree under the same dotted paths (so parameter names, peft's ``target_modules`` and the artifact's
    keys are those of ``module``). Copies are inserted in ``module``'s own order, so peft initialises LoRA
    factors in the same order (same seeded values) as on a whole copy."""
    wanted = set(names)
    if "" in wanted:
        raise ValueError("trainable_layers copies submodules; use trainable_copy for the whole module")
    if any(a != b and b.startswith(a + ".") for a in wanted for b in wanted):
        raise ValueError("trainable_layers: one named layer contains another")
    root = torch.nn.Module()
    for name, sub in module.named_modules():
        if name not in wanted:
            continue
        *path, leaf = name.split(".")
        parent = root
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, torch.nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, copy.deepcopy(sub).to(dtype))
    missing = wanted - {n for n, _ in root.named_modules()}
    if missing:
        raise ValueError(f"no such layer: {sorted(missing)[0]}")
    root.requires_grad_(False)
    return root


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


class _CastLayer(torch.nn.Module):
    """Stands in for a frozen layer during :func:`swapped_in`: runs the trained layer in its own dtype on the
    input cast to it, and casts the output back to the frozen layer's dtype. The trained layer is held as a
    plain attribute, not a submodule, so the host model's ``parameters()`` (and the dtype read from them,
    e.g. by :func:`conceptedit.conditioning.predict_noise`) are the frozen model's."""

    def __init__(self, trained: torch.nn.Module, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.__dict__["trained"] = trained
        self.compute_dtype, self.out_dtype = _dtype_of(trained), out_dtype

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.trained(x.to(self.compute_dtype), *args, **kwargs).to(self.out_dtype)


@contextmanager
def swapped_in(model: torch.nn.Module, layers: torch.nn.Module, names: Iterable[str]) -> Iterator[torch.nn.Module]:
    """``model`` with each named layer replaced by ``layers``' trained one (from :func:`trainable_layers`) and
    every one of its own parameters frozen, for the duration of the block; the original layers and
    ``requires_grad`` flags are ALWAYS restored on exit (also on an exception), so the pipeline's model is
    the same object with the same weights after every use. Gradients reach only ``layers``.

    Precision: the model's own layers compute in its dtype (bf16 on full-size SDXL); each trained layer
    computes in its own (float32) on its input rounded to the model's dtype, and its output is cast back to
    it. On a float32 model every cast is a no-op, so the forward is the one of a whole float32 copy.

    Run ``backward`` inside the block: recomputation (gradient checkpointing) would otherwise see the
    frozen layers."""
    flags = [p.requires_grad for p in model.parameters()]
    replaced: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        model.requires_grad_(False)
        for name in names:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            original = parent._modules[leaf]
            replaced.append((parent, leaf, original))
            parent._modules[leaf] = _CastLayer(layers.get_submodule(name), _dtype_of(original))
        yield model
    finally:
        for parent, leaf, original in reversed(replaced):
            parent._modules[leaf] = original
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def activation_checkpointing(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` (a diffusers model) with gradient checkpointing on for the block: the activations a backward
    through it needs are recomputed block by block instead of held (on full-size SDXL at 1024² the UNet's
    held activations are several GiB a sample), at the cost of one more forward; the gradients are the same.
    The model's own checkpointing flags are restored on exit. Models without the switch are used as they are."""
    if not getattr(model, "_supports_gradient_checkpointing", False):
        yield model
        return
    saved = [
        (m, m.gradient_checkpointing, m.__dict__.get("_gradient_checkpointing_func"))
        for m in model.modules()
        if hasattr(m, "gradient_checkpointing")
    ]
    try:
        model.enable_gradient_checkpointing()
        yield model
    finally:
        for m, flag, func in saved:
            m.gradient_checkpointing = flag
            if func is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = func


def linear_module_names(module: torch.nn.Module, keep: Callable[[str], bool]) -> list[str]:
    """Names of the Linear / Conv2d submodules (the layers a delta or LoRA can target) kept by ``keep``."""
    return [
        name
        for name, sub in module.named_modules()
        if isinstance(sub, (torch.nn.Linear, torch.nn.Conv2d)) and keep(name)
    ]


def parameter_names_of(module: torch.nn.Module, module_names: Iterable[str]) -> list[str]:
    """Every parameter (weight and bias) of the named submodules."""
    out = []
    for name in module_names:
        prefix = f"{name}." if name else ""  # "" = the whole module
        out += [prefix + p for p, _ in module.get_submodule(name).named_parameters()]
    return out


class Trainable:
    """The parameters an optimiser updates: the named parameters of a copy, or LoRA factors on them.

    ``artifact(manifest, original)`` turns the result into the edit the plugin returns.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        component: str,
        module_names: list[str],
        artifact: str,
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        seed: int = 0,
    ) -> None:
        if not module_names:
            raise ConfigError(f"the chosen parameter group selects no layer of the {component}")
        self.model, self.component, self.kind = model, component, artifact
        if artifact == "weight_delta":
            self.names = parameter_names_of(model, module_names)
            params = dict(model.named_parameters())
            self.parameters = [params[n] for n in self.names]
            for p in self.parameters:
                p.requires_grad_(True)
        elif artifact == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            torch.manual_seed(seed)  # peft initialises lora_A with the global generator
            config = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=module_names, lora_dropout=0.0
            )
            inject_adapter_in_model(config, model)
            self.names = [n for n, _ in model.named_parameters() if "lora_" in n]
            params = dict(model.named_parameters())
            self.parameters = [params[n] for n in self.names]
            for p in self.parameters:
                p.requires_grad_(True)
        else:
            raise ConfigError(f"artifact must be 'weight_delta' or 'lora', got {artifact!r}")

    def artifact(self, manifest: Manifest, original: torch.nn.Module) -> WeightDeltaEdit:
        if self.kind == "lora":
            return LoRAEdit(manifest, lora_tensors_from_peft(self.model, self.component))
        before = dict(original.named_parameters())
        after = dict(self.model.named_parameters())
        key = f"{self.component}.{{}}".format
        return WeightDeltaEdit.from_models(
            manifest, {key(n): before[n] for n in self.names}, {key(n): after[n] for n in self.names}
        )


def combined_artifact(trainables: list[Trainable], manifest: Manifest, pipe: Any) -> WeightDeltaEdit:
    """One edit of the trained parts of several components (e.g. SDXL's two text encoders), each compared
    with the pipeline's own component; tensors are keyed by component, so they never collide."""
    edits = [t.artifact(manifest, getattr(pipe, t.component)) for t in trainables]
    if len(edits) == 1:
        return edits[0]
    return type(edits[0])(manifest, {k: v for e in edits for k, v in e.tensors.items()})
