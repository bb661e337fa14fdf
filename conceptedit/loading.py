"""``load_pipeline``: one entry point for hub ids, diffusers folders, single checkpoint files and
built-in models, with errors that say what was tried and what to do."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from conceptedit.devices import pick_device, pick_dtype
from conceptedit.errors import ModelLoadError
from conceptedit.families import SD_FAMILIES, require_family
from conceptedit.registry import Registry
from conceptedit.toolkit import DEFAULT_MODEL, MODEL_SETTINGS_FILE


def _model_from_entry_point(name: str, obj: Any) -> None:
    if not callable(obj):
        raise TypeError(f"entry point {name!r} must point at a function returning the model folder")
    BUILTIN_MODELS.register(name, obj)


# Built-in models: name -> function returning the model folder. Other packages (and the built-in shapes
# model) add theirs through the ``conceptedit.models`` entry point, loaded on the first lookup (not when
# conceptedit is imported); one that fails to load only fails when asked for by name.
BUILTIN_MODELS: Registry[Callable[[], str | os.PathLike]] = Registry(
    "built-in model", group="conceptedit.models", load=_model_from_entry_point
)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")  # torch/pickle formats: reading one can run code
PICKLE_HINT = (
    "pickled weights can run arbitrary code when they are read, so they are refused by default; convert them "
    "to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust where the files come from"
)


def _refuse_pickled_folder(folder: Path) -> None:
    """Raise when a component folder of a diffusers pipeline has pickled weights and no safetensors."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for f in sub.iterdir() if f.is_file()]
        pickled = sorted(f.name for f in files if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickled and not any(f.suffix.lower() == ".safetensors" for f in files):
            raise ModelLoadError(f"{sub} holds only pickled weights ({', '.join(pickled[:3])}): {PICKLE_HINT}")


def builtin_model_dir(name: str) -> Path:
    if name in BUILTIN_MODELS.broken:
        raise ModelLoadError(f"built-in model {name!r} is not available in this install: {BUILTIN_MODELS.broken[name]}")
    folder = Path(BUILTIN_MODELS[name]())
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"built-in model {name!r} has no weights at {folder}; train it with `conceptedit {name} train`"
        )
    return folder


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence diffusers' deprecation notice for ``torch_dtype`` (renamed ``dtype`` in newer releases)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        yield


