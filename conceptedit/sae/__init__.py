"""Sparse autoencoders for any module of a diffusion pipeline: store, architectures, trainer, metrics.

The analysis core shared by plugins (ItD's concept classifier, blind-spot analysis) and by users:
activations are captured from a named module into memory-bounded safetensors shards, SAEs of
several families train on them with sparse kernels, and the results save as safetensors + cfg.json.

    from conceptedit.sae import collect_activations, train_sae, TrainConfig, evaluate_sae, save_sae

    store = collect_activations(pipe, "text_model.encoder.layers.8", prompts, "acts/")  # or out=None
    sae = train_sae(store, "topk", 16384, k=32, config=TrainConfig(token_budget=10_000_000))
    codes = sae.encode(acts)             # SparseCodes: indices/values [N, k]
    acts_hat = sae.decode(codes)         # gathers k atoms per row
    print(evaluate_sae(sae, store))      # fvu, explained_variance, l0, dead_fraction
    save_sae(sae, "sae/")                # cfg.json + sae.safetensors; load_sae("sae/")

Architectures live in :data:`SAE_ARCHITECTURES` (``@register_sae("name")`` adds one, and the
generic tests pick it up). On a CPU shared with other jobs, ``torch.set_num_threads(1)`` is often
faster than more threads (idle OpenMP threads stall every parallel region).
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
from conceptedit.validate import check_float, check_int, check_seed


def create_sae(arch: str, d_in: int, width: int, **kw: Any) -> SAE:
    """Build a registered architecture; unknown names and keywords are errors that list valid ones."""
    try:
        cls = SAE_ARCHITECTURES[arch]
    except KeyError:
        raise ConfigError(f"unknown SAE architecture {arch!r}; choose one of {sorted(SAE_ARCHITECTURES)}") from None
    valid = set(cls.hparam_names()) | {"chunk_elems"}
    unknown = sorted(set(kw) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for SAE {arch!r}; valid: {sorted(valid)}")
    check_int("d_in", d_in, 1)
    check_int("width", width, 1)
    for key, value in kw.items():
        if key in ("k", "k_aux"):
            if check_int(key, value, 1) > width:
                raise ConfigError(
                    f"{key}={value} is larger than the SAE width {width}: a code cannot use more latents than exist"
                )
        elif key == "seed":
            check_seed(value)
        elif isinstance(value, float):
            check_float(key, value)
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
