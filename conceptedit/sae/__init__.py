"""Sparse autoencoders for any module of a diffusion pipeline: store, architectures, trainer, metrics.

The analysis core shared by plugins (ItD's concept classifier, blind-spot analysis) and by users:
activations are captured from a named module into memory-bounded safetensors shards, SAEs of
several families train on them with sparse kernels, and the results save as safetensors + cfg.json.
"""

from __future__ import annotations

from typing import Any

from conceptedit.errors import ConfigError
from conceptedit.sae import archetypal, batchtopk, choice, jumprelu, mp, relu, topk  # noqa: F401 (register)
from conceptedit.sae.base import SAE, SAE_ARCHITECTURES, SAEOutput, SparseCodes, register_sae
from conceptedit.sae.collect import collect_activations, collect_component_activations, read_prompts
from conceptedit.sae.io import export_saelens, load_sae, save_sae
from conceptedit.sae.metrics import downstream_effect, evaluate_sae
from conceptedit.sae.store import ActivationStore, InMemoryStore
from conceptedit.sae.trainer import SAETrainer, TrainConfig, train_sae


def create_sae(arch: str, d_in: int, width: int, **kw: Any) -> SAE:
    """Build a registered architecture; unknown names and keywords are errors that list valid ones."""
    try:
        cls = SAE_ARCHITECTURES[arch]
    except KeyError:
        raise ConfigError(
            f"unknown SAE architecture {arch!r}; choose one of {sorted(SAE_ARCHITECTURES)}"
        ) from None
    valid = set(cls.hparam_names()) | {"chunk_elems"}
    unknown = sorted(set(kw) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for SAE {arch!r}; valid: {sorted(valid)}")
    return cls(d_in, width, **kw)


__all__ = [
    "SAE",
    "SAE_ARCHITECTURES",
    "ActivationStore",
    "InMemoryStore",
    "SAEOutput",
    "SAETrainer",
    "SparseCodes",
    "TrainConfig",
    "collect_activations",
    "collect_component_activations",
    "create_sae",
    "downstream_effect",
    "evaluate_sae",
    "export_saelens",
    "load_sae",
    "read_prompts",
    "register_sae",
    "save_sae",
    "train_sae",
]