def _offline(offline: bool | None) -> bool:
    """Explicit choice, else ``HF_HUB_OFFLINE``."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _sd_kwargs(class_name: str, safety_checker: bool) -> dict[str, Any]:
    # SDXL and SD3 pipelines have no safety checker (diffusers warns about the keywords)
    no_checker = class_name.startswith(("StableDiffusionXL", "StableDiffusion3"))
    if class_name.startswith("StableDiffusion") and not no_checker and not safety_checker:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _load_folder(folder: Path, dtype: torch.dtype, safety_checker: bool, allow_pickle: bool = False) -> Any:
    from diffusers import DiffusionPipeline

    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(
            f"{folder} is a folder but not a diffusers pipeline (no model_index.json); "
            "pass a diffusers folder, a .safetensors checkpoint or a hub id"
        )
    try:
        index_data = json.loads(index.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{index} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(index_data, dict):
        raise ModelLoadError(f"{index} must be a JSON object")
    class_name = str(index_data.get("_class_name", ""))
    if not allow_pickle:
        _refuse_pickled_folder(folder)
    try:
        return DiffusionPipeline.from_pretrained(
            folder,
            local_files_only=True,
            torch_dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            **_sd_kwargs(class_name, safety_checker),
        )
    except Exception as exc:  # diffusers raises many types; the user needs one clear message
        raise ModelLoadError(f"could not load the diffusers folder {folder}: {exc}") from exc


# Keys only SDXL's original single-file layout has: the second (OpenCLIP bigG) text encoder and the UNet's
# added-condition embedding (``label_emb``, SDXL's ``add_embedding``).
SDXL_SINGLE_FILE_KEYS = ("conditioner.embedders.1.model.", "model.diffusion_model.label_emb.")


def _is_sdxl_single_file(path: Path) -> bool:
    """Whether a ``.safetensors`` checkpoint is in SDXL's original layout (its header's keys; no tensor read)."""
    if path.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return any(k.startswith(SDXL_SINGLE_FILE_KEYS) for k in f.keys())
    except Exception:  # not a readable safetensors file: from_single_file reports it
        return False


def _load_single_file(path: Path, dtype: torch.dtype, config: str | None, offline: bool) -> Any:
    from diffusers import StableDiffusionPipeline

    if _is_sdxl_single_file(path):  # StableDiffusionPipeline would misread it; no tested SDXL path yet
        raise ModelLoadError(
            f"{path} is an SDXL checkpoint in the original single-file layout, which load_pipeline does not read "
            "yet: convert it once to a diffusers folder (diffusers: StableDiffusionXLPipeline.from_single_file("
            "file).save_pretrained(folder)) and pass the folder"
        )

    kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": offline}
    if config:
        kwargs["config"] = config
    try:
        # diffusers reads .ckpt with torch.load(weights_only=True): tensors only, nothing executed.
        return StableDiffusionPipeline.from_single_file(
            str(path), safety_checker=None, requires_safety_checker=False, **kwargs
        )
    except Exception as exc:
        hint = (
            " Offline, diffusers cannot fetch the matching architecture config: pass config=<a local "
            "diffusers folder or cached hub id of the same architecture> (CLI: --config)."
            if offline or not config
            else ""
        )
        raise ModelLoadError(f"could not load the checkpoint file {path}: {exc}.{hint}") from exc


def _load_hub(repo_id: str, dtype: torch.dtype, offline: bool, safety_checker: bool, allow_pickle: bool) -> Any:
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(repo_id, local_files_only=offline)
        class_name = config.get("_class_name", "")
        return DiffusionPipeline.from_pretrained(
            repo_id,
            local_files_only=offline,
            torch_dtype=dtype,
            use_safetensors=None if allow_pickle else True,
            **_sd_kwargs(class_name, safety_checker),
        )
    except Exception as exc:
        mode = "offline (HF_HUB_OFFLINE=1), from the local cache only" if offline else "from the hub"
        raise ModelLoadError(
            f"could not load {repo_id!r}: it is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
            f"not an existing folder or file, and loading it as a hub id {mode} failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Check the path or id, or download the model once with network access."
        ) from exc


def load_pipeline(
    source: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    offline: bool | None = None,
    config: str | None = None,
    safety_checker: bool = False,
    allow_pickle: bool = False,
) -> Any:
    """Load a text-to-image pipeline from a built-in name, a diffusers folder, a single
    ``.safetensors``/``.ckpt`` file or a hub id, and move it to ``device`` (cuda > mps > cpu).

    ``offline`` defaults to ``HF_HUB_OFFLINE``. ``config`` is the architecture folder/id that
    ``from_single_file`` needs for single files when the hub is unreachable. The safety checker is
    off by default: erasure evaluation needs to see what the model really generates. Weights are read
    from safetensors only; pickled weights (``.ckpt``, ``.bin``, ``.pt``) can run code when read and are
    refused unless ``allow_pickle=True``.
    """
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    offline_mode = _offline(offline)
    text = str(source).strip()
    if not text:
        raise ModelLoadError("empty model source; pass a built-in name (e.g. 'shapes'), a folder, a file or a hub id")
    path = Path(text).expanduser()
    with _quiet():
        if text in BUILTIN_MODELS or text in BUILTIN_MODELS.broken:
            folder = builtin_model_dir(text)
            pipe = _load_folder(folder, torch_dtype, safety_checker, allow_pickle)
            model_id, defaults_dir = text, folder
        elif path.is_dir():
            pipe = _load_folder(path, torch_dtype, safety_checker, allow_pickle)
            model_id, defaults_dir = str(path.resolve()), path
        elif path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelLoadError(f"{path} is a file but not a checkpoint; expected one of {SINGLE_FILE_SUFFIXES}")
            if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
                raise ModelLoadError(f"{path} is a pickled checkpoint: {PICKLE_HINT}")
            pipe = _load_single_file(path, torch_dtype, config, offline_mode)
            model_id, defaults_dir = str(path.resolve()), None
        elif path.suffix.lower() in SINGLE_FILE_SUFFIXES or text.startswith((".", "/", "~")):
            raise ModelLoadError(f"model path {text!r} does not exist")
        else:
            pipe = _load_hub(text, torch_dtype, offline_mode, safety_checker, allow_pickle)
            model_id, defaults_dir = text, None
    pipe = pipe.to(torch_device)
    pipe._conceptedit_model_id = model_id
    settings = _read_settings(defaults_dir)
    pipe._conceptedit_defaults = dict(settings.get("generation", {}))
    pipe._conceptedit_presets = dict(settings.get("plugin_presets", {}))
    pipe._conceptedit_files = {
        key: str(defaults_dir / value) for key, value in settings.get("files", {}).items() if defaults_dir
    }
    return pipe


def _read_settings(folder: Path | None) -> dict[str, Any]:
    if folder is None or not (folder / MODEL_SETTINGS_FILE).is_file():
        return {}
    try:
        return dict(json.loads((folder / MODEL_SETTINGS_FILE).read_text()))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{folder / MODEL_SETTINGS_FILE} is not valid JSON: {exc}") from exc


def model_id(pipe: Any) -> str:
    """The id an Edit records as its base model: the load source, else diffusers' name_or_path."""
    return getattr(pipe, "_conceptedit_model_id", None) or str(getattr(pipe, "name_or_path", "") or "unknown")


def generation_defaults(pipe: Any) -> dict[str, Any]:
    """Generation settings the model ships with (steps, guidance, size); empty for plain checkpoints."""
    return dict(getattr(pipe, "_conceptedit_defaults", {}) or {})


def model_file(pipe: Any, key: str) -> str | None:
    """A data file a model folder ships (``conceptedit.json`` → ``files``), e.g. ``prompt_corpus``."""
    path = (getattr(pipe, "_conceptedit_files", {}) or {}).get(key)
    return path if path and Path(path).is_file() else None


def model_files(pipe: Any) -> dict[str, str]:
    """Every file or folder a model folder ships that exists (``conceptedit.json`` → ``files``), as
    paths keyed like ``files``, e.g. ``{"clip": ".../clip"}``; empty for hub ids and single files."""
    files = getattr(pipe, "_conceptedit_files", {}) or {}
    return {key: path for key, path in sorted(files.items()) if Path(path).exists()}


def plugin_presets(pipe: Any, plugin: str) -> dict[str, Any]:
    """Config values a model folder recommends for a plugin (``conceptedit.json`` → ``plugin_presets``),
    e.g. a small SAE width for a small model. Explicit user values override them."""
    return dict((getattr(pipe, "_conceptedit_presets", {}) or {}).get(plugin, {}))


__all__ = ["load_pipeline", "model_id", "generation_defaults", "require_family", "SD_FAMILIES"]
