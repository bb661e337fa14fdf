"""Save and load SAEs (``sae.safetensors`` + ``cfg.json``), strictly; export to SAELens' layout.

Why strict: an SAE silently loaded with a dropped option or a transposed matrix gives wrong
concepts without any error. Unknown config keys are an error naming the valid ones; tensor names
and shapes must match what the config builds, and the error says exactly what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from conceptedit.errors import ArtifactError, ConfigError, SAEConfigError, SAEShapeError
from conceptedit.sae.base import SAE, SAE_ARCHITECTURES

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
FORMAT = "conceptedit.sae"
TOP_KEYS = {"format", "format_version", "architecture", "d_in", "width", "hparams", "normalize", "source"}


def sae_config(sae: SAE) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": 1,
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "width": sae.width,
        "hparams": sae.hparams(),
        "normalize": {"scale": float(sae.input_scale)},
        "source": dict(sae.source),
    }


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``cfg.json`` and ``sae.safetensors`` into folder ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    (path / CFG_FILE).write_text(json.dumps(sae_config(sae), indent=1))
    return path


def _check_config(cfg: Any, where: Path) -> type[SAE]:
    if not isinstance(cfg, dict):
        raise SAEConfigError(f"{where}: expected a JSON object")
    unknown = sorted(set(cfg) - TOP_KEYS)
    missing = sorted({"architecture", "d_in", "width"} - set(cfg))
    if unknown:
        raise SAEConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(TOP_KEYS)}")
    if missing:
        raise SAEConfigError(f"{where}: missing key(s) {missing}")
    if cfg.get("format", FORMAT) != FORMAT:
        raise SAEConfigError(f"{where}: format is {cfg['format']!r}, expected {FORMAT!r}")
    arch = cfg["architecture"]
    if arch not in SAE_ARCHITECTURES:
        raise SAEConfigError(f"{where}: unknown architecture {arch!r}; known: {sorted(SAE_ARCHITECTURES)}")
    cls = SAE_ARCHITECTURES[arch]
    hp = cfg.get("hparams", {})
    bad = sorted(set(hp) - set(cls.hparam_names()))
    if bad:
        raise SAEConfigError(f"{where}: unknown hparam(s) {bad} for {arch!r}; valid: {cls.hparam_names()}")
    for key in ("d_in", "width"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise SAEConfigError(f"{where}: {key} must be a positive integer, got {cfg[key]!r}")
    norm = cfg.get("normalize", {})
    if not isinstance(norm, dict) or set(norm) - {"scale"}:
        raise SAEConfigError(f"{where}: normalize must be {{'scale': float}}, got {norm!r}")
    return cls


def load_sae(path: str | Path, device: str | torch.device | None = "cpu") -> SAE:
    """Load a folder written by :func:`save_sae`; validates the config and every tensor shape."""
    path = Path(path)
    cfg_file, weights_file = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file() or not weights_file.is_file():
        raise ArtifactError(f"{path} is not a saved SAE (needs {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise SAEConfigError(f"{cfg_file}: not valid JSON ({exc})") from None
    sae = sae_from_state(cfg, load_file(str(weights_file)), str(weights_file))
    return sae.to(device).eval() if device is not None else sae.eval()


# Architectures whose inference encoder SAELens has. The batch-level selectors (BatchTopK, mutual and
# feature choice) encode at inference with a learned threshold on the pre-activation, which is
# exactly a JumpReLU (SAELens stores its own BatchTopK SAEs the same way).
SAELENS_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "mutual_choice": "jumprelu",
    "feature_choice": "jumprelu",
}


def _saelens_threshold(sae: SAE) -> torch.Tensor:
    if sae.architecture == "jumprelu":
        return sae.log_threshold.exp().detach().cpu()
    th = sae.threshold.detach().cpu().float()
    if bool((th < 0).all()):
        raise ConfigError(f"this {sae.architecture} SAE has no learned inference threshold yet; train it first")
    th = th.expand(sae.width).clone()
    th[th < 0] = float("inf")  # latents never selected in training never fire
    return th


def _saelens_names(sae: SAE, model_name: str | None, hook_name: str | None) -> tuple[str, str]:
    """SAELens needs both names as strings (a null ``hook_name`` crashes its loader): the arguments, else
    ``sae.source`` (set by the trainer from the activation store), else a message saying what to set."""
    model = model_name if model_name is not None else sae.source.get("model")
    hook = hook_name if hook_name is not None else sae.source.get("module")
    missing = [
        f"{what} (pass {arg}=... or set sae.source[{key!r}], e.g. {example!r})"
        for value, what, arg, key, example in (
            (model, "the model's name", "model_name", "model", "shapes"),
            (hook, "the hooked module", "hook_name", "module", "text_model.encoder.layers.2"),
        )
        if not isinstance(value, str) or not value
    ]
    if missing:
        raise ConfigError("SAELens export needs " + " and ".join(missing))
    return model, hook


def export_saelens(sae: SAE, path: str | Path, *, model_name: str | None = None, hook_name: str | None = None) -> Path:
    """Write SAELens' on-disk layout: ``cfg.json`` + ``sae_weights.safetensors``.

    ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec`` (+ ``threshold`` for
    JumpReLU-style SAEs), with our input scale folded into the weights so SAELens needs no
    normalisation (pre-activations, hence thresholds, are unchanged by the folding):
    W_enc' = s·W_encᵀ, W_dec' = W_dec / s, b_dec = b_pre / s. Exportable: ReLU (standard), TopK,
    JumpReLU, and BatchTopK / mutual choice / feature choice as JumpReLU with their learned thresholds.
    ``model_name`` / ``hook_name`` default to ``sae.source``; an SAE with neither is refused (SAELens
    cannot load a null ``hook_name``).
    """
    if sae.architecture not in SAELENS_ARCH:
        raise ConfigError(f"SAELens has no {sae.architecture!r} architecture; exportable: {sorted(SAELENS_ARCH)}")
    model, hook = _saelens_names(sae, model_name, hook_name)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    s = float(sae.input_scale)
    with torch.no_grad():
        tensors = {
            "W_enc": (sae.W_enc.T * s).contiguous().cpu(),
            "W_dec": (sae.dictionary() / s).contiguous().cpu(),
            "b_enc": sae.b_enc.detach().clone().cpu(),
            "b_dec": (sae.b_pre / s).detach().cpu(),
        }
        if SAELENS_ARCH[sae.architecture] == "jumprelu":
            tensors["threshold"] = _saelens_threshold(sae)
    save_file(tensors, str(path / "sae_weights.safetensors"))
    cfg: dict[str, Any] = {
        "architecture": SAELENS_ARCH[sae.architecture],
        "d_in": sae.d_in,
        "d_sae": sae.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "model_name": model,
        "hook_name": hook,
        "metadata": {"model_name": model, "hook_name": hook},
    }
    if sae.architecture == "topk":
        cfg["k"] = sae.k
    (path / "cfg.json").write_text(json.dumps(cfg, indent=1))
    return path


def sae_from_state(cfg: dict[str, Any], state: dict[str, torch.Tensor], where: str = "state") -> SAE:
    """Build an SAE from a ``cfg.json``-style dict and its tensors, strictly (used by ``load_sae`` and by
    artifacts that embed an SAE, e.g. ItD edits)."""
    cls = _check_config(cfg, Path(where))
    sae = cls(cfg["d_in"], cfg["width"], **cfg.get("hparams", {}))
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or extra or wrong:
        parts = (
            ([f"missing tensors {missing}"] if missing else [])
            + ([f"unexpected tensors {extra}"] if extra else [])
            + wrong
        )
        raise SAEShapeError(
            f"{where} does not match {cfg['architecture']} "
            f"(d_in={cfg['d_in']}, width={cfg['width']}): " + "; ".join(parts)
        )
    sae.load_state_dict(state)
    if "scale" in cfg.get("normalize", {}):
        sae.input_scale.fill_(float(cfg["normalize"]["scale"]))
    sae.source = dict(cfg.get("source", {}))
    return sae
