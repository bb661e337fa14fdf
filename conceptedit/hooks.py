"""Capture or replace the output of any named submodule, context-managed and removable.

Forward hooks are the one mechanism every runtime edit and every activation store uses, so the
rules live here once: a module may return a tensor or a tuple whose first element is the hidden
state (transformers changed this between versions); hooks work under ``torch.no_grad``; several
hooks can be active at once and each one removes only itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from conceptedit.errors import ConceptEditError

Transform = Callable[[torch.Tensor], torch.Tensor]


# transformers 5 dropped the ``text_model`` wrapper inside CLIPTextModel, so the same layer is
# ``text_model.encoder.layers.8`` (SD checkpoints, transformers 4) or ``encoder.layers.8``.
_OPTIONAL_PREFIXES = ("text_model.",)


def name_variants(name: str) -> list[str]:
    """``name`` plus its spellings with/without the optional wrapper prefixes."""
    variants = [name]
    for prefix in _OPTIONAL_PREFIXES:
        variants.append(name[len(prefix) :] if name.startswith(prefix) else prefix + name)
    return variants


def get_submodule(root: nn.Module, name: str) -> nn.Module:
    """``root.get_submodule`` across library versions, with an error that lists close names."""
    for candidate in name_variants(name):
        try:
            return root.get_submodule(candidate)
        except AttributeError:
            continue
    else:
        names = [n for n, _ in root.named_modules() if n]
        stem = name.rsplit(".", 1)[0]
        close = [n for n in names if n.startswith(stem)][:8] or names[:8]
        raise ConceptEditError(
            f"module {name!r} not found in {type(root).__name__}; nearby names: {', '.join(close)}"
        ) from None


def primary_tensor(output: object) -> torch.Tensor:
    """The hidden state in a module output (a tensor, or the first element of a tuple/ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        return primary_tensor(output.to_tuple())
    raise ConceptEditError(f"cannot find a tensor in module output of type {type(output).__name__}")


def with_primary_tensor(output: object, tensor: torch.Tensor) -> object:
    """Rebuild ``output`` with its hidden state replaced, keeping its container type."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    if hasattr(output, "to_tuple"):
        key = next(iter(output.keys()))
        output[key] = tensor
        return output
    raise ConceptEditError(f"cannot replace the tensor in module output of type {type(output).__name__}")


@dataclass
class HookHandle:
    """A removable group of hooks; removing twice is harmless."""

    handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def add_output_transform(root: nn.Module, name: str, transform: Transform) -> HookHandle:
    """Replace the named module's hidden-state output by ``transform(output)`` until removed."""
    module = get_submodule(root, name)

    def hook(_module: nn.Module, _args: object, output: object) -> object:
        return with_primary_tensor(output, transform(primary_tensor(output)))

    return HookHandle([module.register_forward_hook(hook)])


@dataclass
class Capture:
    """Outputs recorded by :func:`capture`, one list of tensors per module name (one entry per call)."""

    outputs: dict[str, list[torch.Tensor]]

    def last(self, name: str) -> torch.Tensor:
        if not self.outputs.get(name):
            raise ConceptEditError(f"module {name!r} did not run while capturing")
        return self.outputs[name][-1]


@contextmanager
def capture(root: nn.Module, names: list[str] | str, *, detach: bool = True, to_cpu: bool = False) -> Iterator[Capture]:
    """Record the hidden-state output of each named module for every forward call inside the block."""
    names = [names] if isinstance(names, str) else list(names)
    record = Capture({name: [] for name in names})
    group = HookHandle()

    def make_hook(key: str) -> Callable:
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            tensor = primary_tensor(output)
            if detach:
                tensor = tensor.detach()
            record.outputs[key].append(tensor.cpu() if to_cpu else tensor)

        return hook

    for name in names:
        group.handles.append(get_submodule(root, name).register_forward_hook(make_hook(name)))
    try:
        yield record
    finally:
        group.remove()


@contextmanager
def replace_output(root: nn.Module, name: str, transform: Transform) -> Iterator[HookHandle]:
    """Context-managed :func:`add_output_transform`."""
    handle = add_output_transform(root, name, transform)
    try:
        yield handle
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by :func:`run_until` to skip the rest of a model once the wanted activation is taken."""


def run_until(root: nn.Module, name: str, call: Callable[[], object]) -> torch.Tensor:
    """Run ``call`` and return the named module's output, skipping everything after that module."""
    taken: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        taken.append(primary_tensor(output).detach())
        raise StopForward

    handle = get_submodule(root, name).register_forward_hook(hook)
    try:
        call()
    except StopForward:
        pass
    finally:
        handle.remove()
    if not taken:
        raise ConceptEditError(f"module {name!r} did not run")
    return taken[0]
