"""The evaluation config (YAML), read strictly: an unknown key is an error naming the valid ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from conceptedit.config import config_from_dict, config_to_dict
from conceptedit.errors import ConfigError
from conceptedit.toolkit import payload_hash

BUILTIN_CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class EditSpec:
    """An edit to evaluate: an existing artifact folder, or a plugin to fit (cached by config hash)."""

    name: str
    path: str | None = None
    plugin: str | None = None
    concepts: list[str] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("every edit needs a name")
        if (self.path is None) == (self.plugin is None):
            raise ConfigError(f"edit {self.name!r}: give exactly one of 'path' (artifact folder) or 'plugin'")
        if self.plugin is not None and not self.concepts:
            raise ConfigError(f"edit {self.name!r}: a plugin to fit needs 'concepts'")

    def fit_key(self, model: str) -> str:
        payload = {
            "model": model,
            "plugin": self.plugin,
            "concepts": self.concepts,
            "preserve": self.preserve,
            "config": self.config,
        }
        return payload_hash(payload)


@dataclass
class PromptSetSpec:
    """A prompt set: a CSV (``prompt, evaluation_seed, case_number`` + optional label columns) or a
    built-in generator (``shapes-erasure``: rows made for each edit's target concepts)."""

    name: str
    csv: str | None = None
    builtin: str | None = None
    per_role: int = 8
    limit: int | None = None
    attack: bool = False  # rows are attack prompts: the attack-success metric reads them

    def __post_init__(self) -> None:
        if (self.csv is None) == (self.builtin is None):
            raise ConfigError(f"prompt set {self.name!r}: give exactly one of 'csv' or 'builtin'")


@dataclass
class GenerationSpec:
    num_inference_steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    batch_size: int = 16
    # honour a CSV row's own evaluation_guidance / sd_image_width / sd_image_height (I2P protocol) over the
    # values above; rows without them use the values above
    per_row_settings: bool = True

    def settings(self) -> dict[str, Any]:
        keys = ("num_inference_steps", "guidance_scale", "height", "width")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass
class MetricSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    name: str
    models: list[str]
    edits: list[EditSpec]
    prompt_sets: list[PromptSetSpec]
    metrics: list[MetricSpec]
    seeds_per_prompt: int = 1
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    output: str | None = None  # default: runs/eval/<name>
    cache_dir: str | None = None  # default: <output>/../cache (shared by runs in the same folder)
    device: str | None = None
    grid_cases: int = 6  # base-vs-edited pairs shown per edit in the report

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("config needs at least one model under 'models'")
        if not self.prompt_sets:
            raise ConfigError("config needs at least one prompt set under 'prompt_sets'")
        if self.seeds_per_prompt < 1:
            raise ConfigError("seeds_per_prompt must be >= 1")
        for kind, items in (("edit", self.edits), ("prompt set", self.prompt_sets)):
            names = [i.name for i in items]
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind} names must be unique, got {names}")

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/eval/{self.name}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else self.output_dir.parent / "cache"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def _section(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    try:
        return config_from_dict(cls, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(data: dict[str, Any], where: str = "config") -> EvalConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    data = dict(data)
    models = data.get("models", data.pop("model", None))
    if isinstance(models, str):
        models = [models]
    data["models"] = models or []
    data["edits"] = [_section(EditSpec, e, f"{where}: edits[{i}]") for i, e in enumerate(data.get("edits") or [])]
    data["prompt_sets"] = [
        _section(PromptSetSpec, p, f"{where}: prompt_sets[{i}]") for i, p in enumerate(data.get("prompt_sets") or [])
    ]
    metrics = []
    for i, m in enumerate(data.get("metrics") or []):
        metrics.append(MetricSpec(name=m) if isinstance(m, str) else _section(MetricSpec, m, f"{where}: metrics[{i}]"))
    data["metrics"] = metrics
    if "generation" in data:
        data["generation"] = _section(GenerationSpec, data["generation"], f"{where}: generation")
    known = set(EvalConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    try:
        return EvalConfig(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in BUILTIN_CONFIG_DIR.glob("*.yaml"))


def load_config(source: str | Path) -> EvalConfig:
    """Read a YAML file, or a built-in config by name (``shapes-quick``)."""
    path = Path(source)
    if not path.is_file():
        builtin = BUILTIN_CONFIG_DIR / f"{source}.yaml"
        if not builtin.is_file():
            raise ConfigError(
                f"config {source!r} is neither a file nor a built-in config ({', '.join(builtin_configs())})"
            )
        path = builtin
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, str(path))
