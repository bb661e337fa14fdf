"""conceptedit: erase and edit concepts in text-to-image diffusion models, and prove what happened.

Public API::

    pipe = load_pipeline("shapes")                  # built-in model, folder, .safetensors or hub id
    plugin = get_plugin("negative-prompt")()         # or get_plugin(name)(config_dict / **overrides)
    edit = plugin.fit(pipe, Request(targets=["zorblax"]))
    edit.save("out/edit")                            # safetensors + manifest.json
    with Edit.load("out/edit").apply(pipe):          # handle.remove() restores bit for bit
        images = generate(pipe, ["a picture of zorblax"], seeds=[0])
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_pipeline": "conceptedit.loading",
    "list_plugins": "conceptedit.registry",
    "get_plugin": "conceptedit.registry",
    "register_plugin": "conceptedit.registry",
    "Plugin": "conceptedit.plugin",
    "Request": "conceptedit.plugin",
    "Edit": "conceptedit.edits",
    "applied_edits": "conceptedit.edits",
    "generate": "conceptedit.generation",
    "ConceptEditError": "conceptedit.errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy: `import conceptedit` must not import torch/diffusers (the CLI's --help stays fast).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'conceptedit' has no attribute {name!r}")
